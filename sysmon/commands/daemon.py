"""``sysmon run``: the collector daemon, and the one tick ``once`` and ``demo`` run too.

A tick is discover -> plan -> scrape -> commit: dom0 lists the qubes, the
health of each decides which are polled now (a qube still in flight or
backing off is ``skipped``), the polls run under a concurrency cap and a
per-qube timeout, and the commit writes the rows, the rules' alerts and
sysmon's own notes in one go.  The daemon adds the loops around it: ticks
scheduled on trio's monotonic clock and aligned to wall-clock multiples of
the interval (every row of a tick shares one ``ts``), committed in ``ts``
order, missed ticks skipped rather than bunched; dom0's stats stream; the
nightly archive; SIGTERM; and one canonical log line per tick.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs
import structlog
import trio

from sysmon.collect.health import Health, backoff_delay
from sysmon.collect.qrexec import DiscoverySource, Qrexec, QrexecDiscovery, Transport
from sysmon.collect.scrape import ParseOffload, in_worker_thread, scrape_round
from sysmon.collect.xen import XenFollower
from sysmon.collect.xids import Xids
from sysmon.commands.archive import NightlyArchive
from sysmon.config import Config
from sysmon.protocol.admin import Discovery, DiscoveryError, QubeInfo, select_targets
from sysmon.records import ScrapeResult, Status, TickOutcome
from sysmon.schema import format_ts
from sysmon.store import identity
from sysmon.store.commit import Plan, commit_tick
from sysmon.store.daily import locked
from sysmon.store.state import load_state
from sysmon.transform.tick import build_tick
from sysmon.transform.views import ViewsState, compare

QUBES_EVERY = 60.0

#: How blocking file work runs: ``trio.to_thread.run_sync``, or inline in
#: tests on virtual time (a thread would let autojump_clock run ahead).
Offload = Callable[..., Awaitable[object]]
Committer = Callable[[Path, datetime, Plan], TickOutcome]


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def boot_time() -> float:
    """Seconds since boot, suspends included; never stepped (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


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


def make_identity(out_dir: Path, host_name: str) -> bool:
    """The host identity and ``host_name`` in ``out_dir``; False: try at the next tick.

    A planted identity is told and left (a human decides; a new one would
    split the host's series); the rows go on either way.
    """
    log = structlog.get_logger()
    refused = None
    try:
        identity.host_identity(out_dir)
    except identity.IdentityError as exc:
        refused = str(exc)
    except OSError as exc:
        log.warning("host_identity_not_written", error=f"{exc.filename}: {exc.strerror or exc}")
        return False
    if refused is not None:
        log.error("host_identity_refused", error=refused)
    try:
        identity.set_host_name(out_dir, host_name)
    except OSError as exc:
        log.warning("host_name_not_written", error=f"{exc.filename}: {exc.strerror or exc}")
        return False
    return True


def read_cursors(out_dir: Path) -> dict[str, str]:
    """Each qube's alert cursor as the handler's argument.

    Without them (unreadable state) the handlers send recent entries, and
    the commit drops those already filed: nothing is filed twice.
    """
    if not out_dir.exists():
        return {}
    try:
        with locked(out_dir):
            state = load_state(out_dir)
    except OSError as exc:
        structlog.get_logger().error("state_unreadable", error=str(exc))
        return {}
    return {vm: q.cursor.argument() for vm, q in state.qubes.items() if q.cursor is not None}


def _log_by_status(event: str, status: Status, **fields: object) -> None:
    """Info when ``status`` is ok, a warning otherwise."""
    log = structlog.get_logger()
    (log.info if status is Status.OK else log.warning)(event, status=status, **fields)


@attrs.frozen
class PollReport:
    """What one tick did."""

    ts: datetime
    qubes: tuple[QubeInfo, ...]
    results: tuple[ScrapeResult, ...]
    outcome: TickOutcome


@attrs.define
class Daemon:
    """The collector: one tick (:meth:`poll`), and the loops that repeat it."""

    config: Config
    source: DiscoverySource
    transport: Transport
    wall_now: Callable[[], datetime] = utc_now
    committer: Committer = commit_tick
    notify: Callable[[str], None] = sd_notify
    offload: Offload = trio.to_thread.run_sync
    #: How a large (hostile) reply is parsed: a worker thread, inline in tests.
    parse_offload: ParseOffload = in_worker_thread
    xen: XenFollower | None = None
    #: Each qube's Xen id, to map a netvm's vifN.M (views.csv); None: not asked.
    xids: Xids | None = None
    views: ViewsState = attrs.field(factory=ViewsState)
    archive: NightlyArchive | None = None
    on_tick: Callable[[PollReport], None] | None = None
    health: Health = attrs.field()
    notes: list[str] = attrs.field(factory=list)
    ticks_done: int = 0
    last_qubes_ts: float = -math.inf
    _ordered: trio.Event | None = None
    _discovery_error: str | None = None
    #: While dom0's list fails: how often in a row, and when to ask again.
    _discovery_failures: int = 0
    _discovery_retry_at: float = -math.inf
    _ready_sent: bool = False
    _rejected_alerted: str | None = None
    _self_name: str | None = None
    _self_uuid: str | None = None
    _listed: frozenset[str] = frozenset()
    _identity_made: bool = False

    @health.default
    def _health(self) -> Health:
        return Health(self.config.interval)

    # -- one tick ---------------------------------------------------------

    async def poll(self, ts: datetime) -> PollReport:
        """One tick at ``ts``: discover, plan, scrape, commit (rules and notes included).

        Raises:
            DiscoveryError: the qubes could not be listed; nothing was written.
        """
        async with self._in_order() as previous:
            discovery, targets = await self._discover()
            async with trio.open_nursery() as nursery:  # ids asked while the qubes answer
                mapped: dict[int, str] = {}
                nursery.start_soon(self._map_xids, discovery, mapped)
                results = await self._scrape(discovery, targets)
            # qubes.csv once a minute: at each new minute, so every day
            # folder gets it from its first minute on.
            qubes = None
            if ts.timestamp() // QUBES_EVERY != self.last_qubes_ts // QUBES_EVERY:
                qubes = discovery.qubes
            if previous is not None:
                await previous.wait()
            outcome = await self._commit(ts, results, qubes, discovery.qubes, mapped)
            if qubes is not None and outcome.skipped is None:
                self.last_qubes_ts = ts.timestamp()
        return PollReport(ts, discovery.qubes, tuple(results), outcome)

    @contextlib.asynccontextmanager
    async def _in_order(self) -> AsyncIterator[trio.Event | None]:
        """Ticks overlap while polling but commit in the order they started."""
        previous, mine = self._ordered, trio.Event()
        self._ordered = mine
        try:
            yield previous
        finally:
            mine.set()

    async def _discover(self) -> tuple[Discovery, list[str]]:
        """The qubes dom0 lists, and those of them to poll.

        Running, not dom0, not ourselves, not excluded, and never the vault:
        the handler would run as root in it and its journal would flow out
        (the shipped policy denies it too).
        """
        config = self.config
        with trio.move_on_after(config.scrape_timeout) as scope:
            discovery = await self.source.list_qubes()
        if scope.cancelled_caught:
            raise DiscoveryError(f"admin.vm.List: no reply within {config.scrape_timeout:g} s")
        log = structlog.get_logger()
        for reason in discovery.rejected:
            log.warning("discovery_line_rejected", reason=reason)
        if discovery.unusable:
            raise DiscoveryError(
                f"admin.vm.List: none of the {discovery.lines} lines dom0 sent is usable "
                f"({discovery.rejected[0]})"
            )
        if self._self_name is None:  # our name does not change: asked once
            self._self_name = config.self_name or await self.source.own_name()
        if self._self_name is None:
            # Polling every qube would poll this one, as root, by its UUID.
            raise DiscoveryError(
                "this qube's own name is unknown (qubesdb-read /name failed; set self_name "
                "in sysmon.toml): no qube is polled, so as not to poll sys-monitor itself"
            )
        self._note_rejected(discovery.rejected)
        self._listed = frozenset(q.name for q in discovery.qubes)
        for q in discovery.qubes:  # learned once; skipped under any later name
            if q.name == self._self_name and q.uuid is not None:
                self._self_uuid = q.uuid
        exclude = (*config.exclude, config.vault)
        return discovery, select_targets(
            discovery.qubes, self._self_name, exclude, self_uuid=self._self_uuid
        )

    async def _scrape(self, discovery: Discovery, targets: Sequence[str]) -> list[ScrapeResult]:
        """Poll the targets due now; ``skipped`` for the others; in list order."""
        poll, skipped = self.health.plan(targets, trio.current_time())
        self.health.set_in_flight(poll, in_flight=True)
        try:
            cursors = await self.offload(read_cursors, self.config.out_dir)
            assert isinstance(cursors, dict)  # noqa: S101
            arguments = {
                vm: self.health.argument(
                    vm,
                    cursors.get(vm, ""),
                    disk_every=self.config.disk_every,
                    alerts_every=self.config.alerts_every,
                )
                for vm in poll
            }
            polled = await scrape_round(
                self.transport,
                poll,
                arguments,
                per_qube_timeout=self.config.scrape_timeout,
                concurrency=self.config.concurrency,
                on_result=lambda r: self.health.set_in_flight([r.vm], in_flight=False),
                addresses={q.name: q.address for q in discovery.qubes},
                parse_offload=self.parse_offload,
            )
        finally:
            self.health.set_in_flight(poll, in_flight=False)
        for r in polled:  # the canonical line of each qube's poll
            _log_by_status(
                "scrape_done",
                r.status,
                vm=r.vm,
                duration_ms=r.duration_ms,
                bytes=r.n_bytes,
                lines_ok=r.lines_ok,
                lines_rejected=r.lines_rejected,
                detail=r.detail or None,
            )
        for change in self.health.record(polled, trio.current_time()):
            _log_by_status(
                "qube_status_changed",
                change.status,
                vm=change.vm,
                was=change.was,
                detail=change.detail or None,
            )
        self.health.keep_only(q.name for q in discovery.qubes)
        order = {vm: i for i, vm in enumerate(targets)}
        return sorted([*polled, *skipped], key=lambda r: order[r.vm])

    async def _commit(
        self,
        ts: datetime,
        results: Sequence[ScrapeResult],
        qubes: Sequence[QubeInfo] | None,
        listed: Sequence[QubeInfo] = (),
        xids: Mapping[int, str] | None = None,
    ) -> TickOutcome:
        """Hand the commit this tick's plan, with the notes gathered since the last."""
        me = self._self_name or self.config.self_name or "sys-monitor"
        notes = [(me, message) for message in self.notes]
        self.notes.clear()
        xen = self.xen.fresh(trio.current_time(), self._listed) if self.xen is not None else ()
        views: tuple[bytes, ...] = ()
        if self.xen is not None:  # the two views, in commit order (docs/views.md)
            seen = compare(self.views, ts=ts, results=results, xen=xen, xids=xids or {},
                           limits=self.config.views_limits)  # fmt: skip
            self.views, views = seen.state, seen.rows
            notes += seen.alerts
        plan = functools.partial(
            build_tick,
            ts=ts,
            results=results,
            qubes=qubes,
            xen=xen,
            notes=notes,
            rules=self.config.rules,
            me=me,
            budget=self.config.budget,
            listed=listed,
            views=views,
            xids=xids,
        )
        outcome = await self.offload(self.committer, self.config.out_dir, ts, plan)
        assert isinstance(outcome, TickOutcome)  # noqa: S101
        if not self._identity_made:  # from the first tick: any day folder exports as this host
            made = await self.offload(make_identity, self.config.out_dir, self.config.host_name)
            self._identity_made = made is True
        for error in outcome.errors:
            if error.startswith("state: "):  # the tick is dropped, or rolled back at the next
                self.note(
                    f"sysmon: the state could not be saved ({error.removeprefix('state: ')}): "
                    f"the tick of {format_ts(ts)} is not kept"
                )
        for aside in outcome.moved_aside:
            self.note(
                f"sysmon: a daily file was not sysmon's (a link, a FIFO or a wrong header): "
                f"moved aside as {format_ts(ts)[:10]}/{aside}, a fresh one started"
            )
        if outcome.stepped_back is not None:
            structlog.get_logger().warning(
                "clock_stepped", direction="back", seconds=outcome.stepped_back, rows="resumed"
            )
        return outcome

    async def _map_xids(self, discovery: Discovery, mapped: dict[int, str]) -> None:
        """Xen id -> qube, asked of dom0 for qubes that started (never the vault's)."""
        if self.xids is not None:
            latest = self.xen.latest.values() if self.xen is not None else ()
            cpu = {s.vm: s.cpu_time_ms for _, s in latest if s.cpu_time_ms is not None}
            mapped.update(await self.xids.refresh(discovery.qubes, (self.config.vault,), cpu))

    def note(self, message: str) -> None:
        """An alert row of sysmon's own, written with the next tick."""
        self.notes.append(message)

    def _note_rejected(self, rejected: Sequence[str]) -> None:
        """An alert row when dom0's list has lines sysmon cannot use, once per change."""
        shown = "; ".join(rejected[:3]) if rejected else None
        if shown and shown != self._rejected_alerted:
            self.note(f"sysmon: admin.vm.List: {len(rejected)} lines not used ({shown})")
        self._rejected_alerted = shown

    # -- the loops ----------------------------------------------------------

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
            if self.xen is not None:
                nursery.start_soon(self.xen.run)
            if self.archive is not None:
                nursery.start_soon(self.archive.run)
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

    async def run_tick(self, ts: datetime) -> None:
        """One tick of the loop: :meth:`poll`, its log line, systemd's watchdog."""
        log = structlog.get_logger()
        start = trio.current_time()
        if self._discovery_error is not None and start < self._discovery_retry_at:
            self._alive()  # a failing list is a state to live in, not a hang
            return
        try:
            report = await self.poll(ts)
        except DiscoveryError as exc:
            self._discovery_failures += 1
            retry_in = backoff_delay(self.config.interval, self._discovery_failures)
            self._discovery_retry_at = start + retry_in
            if str(exc) != self._discovery_error:
                log.error("discovery_failed", error=str(exc), retry_in=retry_in)  # noqa: TRY400 -- expected, no traceback
                self.note(f"sysmon: discovery failed: {exc}")
            else:
                log.info(
                    "discovery_still_failing", tries=self._discovery_failures, retry_in=retry_in
                )
            self._discovery_error = str(exc)
            if not self.notes:
                self._alive()
                return
            # Nothing to poll, but the alert row is written now.
            async with self._in_order() as previous:
                if previous is not None:
                    await previous.wait()
                outcome = await self._commit(ts, [], None)
            report = PollReport(ts, (), (), outcome)
        else:
            if self._discovery_error is not None:
                log.info("discovery_recovered", tries=self._discovery_failures)
                self._discovery_error = None
                self._discovery_failures = 0
        self._log_tick(report, trio.current_time() - start)
        self.ticks_done += 1
        self._alive()
        if self.on_tick is not None:
            self.on_tick(report)

    def _alive(self) -> None:
        """Tell systemd: READY=1 once, then a watchdog ping per tick."""
        self.notify("WATCHDOG=1" if self._ready_sent else "READY=1")
        self._ready_sent = True

    def _log_tick(self, report: PollReport, seconds: float) -> None:
        """The tick's canonical log line."""
        results, outcome = report.results, report.outcome
        slowest = max(results, key=lambda r: r.duration_ms, default=None)
        fields = {
            "ts": format_ts(report.ts),
            "qubes": len(results),
            "ok": sum(r.status is Status.OK for r in results),
            "failed": sum(r.status not in {Status.OK, Status.SKIPPED} for r in results),
            "skipped": sum(r.status is Status.SKIPPED for r in results),
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


def main(config: Config) -> int:
    """``sysmon run``: qrexec to the qubes, dom0's stats stream, the nightly archive."""
    xids = Xids(timeout=config.scrape_timeout)
    daemon = Daemon(config, QrexecDiscovery(), Qrexec(), xen=XenFollower(), xids=xids)
    daemon.archive = NightlyArchive(
        config, note=daemon.note, wall_now=daemon.wall_now, steady_now=boot_time
    )
    trio.run(daemon.serve, strict_exception_groups=True)
    return 0
