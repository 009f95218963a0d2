"""Build a fake Qubes world on disk for the fake ``qrexec-client-vm``."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(__file__).resolve().parent / "bin"
HANDLER = ROOT / "handler" / "qubes.Metrics.Get"


#: The Qubes releases the fake world can answer as.
RELEASES = ("4.2", "4.3")
DOM0_UUID = "00000000-0000-0000-0000-000000000000"


def qube_uuid(name: str) -> str:
    """A fixed UUID per name, made as the recordings made theirs."""
    if name == "dom0":
        return DOM0_UUID
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.qubes.invalid"))


def list_line(name: str, klass: str, state: str, release: str) -> bytes:
    """One ``admin.vm.List`` line as qubesd of ``release`` writes it."""
    line = f"{name} class={klass} state={state}"
    if release != "4.2":
        line += f" uuid={qube_uuid(name)}"
    return line.encode() + b"\n"


def vm_list(
    qubes: Mapping[str, str], extra_lines: list[bytes] | None = None, *, release: str = "4.3"
) -> bytes:
    """An ``admin.vm.List`` reply: ``0\\0`` then one line per qube, dom0 first."""
    lines = [list_line("dom0", "AdminVM", "Running", release)]
    lines += [list_line(name, "AppVM", state, release) for name, state in sorted(qubes.items())]
    lines += [line + b"\n" for line in extra_lines or []]
    return b"0\x00" + b"".join(lines)


def make_world(
    root: Path,
    behaviours: Mapping[str, str],
    *,
    states: Mapping[str, str] | None = None,
    admin_list: bytes | None = None,
    self_name: str | None = "sys-monitor",
    release: str = "4.3",
    xids: Mapping[str, int] | None = None,
    vault: str = "secrets-vault",
) -> dict[str, str]:
    """Write the world under ``root``; return the environment that uses it.

    ``behaviours`` maps a qube to its handler's behaviour (see the fake's
    header).  Every qube is listed Running unless ``states`` says otherwise;
    ``admin_list`` replaces dom0's reply (None: built from the qubes as
    qubesd of ``release`` lists them).  ``xids`` are the Xen domain ids
    qubesd gives (a Running qube without one gets the next free id from 2);
    the policy's xid line denies ``vault``.
    """
    if release not in RELEASES:
        raise ValueError(f"unknown release {release!r}")
    for folder in ("qubes", "dom0", "state", "uuid"):
        (root / folder).mkdir(parents=True, exist_ok=True)
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
    for name, state in listed.items():
        (root / "state" / name).write_text(state + "\n")
        (root / "uuid" / qube_uuid(name)).write_text(name + "\n")
    (root / "xid").mkdir(exist_ok=True)
    (root / "release").write_text(release + "\n")
    (root / "xid_denied").write_text(vault + "\n")
    given = dict(xids or {})
    free = (i for i in range(2, 32752) if i not in given.values())
    for name, state in sorted(listed.items()):
        if name not in given and state in {"Running", "Paused"}:
            given[name] = next(free)
    for name, xid in given.items():
        write_xid(root, name, xid)
    reply = admin_list if admin_list is not None else vm_list(listed, release=release)
    (root / "dom0" / "admin.vm.List").write_bytes(reply)
    return {
        "SYSMON_FAKE_WORLD": str(root),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def write_xid(root: Path, name: str, xid: int) -> None:
    """Give ``name`` the Xen domain id ``xid`` (-1: not running), as at a (re)start."""
    (root / "xid" / name).write_text(f"{xid}\n")


def requested_calls(root: Path) -> list[str]:
    """Every call the fake received, as ``TARGET SERVICE+ARG``, TARGET as asked."""
    return (root / "calls.log").read_text().splitlines()


def calls(root: Path) -> list[str]:
    """Every call the fake received, with a ``uuid:U`` target as the qube's name."""
    resolved = []
    for line in requested_calls(root):
        target, _, rest = line.partition(" ")
        by_uuid = root / "uuid" / target.removeprefix("uuid:")
        if target.startswith("uuid:") and by_uuid.is_file():
            target = by_uuid.read_text().strip()
        resolved.append(f"{target} {rest}")
    return resolved


def leftover_processes(root: Path) -> list[str]:
    """Processes a hung qube of this world left behind (should be none)."""
    token = "sleep " + (root / "hang_seconds").read_text().strip()
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if token in line]
