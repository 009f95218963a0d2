"""Build a fake Qubes world on disk for the fake ``qrexec-client-vm``."""

from __future__ import annotations

import os
import secrets
import subprocess
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
    # A hung qube sleeps this long: unique per world, so a test can look for
    # its own leftovers without seeing another run's.
    (root / "hang_seconds").write_text(f"1000.{secrets.randbelow(10**6):06d}\n")
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


def leftover_processes(root: Path) -> list[str]:
    """Processes a hung qube of this world left behind (should be none)."""
    token = "sleep " + (root / "hang_seconds").read_text().strip()
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if token in line]
