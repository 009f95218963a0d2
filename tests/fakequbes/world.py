"""Build a fake Qubes world on disk for the fake ``qrexec-client-vm``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(__file__).resolve().parent / "bin"
HANDLER = ROOT / "handler" / "qubes.Metrics.Get"


def vm_list(qubes: Mapping[str, str], extra_lines: list[bytes] | None = None) -> bytes:
    """An ``admin.vm.List`` reply: ``0\\0`` then NAME class=... state=... lines."""
    lines = [b"dom0 class=AdminVM state=Running"]
    for name, state in qubes.items():
        lines.append(f"{name} class=AppVM state={state}".encode())
    lines += extra_lines or []
    return b"0\x00" + b"".join(line + b"\n" for line in lines)


def make_world(
    root: Path,
    behaviours: Mapping[str, str],
    *,
    states: Mapping[str, str] | None = None,
    admin_list: bytes | None = None,
    self_name: str | None = "sys-monitor",
) -> dict[str, str]:
    """Write the world under ``root``; return the environment that uses it.

    ``behaviours`` maps a qube to its handler's behaviour (see the fake's
    header).  Every qube is listed Running unless ``states`` says otherwise;
    ``admin_list`` replaces dom0's reply (None: built from the qubes).
    """
    (root / "qubes").mkdir(parents=True, exist_ok=True)
    (root / "dom0").mkdir(exist_ok=True)
    (root / "handler").write_text(str(HANDLER))
    (root / "calls.log").touch()
    for name, behaviour in behaviours.items():
        (root / "qubes" / name).write_text(behaviour + "\n")
    listed = dict.fromkeys(behaviours, "Running")
    listed.update(states or {})
    if self_name:
        listed.setdefault(self_name, "Running")
        (root / "self_name").write_text(self_name + "\n")
    reply = admin_list if admin_list is not None else vm_list(listed)
    (root / "dom0" / "admin.vm.List").write_bytes(reply)
    return {
        "SYSMON_FAKE_WORLD": str(root),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def calls(root: Path) -> list[str]:
    """Every call the fake received, as ``TARGET SERVICE+ARG``."""
    return (root / "calls.log").read_text().splitlines()
