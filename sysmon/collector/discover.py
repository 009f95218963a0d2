"""Which qubes exist and which to poll: ``admin.vm.List`` from dom0.

The reply is ``NAME class=CLASS state=STATE`` lines after qubesd's
``0\\0`` frame (qubes-core-admin ``qubes/api/admin.py``).  A line is used
only when the name passes Qubes' own rule and the class and state are
known words; anything else is rejected, counted and logged by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs
import trio

from sysmon.collector.qrexec import (
    AdminCallError,
    CallOutcome,
    Qrexec,
    classify_exit,
    unframe_admin_reply_untrusted,
)
from sysmon.names import is_valid_qube_name

MAX_LIST_BYTES = 1024 * 1024
MAX_QUBES = 10_000
#: qubes/vm/qubesvm.py get_power_state; "NA" is what clients show when the
#: state could not be read.
STATES = frozenset(
    {"Halted", "Transient", "Running", "Paused", "Suspended", "Halting", "Dying", "Crashed", "NA"}
)
_CLASS_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,31}")


class DiscoveryError(Exception):
    """The list of qubes could not be had; the message says why, in one line."""


@attrs.frozen
class QubeInfo:
    """One qube as dom0 listed it."""

    name: str
    klass: str
    state: str


@attrs.frozen
class Discovery:
    """The qubes dom0 listed, and the lines that were rejected."""

    qubes: tuple[QubeInfo, ...]
    rejected: tuple[str, ...] = ()


def parse_vm_list_untrusted(payload: bytes) -> Discovery:
    """Parse the unframed ``admin.vm.List`` payload, line by line."""
    qubes: list[QubeInfo] = []
    rejected: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(payload.split(b"\n")[:MAX_QUBES], start=1):
        if not raw:
            continue
        line = raw.decode("ascii", errors="replace")
        parts = line.split(" ")
        if (
            len(parts) != 3
            or not parts[1].startswith("class=")
            or not parts[2].startswith("state=")
        ):
            rejected.append(f"line {number}: not NAME class=CLASS state=STATE")
            continue
        name, klass, state = parts[0], parts[1][6:], parts[2][6:]
        if not (name == "dom0" or is_valid_qube_name(name)):
            rejected.append(f"line {number}: invalid qube name")
        elif not _CLASS_RE.fullmatch(klass):
            rejected.append(f"line {number}: invalid class")
        elif state not in STATES:
            rejected.append(f"line {number}: unknown state")
        elif name in seen:
            rejected.append(f"line {number}: {name} listed twice")
        else:
            seen.add(name)
            qubes.append(QubeInfo(name=name, klass=klass, state=state))
    return Discovery(qubes=tuple(qubes), rejected=tuple(rejected))


def select_targets(
    qubes: Iterable[QubeInfo], self_name: str | None, exclude: Iterable[str]
) -> list[str]:
    """The qubes to poll: Running, not dom0, not ourselves, not excluded."""
    skip = {"dom0", *exclude}
    if self_name:
        skip.add(self_name)
    return [q.name for q in qubes if q.state == "Running" and q.name not in skip]


@attrs.frozen
class QrexecDiscovery:
    """Discovery through dom0's Admin API and QubesDB, as in a real qube."""

    qrexec: Qrexec = attrs.field(factory=Qrexec)
    qubesdb_read: str = "qubesdb-read"

    async def list_qubes(self) -> Discovery:
        """Ask dom0 for every qube.  The caller owns the timeout.

        Raises:
            DiscoveryError: refused by policy or qubesd, qubesd error, no
                ``qrexec-client-vm``, or an unusable reply.
        """
        argv = self.qrexec.service_argv("dom0", "admin.vm.List")
        try:
            result = await self.qrexec.call(argv, max_stdout=MAX_LIST_BYTES)
        except OSError as exc:
            raise DiscoveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        if result.stdout_overflow:
            raise DiscoveryError(f"admin.vm.List replied more than {MAX_LIST_BYTES} bytes")
        outcome = classify_exit(result.returncode)
        if outcome is CallOutcome.REFUSED:
            raise DiscoveryError("admin.vm.List refused by qrexec policy (exit 126)")
        if outcome is not CallOutcome.OK:
            raise DiscoveryError(
                f"admin.vm.List failed: {outcome.value} (exit {result.returncode})"
            )
        try:
            payload = unframe_admin_reply_untrusted(result.stdout)
        except AdminCallError as exc:
            raise DiscoveryError(f"admin.vm.List: {exc}") from exc
        return parse_vm_list_untrusted(payload)

    async def own_name(self) -> str | None:
        """This qube's name from QubesDB, or None when it cannot be read."""
        try:
            with trio.move_on_after(5):
                result = await self.qrexec.call([self.qubesdb_read, "/name"], max_stdout=256)
                name = result.stdout.decode("ascii", errors="replace").strip()
                if result.returncode == 0 and is_valid_qube_name(name):
                    return name
        except OSError:
            pass
        return None
