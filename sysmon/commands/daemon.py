"""``sysmon run``: the collector daemon, and the one tick ``once`` and ``demo`` run too.

A tick is discover -> plan -> scrape -> commit: dom0 lists the qubes, the
health of each decides which are polled now (a qube still in flight or
backing off is ``skipped``), the polls run under a concurrency cap and a
per-qube timeout, and the commit writes the rows, the rules' alerts and
sysmon's own notes in one go.  The daemon adds the loops around it: ticks
scheduled on trio's monotonic clock and aligned to wall-clock multiples of
the interval (every row of a tick shares one ``ts``), committed in ``ts``
order, missed ticks skipped rather than bunched; dom0's stats stream; the
nightly archive; a stop trigger (SIGTERM or SIGINT unless told otherwise);
and one canonical log line per tick.  What it is handed from outside -- the
wall clock, the commit, systemd's socket, how blocking work runs -- is one
object, :class:`Collaborators`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import attrs
import structlog
import trio

from sysmon import events, schema
from sysmon.collect.health import Health, backoff_delay
from sysmon.collect.qrexec import DiscoverySource, Qrexec, QrexecDiscovery, Transport
from sysmon.collect.scrape import ParseOffload, in_worker_thread, scrape_round
from sysmon.collect.xen import XenFollower
from sysmon.collect.xids import Xids
from sysmon.commands.archive import NightlyArchive
from sysmon.commands.notify import Notifier, notifier_for
from sysmon.commands.offload import Offload
from sysmon.config import Config
from sysmon.protocol.admin import Discovery, DiscoveryError, QubeInfo, select_targets
from sysmon.records import ScrapeResult, Status, TickOutcome
from sysmon.schema import format_ts
from sysmon.store import identity
from sysmon.store.commit import Plan, commit_tick
from sysmon.store.daily import locked
from sysmon.store.state import load_state
from sysmon.transform.tick import TickPlan

QUBES_EVERY = 60.0
_ALERTS = schema.ALERTS.file_name
#: sysmon's own notes held for the next tick kept; past this one line counts the rest.
MAX_NOTES = 64

__all__ = ["Collaborators", "Daemon", "Offload", "PollReport", "StopTrigger", "stop_on_signals"]

#: Writes one tick: the rows its plan builds from the state, under the lock.
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
        structlog.get_logger().warning(events.SD_NOTIFY_FAILED, error=str(exc))


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
        log.warning(
            events.HOST_IDENTITY_NOT_WRITTEN, error=f"{exc.filename}: {exc.strerror or exc}"
        )
        return False
    if refused is not None:
        log.error(events.HOST_IDENTITY_REFUSED, error=refused)
    try:
        identity.set_host_name(out_dir, host_name)
    except OSError as exc:
        log.warning(events.HOST_NAME_NOT_WRITTEN, error=f"{exc.filename}: {exc.strerror or exc}")
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
        structlog.get_logger().error(events.STATE_UNREADABLE, error=str(exc))
        return {}
    return {vm: q.cursor.argument() for vm, q in state.qubes.items() if q.cursor is not None}


def _log_by_status(event: str, status: Status, **fields: object) -> None:
    """Info when ``status`` is ok, a warning otherwise."""
    log = structlog.get_logger()
    (log.info if status is Status.OK else log.warning)(event, status=status, **fields)


class StopTrigger(Protocol):
    """Returns when the daemon should stop; says ``task_status.started()`` once listening."""

    async def __call__(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Wait for the stop."""
        ...


