"""What the daemon knows of each qube between ticks: in flight, failing, backing off.

Pure: the caller passes the (monotonic) time and logs what :meth:`Health.record`
returns, so this is tested without trio.  A qube that refuses, lacks the
service or times out waits before its next poll, doubling from one interval
to :data:`MAX_BACKOFF`; a qube still being polled is ``skipped``, never polled
twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

from sysmon.records import ScrapeResult, Status

#: Statuses that make a qube wait before its next poll.
BACKOFF_STATUSES = frozenset({Status.REFUSED, Status.NO_SERVICE, Status.TIMEOUT})
MAX_BACKOFF = 300.0


def backoff_delay(interval: float, failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling, capped."""
    if failures <= 1:
        return 0.0
    return min(MAX_BACKOFF, interval * float(1 << (failures - 1)))


@attrs.define
class QubeHealth:
    """One qube's standing."""

    status: Status | None = None
    failures: int = 0
    next_attempt: float = -math.inf
    in_flight: bool = False
    polls: int = 0


@attrs.frozen
class StatusChange:
    """A qube whose status is not what it was: logged once per change."""

    vm: str
    status: Status
    was: Status | None
    detail: str


@attrs.define
class Health:
    """Every qube's standing, by name."""

    interval: float
    qubes: dict[str, QubeHealth] = attrs.field(factory=dict)

    def plan(self, targets: Sequence[str], now: float) -> tuple[list[str], list[ScrapeResult]]:
        """Which targets to poll now, and ``skipped`` results for the rest."""
        poll, skipped = [], []
        for vm in targets:
            health = self.qubes.setdefault(vm, QubeHealth())
            if health.in_flight:
                skipped.append(ScrapeResult(vm, Status.SKIPPED, 0, detail="in flight"))
            elif now < health.next_attempt:
                skipped.append(ScrapeResult(vm, Status.SKIPPED, 0, detail="backoff"))
            else:
                poll.append(vm)
        return poll, skipped

    def argument(self, vm: str, cursor: str, *, disk_every: int, alerts_every: int) -> str:
        """The handler's argument for this poll of ``vm``, and count the poll.

        Disk lines (``df``) every ``disk_every`` polls, alert lines
        (``journalctl``) every ``alerts_every``, the first poll in full: the
        rest is ``/proc`` only, no process in the qube.  The cursor goes with
        the alerts; the flags are ``nodisk.`` and ``noalerts.`` before it
        (docs/protocol.md).
        """
        health = self.qubes.setdefault(vm, QubeHealth())
        n = health.polls
        health.polls += 1
        flags = "" if n % disk_every == 0 else "nodisk."
        if n % alerts_every == 0:
            return flags + cursor
        return flags + "noalerts."

    def set_in_flight(self, vms: Iterable[str], in_flight: bool) -> None:
        """Mark ``vms`` as being polled, or as done."""
        for vm in vms:
            self.qubes.setdefault(vm, QubeHealth()).in_flight = in_flight

    def record(self, results: Iterable[ScrapeResult], now: float) -> list[StatusChange]:
        """Update from this tick's results; the qubes whose status changed."""
        changes = []
        for r in results:
            health = self.qubes.setdefault(r.vm, QubeHealth())
            if r.status in BACKOFF_STATUSES:
                health.failures += 1
                health.next_attempt = now + backoff_delay(self.interval, health.failures)
            else:
                health.failures = 0
                health.next_attempt = -math.inf
            if r.status != health.status:
                changes.append(StatusChange(r.vm, r.status, health.status, r.detail))
                health.status = r.status
        return changes

    def keep_only(self, listed: Iterable[str]) -> None:
        """Forget qubes dom0 no longer lists."""
        for vm in set(self.qubes) - set(listed):
            del self.qubes[vm]
