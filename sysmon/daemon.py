"""``sysmon run``: the long-running collector, one trio nursery.

Ticks are scheduled on trio's monotonic clock and aligned to wall-clock
multiples of the interval, so every row of a tick shares one ``ts``.  Each
tick runs as its own task: a qube still being polled by an earlier tick is
``skipped``, never polled twice; ticks commit in ``ts`` order; ticks missed
entirely (suspend, a stall) are skipped, not bunched.  Qubes that refuse,
lack the service or keep timing out are retried with backoff and reported
once per change of status.
"""

from __future__ import annotations

import math
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import attrs
import structlog
import trio

from sysmon.archiver import Copier, next_archive_time, qvm_copy_to_vm, run_archive
from sysmon.collect.process import run_streaming
from sysmon.collect.qrexec import DiscoverySource, Qrexec, Transport
from sysmon.collect.scrape import scrape_round
from sysmon.config import Config
from sysmon.poll import discover, read_cursors, utc_now
from sysmon.protocol.admin import EXIT_REFUSED, Discovery, DiscoveryError, QubeInfo
from sysmon.protocol.xen_events import DomainStats, EventReader, EventStreamError, domain_stats
from sysmon.records import ScrapeResult, TickOutcome
from sysmon.store.commit import commit_tick
from sysmon.transform.rules import Rule

#: Statuses that make a qube wait before its next poll.
BACKOFF_STATUSES = frozenset({"refused", "no-service", "timeout"})
MAX_BACKOFF = 300.0
QUBES_EVERY = 60.0

#: How blocking file work runs: ``trio.to_thread.run_sync``, or inline in
#: tests on virtual time (a thread would let autojump_clock run ahead).
Offload = Callable[..., Awaitable[object]]
Committer = Callable[
    [
        Path,
        datetime,
        Sequence[ScrapeResult],
        Sequence[QubeInfo] | None,
        Sequence[DomainStats],
        Sequence[tuple[str, str]],
        Sequence[Rule],
    ],
    TickOutcome,
]
ARCHIVE_RETRY = 3600.0
ARCHIVE_MAX_RETRY = 6 * 3600.0
#: Runs dom0's admin.vm.Stats stream, feeding each chunk; returns its exit code.
StatsStream = Callable[[Callable[[bytes], None]], Awaitable[int]]
XEN_STALE_AFTER = 30.0
XEN_MAX_BACKOFF = 60.0


async def qrexec_stats_stream(on_chunk: Callable[[bytes], None]) -> int:
    """``qrexec-client-vm dom0 admin.vm.Stats``, streamed."""
    return await run_streaming(Qrexec().service_argv("dom0", "admin.vm.Stats"), on_chunk)


def sd_notify(message: str) -> None:
    """Tell systemd ``message`` (READY=1, WATCHDOG=1...) if it listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        structlog.get_logger().warning("sd_notify_failed", error=str(exc))


@attrs.define
class QubeHealth:
    """What the daemon knows of one qube between ticks (memory only)."""

    status: str | None = None
    failures: int = 0
    next_attempt: float = -math.inf
    in_flight: bool = False


def backoff_delay(interval: float, failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling, capped."""
    if failures <= 1:
        return 0.0
    return min(MAX_BACKOFF, interval * float(1 << (failures - 1)))