async def stop_on_signals(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The service's stop trigger: SIGTERM (systemd) or SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            structlog.get_logger().info(events.SIGNAL_RECEIVED, signal=signal.Signals(signum).name)
            return


@attrs.frozen
class Collaborators:
    """What the daemon is handed from outside, as one object; the defaults are the real ones.

    ``wall_now`` the wall clock (rows' time; ticks ride trio's clock);
    ``committer`` writes a tick under the lock; ``notify`` tells systemd;
    ``offload`` runs blocking file work, ``parse_offload`` a large reply's
    parse (worker threads; inline in tests on virtual time).
    """

    wall_now: Callable[[], datetime] = utc_now
    committer: Committer = commit_tick
    notify: Callable[[str], None] = sd_notify
    offload: Offload = trio.to_thread.run_sync
    parse_offload: ParseOffload = in_worker_thread


@attrs.frozen
class PollReport:
    """What one tick did."""

    ts: datetime
    qubes: tuple[QubeInfo, ...]
    results: tuple[ScrapeResult, ...]
    outcome: TickOutcome


@attrs.frozen
class _ListFailing:
    """dom0's list failing: its error, how often in a row, and when to ask again."""

    error: str
    tries: int
    retry_at: float


@attrs.define
class Daemon:
    """The collector: one tick (:meth:`poll`), and the loops that repeat it."""

    config: Config
    source: DiscoverySource
    transport: Transport
    uses: Collaborators = Collaborators()
    xen: XenFollower | None = None
    #: Each qube's Xen id, to map a netvm's vifN.M (views.csv); None: not asked.
    xids: Xids | None = None
    archive: NightlyArchive | None = None
    on_tick: Callable[[PollReport], None] | None = None
    #: Desktop notifications of the rules that ask for them.
    notifier: Notifier | None = None
    health: Health = attrs.field()
    notes: list[str] = attrs.field(factory=list)
    _notes_lost: int = 0
    ticks_done: int = 0
    last_qubes_ts: float = -math.inf
    _ordered: trio.Event | None = None
    _failing: _ListFailing | None = None
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
            log.warning(events.DISCOVERY_LINE_REJECTED, reason=reason)
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
            cursors = await self.uses.offload(read_cursors, self.config.out_dir)
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
                parse_offload=self.uses.parse_offload,
            )
        finally:
            self.health.set_in_flight(poll, in_flight=False)
        for r in polled:  # the canonical line of each qube's poll
            _log_by_status(
                events.SCRAPE_DONE,
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
                events.QUBE_STATUS_CHANGED,
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
        held, lost = list(self.notes), self._notes_lost
        self.notes.clear()
        self._notes_lost = 0
        notes = [(me, message) for message in held]
        if lost:
            notes.append(
                (me, f"sysmon: {lost} more notes of sysmon's were not kept (no tick was written)")
            )
        xen = self.xen.fresh(trio.current_time(), self._listed) if self.xen is not None else ()
        plan = TickPlan(
            ts=ts,
            results=results,
            qubes=qubes,
            xen=xen,
            notes=notes,
            rules=self.config.rules,
            me=me,
            budget=self.config.budget,
            listed=listed,
            # The two views are compared under the commit's lock, from the
            # state it loads: a restart goes on where they stood, and a tick
            # not kept moves nothing (docs/views.md).
            views=self.config.views_limits if self.xen is not None else None,
            xids=xids,
        )
        watched = self.notifier.watch(plan, ts) if self.notifier is not None else plan
        outcome = await self.uses.offload(self.uses.committer, self.config.out_dir, ts, watched)
        if notes and (outcome.skipped is not None or not outcome.written.get(_ALERTS)):
            # Not written (the tick was skipped, or alerts.csv refused it): the
            # next tick says them, before what was noted since.
            since, since_lost = self.notes, self._notes_lost
            self.notes, self._notes_lost = [], lost
            for message in (*held, *since):
                self.note(message)
            self._notes_lost += since_lost
        if self.notifier is not None:
            self.notifier.committed(outcome)
        if not self._identity_made:  # from the first tick: any day folder exports as this host
            self._identity_made = await self.uses.offload(
                make_identity, self.config.out_dir, self.config.host_name
            )
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
                events.CLOCK_STEPPED, direction="back", seconds=outcome.stepped_back, rows="resumed"
            )
        return outcome

    async def _map_xids(self, discovery: Discovery, mapped: dict[int, str]) -> None:
        """Xen id -> qube, asked of dom0 for qubes that started (never the vault's)."""
        if self.xids is not None:
            latest = self.xen.latest.values() if self.xen is not None else ()
            cpu = {s.vm: s.cpu_time_ms for _, s in latest if s.cpu_time_ms is not None}
            mapped.update(await self.xids.refresh(discovery.qubes, (self.config.vault,), cpu))

    def note(self, message: str) -> None:
        """An alert row of sysmon's own, written with the next tick that is kept."""
        if len(self.notes) < MAX_NOTES:
            self.notes.append(message)
        else:
            self._notes_lost += 1

    def _note_rejected(self, rejected: Sequence[str]) -> None:
        """An alert row when dom0's list has lines sysmon cannot use, once per change."""
        shown = "; ".join(rejected[:3]) if rejected else None
        if shown and shown != self._rejected_alerted:
            self.note(f"sysmon: admin.vm.List: {len(rejected)} lines not used ({shown})")
        self._rejected_alerted = shown

    # -- the loops ----------------------------------------------------------

    async def serve(
        self,
        stop: StopTrigger = stop_on_signals,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until ``stop`` returns (SIGTERM or SIGINT by default), then return (exit 0)."""
        log = structlog.get_logger()
        log.info(
            events.SYSMON_STARTED,
            out_dir=str(self.config.out_dir),
            interval=self.config.interval,
            scrape_timeout=self.config.scrape_timeout,
            concurrency=self.config.concurrency,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self._stop_when, stop, nursery.cancel_scope)
            if self.xen is not None:
                nursery.start_soon(self.xen.run)
            if self.archive is not None:
                nursery.start_soon(self.archive.run)
            nursery.start_soon(self.tick_loop, nursery)
            task_status.started()
        log.info(events.SYSMON_STOPPED, ticks=self.ticks_done)

    async def _stop_when(
        self,
        stop: StopTrigger,
        cancel_scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None],
    ) -> None:
        await stop(task_status=task_status)
        self.uses.notify("STOPPING=1")
        cancel_scope.cancel()

    async def tick_loop(self, nursery: trio.Nursery) -> None:
        """Start a tick at every wall-clock multiple of the interval."""
        log = structlog.get_logger()
        interval = self.config.interval
        while True:
            wall = self.uses.wall_now().timestamp()
            due = (math.floor(wall / interval) + 1) * interval
            await trio.sleep(due - wall)
            now = self.uses.wall_now().timestamp()
            tick = math.floor(now / interval) * interval
            if tick < due:
                # The wall clock went back while we slept: wait for the tick again.
                log.warning(events.CLOCK_STEPPED, direction="back", seconds=round(due - now, 3))
                continue
            if tick > due:
                missed = round((tick - due) / interval)
                log.warning(events.TICKS_MISSED, count=missed, seconds=round(tick - due, 3))
            nursery.start_soon(self.run_tick, datetime.fromtimestamp(tick, tz=UTC))

    async def run_tick(self, ts: datetime) -> None:
        """One tick of the loop: :meth:`poll`, its log line, systemd's watchdog."""
        log = structlog.get_logger()
        start = trio.current_time()
        if self._failing is not None and start < self._failing.retry_at:
            self._alive()  # a failing list is a state to live in, not a hang
            return
        try:
            report = await self.poll(ts)
        except DiscoveryError as exc:
            was = self._failing
            tries = (was.tries if was else 0) + 1
            retry_in = backoff_delay(self.config.interval, tries)
            if was is None or str(exc) != was.error:
                log.error(events.DISCOVERY_FAILED, error=str(exc), retry_in=retry_in)  # noqa: TRY400 -- expected, no traceback
                self.note(f"sysmon: discovery failed: {exc}")
            else:
                log.info(events.DISCOVERY_STILL_FAILING, tries=tries, retry_in=retry_in)
            self._failing = _ListFailing(str(exc), tries, start + retry_in)
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
            if self._failing is not None:
                log.info(events.DISCOVERY_RECOVERED, tries=self._failing.tries)
                self._failing = None
        self._log_tick(report, trio.current_time() - start)
        self.ticks_done += 1
        self._alive()
        if self.on_tick is not None:
            self.on_tick(report)
        if self.notifier is not None:  # after the tick's ping: notify-send may take a while
            await self.notifier.deliver()

    def _alive(self) -> None:
        """Tell systemd: READY=1 once, then a watchdog ping per tick."""
        self.uses.notify("WATCHDOG=1" if self._ready_sent else "READY=1")
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
            log.warning(events.TICK_NOT_WRITTEN, reason=outcome.skipped, **fields)
        elif outcome.errors:
            log.error(
                events.TICK_WRITE_FAILED,
                dropped=outcome.dropped,
                errors=list(outcome.errors),
                **fields,
            )
        else:
            log.info(events.TICK_DONE, **fields)


def main(config: Config) -> int:
    """``sysmon run``: qrexec to the qubes, dom0's stats stream, the nightly archive."""
    xids = Xids(timeout=config.scrape_timeout)
    daemon = Daemon(
        config,
        QrexecDiscovery(),
        Qrexec(),
        xen=XenFollower(),
        xids=xids,
        notifier=notifier_for(config),
    )
    daemon.archive = NightlyArchive(
        config, note=daemon.note, wall_now=daemon.uses.wall_now, steady_now=boot_time
    )
    trio.run(daemon.serve, strict_exception_groups=True)
    return 0
