"""``sysmon archive`` and the nightly task: deliver complete days to the vault.

The copy is ``qvm-copy-to-vm <vault> <file>`` (on PATH): 0 is success, 126 a
policy refusal or a vault that may not be started, 1 a local problem, and an
error in the vault exits with the vault's errno -- 17 (EEXIST) when the name is
already in its QubesIncoming, 28 (ENOSPC) or 122 (EDQUOT) when it is full
(qubes-core-agent-linux ``qubes-rpc/qvm-copy``, qubes-linux-utils
``qrexec-lib/unpack.c``; recorded in ``tests/fixtures/qubes/qvm-copy-to-vm.json``).
The file lands in the vault at ``~/QubesIncoming/<this qube>/``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path

import attrs
import structlog
import trio
from dateutil import tz

from sysmon import __version__, events
from sysmon.collect.process import run_bounded
from sysmon.commands.offload import Offload
from sysmon.config import Config
from sysmon.protocol.admin import EXIT_REFUSED
from sysmon.store.archive import build_archive, day_meta
from sysmon.store.days import ArchiveError
from sysmon.store.delivery import (
    archive_lock,
    days_to_deliver,
    is_delivered,
    mark_delivered,
    outgoing_name,
    record_attempt,
    record_refused,
    stage_for_copy,
)
from sysmon.store.retention import Pruned, prune

#: A wall clock within this of the steady clock's reckoning agrees with it.
CLOCK_SLACK = 300.0
#: A wall clock ahead of the steady one this long is believed: a day of
#: steady time (a wrong clock is set right by then, or its day has passed).
TRUST_AHEAD_AFTER = 86400.0
COPY_TIMEOUT = 600.0
RETRY = 3600.0
MAX_RETRY = 6 * 3600.0

#: Runs the copy of one file to the vault; returns the exit status.
Copier = Callable[[str, Path], Awaitable[int]]


async def qvm_copy_to_vm(vault: str, path: Path) -> int:
    """``qvm-copy-to-vm VAULT FILE``.  The caller owns the timeout."""
    result = await run_bounded(["qvm-copy-to-vm", vault, str(path)], max_stdout=65536)
    return result.returncode


@attrs.frozen
class DayOutcome:
    """What happened to one day."""

    day: date
    status: str  # delivered, built, already, refused, failed, timeout
    detail: str = ""


@attrs.frozen
class ArchiveReport:
    """One archive run."""

    days: tuple[DayOutcome, ...]
    pruned: Pruned
    #: Another run held the archive lock: this one did nothing.
    busy: bool = False

    @property
    def ok(self) -> bool:
        """No day failed."""
        return all(d.status in {"delivered", "built", "already"} for d in self.days)


async def run_archive(
    config: Config,
    today: date,
    *,
    days: list[date] | None = None,
    copy: bool = True,
    force: bool = False,
    copier: Copier = qvm_copy_to_vm,
    offload: Offload = trio.to_thread.run_sync,
    min_free_bytes: int | None = None,
    copy_timeout: float = COPY_TIMEOUT,
) -> ArchiveReport:
    """Archive (and unless ``copy`` is False, deliver) days, then prune.

    Without ``days``, every complete UTC day not yet delivered.  Stops at the
    first failed copy: the vault is down or refusing, the rest waits.  Only
    one run at a time: another one finds the archive lock held and returns
    ``busy`` at once.
    """
    with archive_lock(config.out_dir) as held:
        if not held:
            structlog.get_logger().warning(events.ARCHIVE_BUSY, out_dir=str(config.out_dir))
            return ArchiveReport(days=(), pruned=Pruned(), busy=True)
        return await _run_archive(
            config,
            today,
            days=days,
            copy=copy,
            force=force,
            copier=copier,
            offload=offload,
            min_free_bytes=min_free_bytes,
            copy_timeout=copy_timeout,
        )


async def _run_archive(
    config: Config,
    today: date,
    *,
    days: list[date] | None,
    copy: bool,
    force: bool,
    copier: Copier,
    offload: Offload,
    min_free_bytes: int | None,
    copy_timeout: float,
) -> ArchiveReport:
    out_dir = config.out_dir
    log = structlog.get_logger()
    todo = days if days is not None else days_to_deliver(out_dir, today)
    outcomes: list[DayOutcome] = []

    def stopped(day: date, status: str, detail: str) -> None:
        """The run ends at ``day``: said in its outcome and the log."""
        outcomes.append(DayOutcome(day, status, detail))
        log.error(events.ARCHIVE_FAILED, day=day.isoformat(), error=detail)

    for day in todo:
        if day >= today:
            outcomes.append(DayOutcome(day, "failed", "today is not complete"))
            continue
        if is_delivered(out_dir, day) and not force:
            outcomes.append(DayOutcome(day, "already", "delivered before"))
            continue
        try:
            meta = await offload(
                functools.partial(day_meta, version=__version__, interval=config.interval),
                out_dir,
                day,
            )
            path = await offload(build_archive, out_dir, day, meta)
        except (ArchiveError, OSError) as exc:  # OSError: a full disk making the host-id
            stopped(day, "failed", str(exc))
            break
        if not copy:
            outcomes.append(DayOutcome(day, "built", str(path)))
            continue
        try:
            name = await offload(outgoing_name, out_dir, day)
            await offload(record_attempt, out_dir, day)
            staged = await offload(stage_for_copy, out_dir, day, name)
        except OSError as exc:  # a full disk: nothing sent, retention still runs
            stopped(day, "failed", f"cannot stage: {exc.strerror or exc}")
            break
        with trio.move_on_after(copy_timeout) as scope:
            try:
                code = await copier(config.vault, staged)
            except OSError as exc:
                code = None
                detail = f"cannot run qvm-copy-to-vm: {exc.strerror or exc}"
        if scope.cancelled_caught:
            outcomes.append(DayOutcome(day, "timeout", f"no answer within {copy_timeout:g} s"))
            break
        if code == 0:
            try:
                await offload(mark_delivered, out_dir, day, name)
            except OSError as exc:  # the attempt is recorded: the next copy is a new name
                stopped(
                    day,
                    "failed",
                    f"delivered, but its marker cannot be written: {exc.strerror or exc}; "
                    "sent again as a later copy",
                )
                break
            outcomes.append(
                DayOutcome(day, "delivered", f"{config.vault}: QubesIncoming/.../{name}")
            )
            log.info(events.ARCHIVE_DELIVERED, day=day.isoformat(), vault=config.vault, name=name)
            continue
        if code == EXIT_REFUSED:
            await offload(record_refused, out_dir, day)
            detail = f"refused: policy, or {config.vault} may not be started (exit 126)"
        elif code is not None:
            detail = f"qvm-copy-to-vm failed (exit {code}{VAULT_ERRNO.get(code, '')})"
        stopped(day, "refused" if code == EXIT_REFUSED else "failed", detail)
        break
    if min_free_bytes is None:
        min_free_bytes = config.min_free_mb * 1024 * 1024
    pruned = await offload(
        functools.partial(
            prune,
            out_dir,
            today,
            config.retention_days,
            min_free_bytes,
            config.max_data_mb * 1024 * 1024,
        )
    )
    if pruned.folders or pruned.archives:
        log.info(
            events.ARCHIVE_PRUNED,
            folders=[d.isoformat() for d in pruned.folders],
            archives=[d.isoformat() for d in pruned.archives],
        )
    return ArchiveReport(days=tuple(outcomes), pruned=pruned)


#: The vault's errno, as qvm-copy-to-vm's exit status, that sysmon can explain.
VAULT_ERRNO = {
    17: ": the vault already has a file of that name; the next try sends a new name",
    28: ": the vault is full",
    122: ": the vault's quota is full",
}


def next_archive_time(now: datetime, archive_at: str, zone: tzinfo | None = None) -> datetime:
    """The next ``archive_at`` (HH:MM, the qube's local time) after ``now``, in UTC.

    A time that does not exist on a spring-forward night is moved past the
    gap; on a fall-back night the first of the two is taken.
    """
    zone = zone or tz.tzlocal()
    hour, minute = map(int, archive_at.split(":"))
    local_now = now.astimezone(zone)
    for offset in range(3):
        day = local_now.date() + timedelta(days=offset)
        local: datetime = tz.resolve_imaginary(
            datetime.combine(day, time(hour, minute), tzinfo=zone)
        )
        candidate = local.astimezone(UTC)
        if candidate > now.astimezone(UTC):
            return candidate
    raise AssertionError("unreachable: a day later is always later")  # pragma: no cover


@attrs.define
class NightlyArchive:
    """The daemon's archive task: every day at ``archive_at`` (local time).

    On start it catches up on days missed while the qube was off.  A failure
    is retried hourly, then less often, and told once through ``note`` (an
    alert row: ``sysmon: archive ...``).
    """

    config: Config
    note: Callable[[str], None]
    wall_now: Callable[[], datetime]
    copier: Copier = qvm_copy_to_vm
    offload: Offload = trio.to_thread.run_sync
    zone: tzinfo | None = None
    #: A clock that never steps: trio's (virtual in tests); ``main`` gives
    #: CLOCK_BOOTTIME, which also counts the time the qube was suspended.
    steady_now: Callable[[], float] = trio.current_time
    _alerted: str | None = None
    #: The wall clock's reading at a steady-clock time it was trusted.
    _anchor: tuple[datetime, float] | None = None
    _ahead_since: float | None = None

    def complete_before(self) -> date:
        """The UTC day before which days are complete, by both clocks.

        The wall clock's today, unless the steady clock says less time has
        passed since the wall clock was last trusted (a step ahead): a day a
        wrong clock calls past is not delivered until it is.  A wall clock
        ahead for ``TRUST_AHEAD_AFTER`` steady seconds is believed (a suspend
        the steady clock missed); a step back is believed at once.
        """
        wall, steady = self.wall_now(), self.steady_now()
        if self._anchor is None:
            self._anchor = (wall, steady)
        agreed = self._anchor[0] + timedelta(seconds=steady - self._anchor[1])
        if wall <= agreed + timedelta(seconds=CLOCK_SLACK):
            self._anchor, self._ahead_since = (wall, steady), None
            return wall.astimezone(UTC).date()
        if self._ahead_since is None:
            self._ahead_since = steady
        if steady - self._ahead_since >= TRUST_AHEAD_AFTER:
            self._anchor, self._ahead_since = (wall, steady), None
            return wall.astimezone(UTC).date()
        return agreed.astimezone(UTC).date()

    async def run(self) -> None:
        """Deliver, then sleep until the next ``archive_at``, until cancelled."""
        retry = RETRY
        due = True  # catch up first
        while True:
            if not due:
                now = self.wall_now()
                at = next_archive_time(now, self.config.archive_at, self.zone)
                await trio.sleep((at - now).total_seconds())
            today = self.complete_before()
            try:
                report = await run_archive(
                    self.config, today, copier=self.copier, offload=self.offload
                )
            except OSError as exc:  # the lock, retention: not the daemon's end
                structlog.get_logger().error(events.ARCHIVE_FAILED, error=str(exc))
                retry, due = await self._failed(f"sysmon: archive run failed: {exc}", retry), True
                continue
            if report.busy:  # a `sysmon archive` is delivering: look again later
                await trio.sleep(retry)
                continue
            if report.pruned.low_on_space_undelivered:
                self.note("sysmon: disk low and only undelivered days are left")
            if report.pruned.over_ceiling:
                days = ", ".join(d.isoformat() for d in report.pruned.over_ceiling)
                self.note(
                    f"sysmon: data over its ceiling of {self.config.max_data_mb} MB: "
                    f"deleted delivered days {days}"
                )
            if report.pruned.ceiling_undelivered:
                self.note(
                    f"sysmon: data over its ceiling of {self.config.max_data_mb} MB "
                    "and only undelivered days are left"
                )
            failed = next(
                (d for d in report.days if d.status not in {"delivered", "already"}), None
            )
            if failed is None:
                self._alerted = None
                retry, due = RETRY, False
                continue
            retry = await self._failed(
                f"sysmon: archive of {failed.day} {failed.status}: {failed.detail}", retry
            )
            due = True  # tried again after the wait, not at the next archive_at

    async def _failed(self, message: str, retry: float) -> float:
        """Say ``message`` once, wait ``retry`` s; the next wait (doubled up to a bound)."""
        if message != self._alerted:
            self.note(message)
            self._alerted = message
        await trio.sleep(retry)
        return min(MAX_RETRY, retry * 2)


def main(config: Config, args: argparse.Namespace, today: date) -> int:
    """``sysmon archive``: complete days now, delivered unless ``--no-copy``."""
    days = None
    if args.day is not None:
        try:
            days = [date.fromisoformat(args.day)]
        except ValueError:
            print(f"sysmon archive: --day wants YYYY-MM-DD, got {args.day!r}", file=sys.stderr)
            return 2
    report = trio.run(
        functools.partial(
            run_archive, config, today, days=days, copy=not args.no_copy, force=args.force
        ),
        strict_exception_groups=True,
    )
    if report.busy:
        print("sysmon archive: another archive run is under way; try again later", file=sys.stderr)
        return 1
    for outcome in report.days:
        print(f"{outcome.day}  {outcome.status:<9}  {outcome.detail}")
    if not report.days:
        print("nothing to archive: every complete day is delivered")
    for day in report.pruned.folders:
        print(f"{day}  pruned     day folder removed (delivered, past retention)")
    if report.pruned.low_on_space_undelivered:
        print("warning: disk low and only undelivered days are left", file=sys.stderr)
    if report.pruned.ceiling_undelivered:
        print(
            f"warning: over max_data_mb ({config.max_data_mb}) with only undelivered days left",
            file=sys.stderr,
        )
    failed = [o for o in report.days if o.status not in {"delivered", "built", "already"}]
    if failed:
        print(f"sysmon archive: {failed[0].day}: {failed[0].detail}", file=sys.stderr)
        return 1
    return 0
