"""Each running qube's Xen domain id, asked of dom0 once per start.

A net qube names the interface of each qube it serves ``vifN.M``, N being
that qube's Xen domain id; only dom0 can say which qube has id N
(``admin.vm.property.Get+xid``, read-only, one policy line).  An id holds
for one start of a qube: it is asked when the qube is first seen Running or
Paused, kept while it stays so, and forgotten when it stops, when its UUID
changes or when Xen's CPU time for it goes back (a restart between two
lists).  Calls are few and bounded: at most ``max_calls`` a tick, each under
the scrape timeout, a failing qube retried a few times per start only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import attrs
import structlog
import trio

from sysmon import events
from sysmon.collect.process import ProcessResult
from sysmon.collect.qrexec import Qrexec
from sysmon.protocol.admin import (
    XID_SERVICE,
    AdminCallError,
    CallOutcome,
    QubeInfo,
    classify_exit,
    parse_xid_untrusted,
)

#: Power states in which a qube holds a Xen domain id.
_WITH_ID = frozenset({"Running", "Paused"})
#: Tries per start before a qube is left unmapped until it restarts.
MAX_TRIES = 3


class AdminCaller(Protocol):
    """What asks dom0: :class:`~sysmon.collect.qrexec.Qrexec`, or a test's double."""

    def service_argv(self, target: str, service: str, argument: str = "") -> list[str]:
        """Argv for ``SERVICE[+ARG]`` in ``target``."""

    async def call(self, argv: Sequence[str], *, max_stdout: int) -> ProcessResult:
        """Run ``argv`` bounded."""


@attrs.frozen
class _Known:
    uuid: str | None
    xid: int | None  # None: asked MAX_TRIES times, no id
    tries: int = 1


async def ask_xid(qrexec: AdminCaller, address: str) -> int | None:
    """One qube's id from dom0 (None: not running).  The caller owns the timeout.

    Raises:
        AdminCallError: refused, failed, or a reply that is not one id.
    """
    service, _, argument = XID_SERVICE.partition("+")
    try:
        argv = qrexec.service_argv(address, service, argument)
    except ValueError as exc:
        raise AdminCallError(str(exc)) from exc
    try:
        result = await qrexec.call(argv, max_stdout=256)
    except OSError as exc:
        raise AdminCallError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    outcome = classify_exit(result.returncode)
    if outcome is not CallOutcome.OK:
        raise AdminCallError(f"{outcome.value} (exit {result.returncode})")
    return parse_xid_untrusted(result.stdout)


@attrs.define
class Xids:
    """The id of each qube dom0 listed, learned once per start."""

    qrexec: AdminCaller = attrs.field(factory=Qrexec)
    timeout: float = 8.0
    max_calls: int = 16
    _known: dict[str, _Known] = attrs.field(factory=dict)
    _cpu_ms: dict[str, int] = attrs.field(factory=dict)

    async def refresh(
        self,
        qubes: Sequence[QubeInfo],
        skip: Iterable[str] = (),
        cpu_time_ms: Mapping[str, int] | None = None,
    ) -> dict[int, str]:
        """Ask for the ids not yet known; return id -> qube for this tick.

        ``qubes`` is dom0's list of this tick; ``skip`` qubes are never asked
        (dom0, whose id is 0 and which has no ``xid`` property, always);
        ``cpu_time_ms`` is Xen's CPU time per qube, to see a restart that
        happened between two lists.  An id two qubes claim is used for
        neither, and both are asked again.
        """
        live = {q.name: q for q in qubes if q.state in _WITH_ID and q.name != "dom0"}
        for name in list(self._known):
            known = self._known[name]
            if name not in live or live[name].uuid != known.uuid:
                del self._known[name]
        for name, ms in (cpu_time_ms or {}).items():
            if ms < self._cpu_ms.get(name, -1):
                self._known.pop(name, None)
                structlog.get_logger().info(events.XID_FORGOTTEN, vm=name, reason="restarted")
            self._cpu_ms[name] = ms
        for name in set(self._cpu_ms) - set(live):
            del self._cpu_ms[name]
        skipped = set(skip)
        due = [
            q
            for name, q in sorted(live.items())
            if name not in skipped
            and (
                name not in self._known
                or (self._known[name].xid is None and self._known[name].tries < MAX_TRIES)
            )
        ][: self.max_calls]
        if due:
            async with trio.open_nursery() as nursery:
                for q in due:
                    nursery.start_soon(self._ask, q)
        by_xid: dict[int, list[str]] = {}
        for name, known in self._known.items():
            if known.xid is not None:
                by_xid.setdefault(known.xid, []).append(name)
        mapping: dict[int, str] = {}
        for xid, names in by_xid.items():
            if len(names) == 1:
                mapping[xid] = names[0]
                continue
            structlog.get_logger().warning(events.XID_CLAIMED_TWICE, xid=xid, vms=sorted(names))
            for name in names:
                del self._known[name]
        return mapping

    async def _ask(self, qube: QubeInfo) -> None:
        log = structlog.get_logger()
        before = self._known.get(qube.name)
        tries = before.tries + 1 if before is not None else 1
        xid: int | None = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                xid = await ask_xid(self.qrexec, qube.address)
            except AdminCallError as exc:
                log.warning(events.XID_NOT_READ, vm=qube.name, error=str(exc), tries=tries)
        if scope.cancelled_caught:
            log.warning(events.XID_NOT_READ, vm=qube.name, error="no reply in time", tries=tries)
        self._known[qube.name] = _Known(qube.uuid, xid, tries)