@attrs.define
class Collector:
    """The daemon's state and tasks."""

    config: Config
    source: DiscoverySource
    transport: Transport
    wall_now: Callable[[], datetime] = utc_now
    committer: Committer = commit_tick
    notify: Callable[[str], None] = sd_notify
    offload: Offload = trio.to_thread.run_sync
    stats_stream: StatsStream | None = qrexec_stats_stream
    archive_copier: Copier | None = qvm_copy_to_vm
    zone: tzinfo | None = None
    xen: dict[str, tuple[float, DomainStats]] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)
    own_name: str = "sys-monitor"
    _archive_alerted: str | None = None
    health: dict[str, QubeHealth] = attrs.field(factory=dict)
    last_qubes_ts: float = -math.inf
    ticks_done: int = 0
    _ordered: trio.Event | None = None
    _discovery_error: str | None = None
    _self_name: str | None = None
    _rejected_alerted: str | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until SIGTERM or SIGINT, then return (exit 0)."""
        log = structlog.get_logger()
        log.info(
            "sysmon_started",
            out_dir=str(self.config.out_dir),
            interval=self.config.interval,
            scrape_timeout=self.config.scrape_timeout,
            concurrency=self.config.concurrency,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self._watch_signals, nursery.cancel_scope)
            if self.stats_stream is not None:
                nursery.start_soon(self.xen_loop)
            if self.archive_copier is not None:
                nursery.start_soon(self.archive_loop)
            nursery.start_soon(self.tick_loop, nursery)
            task_status.started()
        log.info("sysmon_stopped", ticks=self.ticks_done)

    async def _watch_signals(
        self, cancel_scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                structlog.get_logger().info("signal_received", signal=signal.Signals(signum).name)
                self.notify("STOPPING=1")
                cancel_scope.cancel()
                return

    async def tick_loop(self, nursery: trio.Nursery) -> None:
        """Start a tick at every wall-clock multiple of the interval."""
        log = structlog.get_logger()
        interval = self.config.interval
        while True:
            wall = self.wall_now().timestamp()
            due = (math.floor(wall / interval) + 1) * interval
            await trio.sleep(due - wall)
            now = self.wall_now().timestamp()
            tick = math.floor(now / interval) * interval
            if tick < due:
                # The wall clock went back while we slept: wait for the tick again.
                log.warning("clock_stepped", direction="back", seconds=round(due - now, 3))
                continue
            if tick > due:
                missed = round((tick - due) / interval)
                log.warning("ticks_missed", count=missed, seconds=round(tick - due, 3))
            nursery.start_soon(self.run_tick, datetime.fromtimestamp(tick, tz=UTC))

    async def xen_loop(self) -> None:
        """Follow dom0's stats stream for the whole run; reconnect with backoff.

        A policy refusal (126) or qubesd's empty refusal disables it with one
        log line: xen.csv then stays empty.
        """
        assert self.stats_stream is not None  # noqa: S101
        log = structlog.get_logger()
        delay = 1.0
        while True:
            reader = EventReader()
            received = 0

            def on_chunk(chunk: bytes, reader: EventReader = reader) -> None:
                nonlocal received
                received += len(chunk)
                now = trio.current_time()
                for event in reader.feed_untrusted(chunk):
                    stats = domain_stats(event)
                    if stats is not None:
                        self.xen[stats.vm] = (now, stats)

            try:
                code: int | None = await self.stats_stream(on_chunk)
            except EventStreamError as exc:
                log.warning("xen_stats_broken", error=str(exc))
                code = None
            except OSError as exc:
                log.warning("xen_stats_disabled", reason=f"cannot run qrexec-client-vm: {exc}")
                return
            if code == EXIT_REFUSED:
                log.warning(
                    "xen_stats_disabled", reason="admin.vm.Stats refused by policy (exit 126)"
                )
                return
            if code == 0 and received == 0:
                log.warning(
                    "xen_stats_disabled", reason="qubesd refused admin.vm.Stats (empty reply)"
                )
                return
            if received:
                delay = 1.0
            log.info("xen_stats_reconnecting", exit=code, in_seconds=delay)
            await trio.sleep(delay)
            delay = min(XEN_MAX_BACKOFF, delay * 2)

    async def archive_loop(self) -> None:
        """Deliver complete days at ``archive_at`` (local time) every day.

        On start it catches up on days missed while the qube was off.  A
        failure is retried hourly, then less often, and written once to
        alerts.csv (``sysmon: archive ...``).
        """
        assert self.archive_copier is not None  # noqa: S101
        retry = ARCHIVE_RETRY
        due = True  # catch up first
        while True:
            if not due:
                now = self.wall_now()
                at = next_archive_time(now, self.config.archive_at, self.zone)
                await trio.sleep((at - now).total_seconds())
            today = self.wall_now().astimezone(UTC).date()
            report = await run_archive(
                self.config, today, copier=self.archive_copier, offload=self.offload
            )
            if report.pruned.low_on_space_undelivered:
                self._note("sysmon: disk low and only undelivered days are left")
            failed = next(
                (d for d in report.days if d.status not in {"delivered", "already"}), None
            )
            if failed is None:
                self._archive_alerted = None
                retry, due = ARCHIVE_RETRY, False
                continue
            message = f"sysmon: archive of {failed.day} {failed.status}: {failed.detail}"
            if message != self._archive_alerted:
                self._note(message)
                self._archive_alerted = message
            await trio.sleep(retry)
            retry = min(ARCHIVE_MAX_RETRY, retry * 2)

    def _note(self, message: str) -> None:
        self.notes.append(message)

    def _fresh_xen(self) -> list[DomainStats]:
        now = trio.current_time()
        for vm in [vm for vm, (seen, _) in self.xen.items() if now - seen > XEN_STALE_AFTER]:
            del self.xen[vm]  # a stopped domain sends no more events
        return [stats for _, stats in sorted(self.xen.values(), key=lambda item: item[1].vm)]

    def _plan(self, targets: Sequence[str]) -> tuple[list[str], list[ScrapeResult]]:
        """Which targets to poll now, and ``skipped`` results for the rest."""
        now = trio.current_time()
        poll, skipped = [], []
        for vm in targets:
            health = self.health.setdefault(vm, QubeHealth())
            if health.in_flight:
                skipped.append(
                    ScrapeResult(vm=vm, status="skipped", duration_ms=0, detail="in flight")
                )
            elif now < health.next_attempt:
                skipped.append(
                    ScrapeResult(vm=vm, status="skipped", duration_ms=0, detail="backoff")
                )
            else:
                poll.append(vm)
        return poll, skipped

    def _landed(self, result: ScrapeResult) -> None:
        self.health[result.vm].in_flight = False

    def _record(self, results: Sequence[ScrapeResult]) -> None:
        """Update health from results; log a qube once per change of status."""
        log = structlog.get_logger()
        now = trio.current_time()
        for r in results:
            health = self.health.setdefault(r.vm, QubeHealth())
            if r.status in BACKOFF_STATUSES:
                health.failures += 1
                health.next_attempt = now + backoff_delay(self.config.interval, health.failures)
            else:
                health.failures = 0
                health.next_attempt = -math.inf
            if r.status != health.status:
                emit = log.info if r.status == "ok" else log.warning
                emit(
                    "qube_status_changed",
                    vm=r.vm,
                    status=r.status,
                    was=health.status,
                    detail=r.detail or None,
                )
                health.status = r.status

    def _note_rejected(self, rejected: Sequence[str]) -> None:
        """An alert row when dom0's list has lines sysmon cannot use, once per change."""
        shown = "; ".join(rejected[:3]) if rejected else None
        if shown and shown != self._rejected_alerted:
            self._note(f"sysmon: admin.vm.List: {len(rejected)} lines not used ({shown})")
        self._rejected_alerted = shown

    async def _poll(self, discovery: Discovery, targets: Sequence[str]) -> list[ScrapeResult]:
        """Poll the targets due now; ``skipped`` results for the others, in list order."""
        poll, skipped = self._plan(targets)
        for vm in poll:
            self.health[vm].in_flight = True
        try:
            cursors = await self.offload(read_cursors, self.config.out_dir)
            assert isinstance(cursors, dict)  # noqa: S101
            polled = await scrape_round(
                self.transport,
                poll,
                cursors,
                per_qube_timeout=self.config.scrape_timeout,
                concurrency=self.config.concurrency,
                on_result=self._landed,
                addresses={q.name: q.address for q in discovery.qubes},
            )
        finally:
            for vm in poll:
                self.health[vm].in_flight = False
        self._record(polled)
        for vm in set(self.health) - {q.name for q in discovery.qubes}:
            del self.health[vm]  # gone from dom0's list: forget it
        order = {vm: i for i, vm in enumerate(targets)}
        return sorted([*polled, *skipped], key=lambda r: order[r.vm])

    async def run_tick(self, ts: datetime) -> None:
        """One tick: discover, poll, commit after the previous tick committed."""
        previous, mine = self._ordered, trio.Event()
        self._ordered = mine
        log = structlog.get_logger()
        start = trio.current_time()
        discovery: Discovery | None
        try:
            try:
                if self._self_name is None:  # once: our name does not change
                    self._self_name = self.config.self_name or await self.source.own_name()
                discovery, targets = await discover(self.config, self.source, self._self_name)
            except DiscoveryError as exc:
                if str(exc) != self._discovery_error:
                    log.error("discovery_failed", error=str(exc))  # noqa: TRY400 -- expected, no traceback
                    self._note(f"sysmon: discovery failed: {exc}")
                self._discovery_error = str(exc)
                if not self.notes:
                    return
                # Nothing to poll, but the alert row is written now.
                discovery, targets = None, []
            else:
                if self._discovery_error is not None:
                    log.info("discovery_recovered")
                    self._discovery_error = None
                self._note_rejected(discovery.rejected)
            results = await self._poll(discovery, targets) if discovery else []
            # qubes.csv once a minute: at each new minute, so every day
            # folder gets it from its first minute on.
            qubes = None
            if discovery and ts.timestamp() // QUBES_EVERY != self.last_qubes_ts // QUBES_EVERY:
                qubes = discovery.qubes
            if previous is not None:
                await previous.wait()
            notes = [(self._self_name or self.own_name, message) for message in self.notes]
            self.notes.clear()
            outcome = await self.offload(
                self.committer,
                self.config.out_dir,
                ts,
                results,
                qubes,
                self._fresh_xen(),
                notes,
                self.config.rules,
            )
            assert isinstance(outcome, TickOutcome)  # noqa: S101
            if qubes is not None and outcome.skipped is None:
                self.last_qubes_ts = ts.timestamp()
            self._log_tick(ts, results, outcome, trio.current_time() - start)
            self.ticks_done += 1
            self.notify("READY=1" if self.ticks_done == 1 else "WATCHDOG=1")
        finally:
            mine.set()

    def _log_tick(
        self, ts: datetime, results: Sequence[ScrapeResult], outcome: TickOutcome, seconds: float
    ) -> None:
        """The tick's canonical log line."""
        ok = sum(r.status == "ok" for r in results)
        slowest = max(results, key=lambda r: r.duration_ms, default=None)
        fields = {
            "ts": f"{ts:%Y-%m-%dT%H:%M:%SZ}",
            "qubes": len(results),
            "ok": ok,
            "failed": sum(r.status not in {"ok", "skipped"} for r in results),
            "skipped": sum(r.status == "skipped" for r in results),
            "slowest": slowest.vm if slowest else None,
            "slowest_ms": slowest.duration_ms if slowest else None,
            "duration_ms": round(seconds * 1000),
            "rows": sum(outcome.written.values()),
        }
        log = structlog.get_logger()
        if outcome.skipped:
            log.warning("tick_not_written", reason=outcome.skipped, **fields)
        elif outcome.errors:
            log.error(
                "tick_write_failed", dropped=outcome.dropped, errors=list(outcome.errors), **fields
            )
        else:
            log.info("tick_done", **fields)
