"""Commit one tick's rows to the daily files and the state, under the lock.

Synchronous (run it in a thread).  The commit is handed a *plan*: a function
that builds the tick's rows from the state before it (loaded here, under the
lock); it never builds rows itself.  Alert rows are written between two
state saves: first the new states of the qubes without alerts plus a
*pending* record of each alerting qube's end offset and new state, then the
rows, then the commit.  After a crash, :func:`recover` commits exactly the
qubes whose rows reached the disk whole and cuts off the rest, so no journal
entry is filed twice or lost.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import attrs
import structlog

from sysmon import schema
from sysmon.records import PendingAlerts, QubeState, State, TickOutcome, TickRows
from sysmon.store.daily import WriteError, append_rows, ensure_day, locked, truncate_to
from sysmon.store.state import load_state, save_state

#: Builds a tick's rows from the state before it.
Plan = Callable[[State], TickRows]
#: How far back the wall clock may step and rows still wait for it to pass
#: the newest written second, so they stay in time order (an NTP correction,
#: a stepped clock).  Past this the clock that ran ahead was wrong: rows
#: resume at once, at most this many seconds of ticks lost.
MAX_STEP_BACK = 120


def recover(out_dir: Path, state: State) -> State:
    """Finish a tick that a crash interrupted between alert rows and commit."""
    pending = state.pending
    if pending is None:
        return state
    path = out_dir / pending.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    qubes = dict(state.qubes)
    keep = pending.start
    committed = []
    for vm, end, qube_state in pending.commits:
        if size < end:
            break
        if qube_state is not None:
            qubes[vm] = qube_state
        keep = end
        committed.append(vm)
    if size > keep and path.exists():
        truncate_to(path, keep)
    recovered = State(qubes=qubes, last_ts=state.last_ts, pending=None, rules=state.rules)
    save_state(out_dir, recovered)
    structlog.get_logger().warning(
        "tick_recovered", file=str(path), committed=committed, cut_bytes=max(0, size - keep)
    )
    return recovered


def commit_tick(out_dir: Path, ts: datetime, plan: Plan, *, sync: bool = True) -> TickOutcome:
    """Write one tick (``ts``: its wall-clock time) and advance the state.

    Never raises for a full disk or an I/O error: the outcome says what was
    dropped, and the next tick tries again.  ``sync`` fsyncs every file and
    the state (off only in simulations).
    """
    try:
        with locked(out_dir):
            state = recover(out_dir, load_state(out_dir))
            epoch = int(ts.timestamp())
            behind = state.last_ts - epoch
            if 0 <= behind <= MAX_STEP_BACK:
                last = datetime.fromtimestamp(state.last_ts, tz=UTC)
                return TickOutcome(
                    skipped=f"rows up to {schema.format_ts(last)} are written already "
                    "(clock behind, or a poll in the same second)"
                )
            outcome = _write(out_dir, ts, plan(state), state, sync=sync)
            if behind > 0:
                return attrs.evolve(outcome, stepped_back=float(behind))
            return outcome
    except OSError as exc:
        reason = f"{exc.filename or out_dir}: {exc.strerror or exc}"
        structlog.get_logger().error("tick_commit_failed", error=reason)
        return TickOutcome(errors=(reason,))


@attrs.define
class _Tally:
    """Rows written and dropped per file, and the errors, as the commit goes."""

    written: dict[str, int] = attrs.field(factory=dict)
    dropped: dict[str, int] = attrs.field(factory=dict)
    errors: list[str] = attrs.field(factory=list)
    moved: list[str] = attrs.field(factory=list)

    def outcome(self, built: TickRows) -> TickOutcome:
        return TickOutcome(
            written=self.written,
            dropped=self.dropped,
            errors=tuple(self.errors),
            restarted=built.restarted,
            moved_aside=tuple(self.moved),
        )


def _write(
    out_dir: Path, ts: datetime, built: TickRows, state: State, *, sync: bool
) -> TickOutcome:
    tally = _Tally()
    try:
        folder = ensure_day(out_dir, ts.astimezone(UTC).date(), tally.moved)
    except OSError as exc:
        for name, rows in built.rows.items():
            if rows:
                tally.dropped[name] = len(rows)
        alert_rows = sum(len(b.rows) for b in built.alerts)
        if alert_rows:
            tally.dropped[schema.ALERTS.file_name] = alert_rows
        tally.errors.append(f"day folder: {exc.strerror or exc}")
        return tally.outcome(built)
    _append_files(folder, built, tally, sync=sync)
    epoch = int(ts.timestamp())
    qubes = {**state.qubes, **built.states}
    for vm in built.forget:
        qubes.pop(vm, None)
    try:
        if built.alerts:
            qubes = _append_alerts(out_dir, folder, built, qubes, epoch, tally, sync=sync)
        save_state(
            out_dir,
            State(qubes=qubes, last_ts=epoch, pending=None, rules=built.rule_state),
            sync=sync,
        )
    except OSError as exc:
        tally.errors.append(f"state: {exc.strerror or exc}")
    return tally.outcome(built)


def _append_files(folder: Path, built: TickRows, tally: _Tally, *, sync: bool) -> None:
    """Every file but alerts.csv: each row whole, or cut back off."""
    for daily in schema.DAILY_FILES:
        rows = built.rows.get(daily.file_name, ())
        if daily is schema.ALERTS or not rows:
            continue
        try:
            append_rows(folder / daily.file_name, daily, rows, sync=sync)
            tally.written[daily.file_name] = len(rows)
        except WriteError as exc:
            tally.written[daily.file_name] = exc.written
            tally.dropped[daily.file_name] = len(rows) - exc.written
            tally.errors.append(str(exc))


def _append_alerts(
    out_dir: Path,
    folder: Path,
    built: TickRows,
    qubes: dict[str, QubeState],
    epoch: int,
    tally: _Tally,
    *,
    sync: bool,
) -> dict[str, QubeState]:
    """alerts.csv between two state saves; the qubes' states as they stand after it.

    Raises:
        OSError: the pending state could not be saved (nothing was appended).
    """
    alerts_path = folder / schema.ALERTS.file_name
    start = _size(alerts_path)
    commits = []
    end = start
    for batch in built.alerts:
        end += sum(len(r) for r in batch.rows)
        commits.append((batch.vm, end, batch.next_state))
    relative = str(alerts_path.relative_to(out_dir))
    pending = PendingAlerts(file=relative, start=start, commits=tuple(commits))
    save_state(
        out_dir,
        State(qubes=qubes, last_ts=epoch, pending=pending, rules=built.rule_state),
        sync=sync,
    )
    all_rows = [row for batch in built.alerts for row in batch.rows]
    try:
        append_rows(alerts_path, schema.ALERTS, all_rows, sync=sync)
        tally.written[schema.ALERTS.file_name] = len(all_rows)
    except WriteError as exc:
        tally.errors.append(str(exc))
        # Keep whole qubes only: a qube whose rows are cut is filed again,
        # entire, at its next poll.
        size = start + sum(len(r) for r in all_rows[: exc.written])
        keep, kept_rows, rows_seen = start, 0, 0
        for batch, (_vm, batch_end, _state) in zip(built.alerts, commits, strict=True):
            rows_seen += len(batch.rows)
            if batch_end <= size:
                keep, kept_rows = batch_end, rows_seen
        truncate_to(alerts_path, keep)
        tally.written[schema.ALERTS.file_name] = kept_rows
        tally.dropped[schema.ALERTS.file_name] = len(all_rows) - kept_rows
    on_disk = _size(alerts_path)
    return qubes | {vm: st for vm, end_, st in commits if end_ <= on_disk and st is not None}


def _size(path: Path) -> int:
    return path.stat().st_size
