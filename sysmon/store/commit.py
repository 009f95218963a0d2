"""Commit one tick's rows to the daily files and the state, under the lock.

Synchronous (run it in a thread).  The commit is handed a *plan*: a function
that builds the tick's rows from the state before it (loaded here, under the
lock); it never builds rows itself.  A tick is written between two state
saves: first a *pending* record of every daily file's size, then the rows of
every file, then the new state.  After a crash, :func:`recover` cuts every
file back to those sizes: the tick is in every file or in none, and no qube's
alert cursor (nor where its two views stand) moved, so no journal entry or
views alert is filed twice or lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import attrs
import structlog

from sysmon import events, schema
from sysmon.records import AlertBatch, PendingTick, State, TickOutcome, TickRows
from sysmon.store.daily import WriteError, append_rows, ensure_day, locked, truncate_to
from sysmon.store.state import load_state, save_state


class Plan(Protocol):
    """A tick's rows, built from the state before it: called by the commit, under its lock.

    The inversion: the store sits below the transform and never imports it,
    yet the rows depend on the state only the store may read (the alert
    cursors, the budgets, the rules' and the views' standing).  So the caller hands the
    commit a plan -- this tick's results, bound -- and the commit calls it
    with the state it loaded under the lock: no other writer can move the
    state between reading it and writing the tick.  A plan is pure; it
    writes nothing and may be called at most once per commit.
    """

    def __call__(self, previous: State, /) -> TickRows:
        """Every row of the tick and the state after it."""
        ...


#: How far back the wall clock may step and rows still wait for it to pass
#: the newest written second, so they stay in time order (an NTP correction,
#: a stepped clock).  Past this the clock that ran ahead was wrong: rows
#: resume at once, at most this many seconds of ticks lost.
MAX_STEP_BACK = 120


def recover(out_dir: Path, state: State) -> State:
    """Roll back whole a tick that a crash interrupted: every file to its size before it."""
    pending = state.pending
    if pending is None:
        return state
    folder = out_dir / pending.folder
    over: dict[str, int] = {}
    ticks: set[bytes] = set()
    for name, size in pending.sizes:
        path = folder / name
        try:
            if path.stat().st_size > size:
                over[name] = size
                ticks |= _ticks_past(path, size)
        except FileNotFoundError:
            continue
    recovered = attrs.evolve(state, pending=None)
    if len(ticks) > 1:
        # Rows of later ticks past its sizes: a state older than the files
        # (restored from a backup taken mid-commit), not a crash.  Cut nothing.
        save_state(out_dir, recovered)
        structlog.get_logger().error(
            events.STATE_SECTION_RESET,
            section="pending_tick",
            error=f"{folder}: rows of later ticks past its sizes; the state is older, nothing cut",
        )
        return recovered
    cut: dict[str, int] = {}
    for name, size in over.items():
        path = folder / name
        cut[name] = path.stat().st_size - size
        truncate_to(path, size)
    save_state(out_dir, recovered)
    structlog.get_logger().warning(events.TICK_ROLLED_BACK, folder=str(folder), cut_bytes=cut)
    return recovered


def _ticks_past(path: Path, size: int) -> set[bytes]:
    """The ``ts`` cells of the whole rows past ``size``; read until a second one is found.

    One tick's rows share one ``ts`` (every daily file's first column); a
    torn last line is not a row.
    """
    seen: set[bytes] = set()
    with path.open("rb") as f:
        f.seek(size)
        for line in f:
            if not line.endswith(b"\n"):
                break
            seen.add(line.split(b",", 1)[0])
            if len(seen) > 1:
                break
    return seen


def roll_back_interrupted(out_dir: Path) -> None:
    """Under the lock, roll back a tick a crash left half-written (before its day is packed).

    Only the next commit would otherwise: a day archived first went to the
    vault with that tick in some files and not others.
    """
    with locked(out_dir):
        recover(out_dir, load_state(out_dir))


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
        structlog.get_logger().error(events.TICK_COMMIT_FAILED, error=reason)
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
        _drop_all(built, tally, f"day folder: {exc.strerror or exc}")
        return tally.outcome(built)
    epoch = int(ts.timestamp())
    qubes = {**state.qubes, **built.states}
    for vm in built.forget:
        qubes.pop(vm, None)
    sizes = tuple((d.file_name, _size(folder / d.file_name)) for d in schema.DAILY_FILES)
    try:
        # Before the first row: a crash from here on is rolled back whole.
        save_state(out_dir, attrs.evolve(state, pending=PendingTick(folder.name, sizes)), sync=sync)
    except OSError as exc:
        _drop_all(built, tally, f"state: {exc.strerror or exc}")
        return tally.outcome(built)
    _append_files(folder, built, tally, sync=sync)
    views = built.views if built.views is not None else state.views
    try:
        landed = _append_alerts(folder, built, tally, sync=sync) if built.alerts else ()
        qubes |= {b.vm: b.next_state for b in landed if b.next_state is not None}
        told = {b.vm: b.view for b in landed if b.view is not None}
        if told:
            views = attrs.evolve(views, qubes={**views.qubes, **told})
        save_state(
            out_dir,
            State(
                qubes=qubes,
                last_ts=epoch,
                pending=None,
                rules=built.rule_state,
                pools=built.pools,
                views=views,
            ),
            sync=sync,
        )
    except OSError as exc:
        tally.errors.append(f"state: {exc.strerror or exc}")
    return tally.outcome(built)


def _drop_all(built: TickRows, tally: _Tally, reason: str) -> None:
    """Nothing of this tick is written: count every row as dropped."""
    for name, rows in built.rows.items():
        if rows:
            tally.dropped[name] = len(rows)
    alert_rows = sum(len(b.rows) for b in built.alerts)
    if alert_rows:
        tally.dropped[schema.ALERTS.file_name] = alert_rows
    tally.errors.append(reason)


def _append_files(folder: Path, built: TickRows, tally: _Tally, *, sync: bool) -> None:
    """Every file but alerts.csv: each row whole, or cut back off."""
    for daily in schema.DAILY_FILES:
        rows = built.rows.get(daily.file_name, ())
        if daily is schema.ALERTS or not rows:
            continue
        try:
            append_rows(folder / daily.file_name, daily, [r.line for r in rows], sync=sync)
            tally.written[daily.file_name] = len(rows)
        except WriteError as exc:
            tally.written[daily.file_name] = exc.written
            tally.dropped[daily.file_name] = len(rows) - exc.written
            tally.errors.append(str(exc))


def _append_alerts(
    folder: Path, built: TickRows, tally: _Tally, *, sync: bool
) -> tuple[AlertBatch, ...]:
    """alerts.csv; the batches written whole, whose states (and views) move on.

    A qube whose rows a full disk cut is cut back whole and keeps its old
    state: its entries are filed again, entire, at its next poll.
    """
    alerts_path = folder / schema.ALERTS.file_name
    start = _size(alerts_path)
    commits = []
    end = start
    for batch in built.alerts:
        end += sum(len(r.line) for r in batch.rows)
        commits.append((batch, end))
    all_rows = [row.line for batch in built.alerts for row in batch.rows]
    try:
        append_rows(alerts_path, schema.ALERTS, all_rows, sync=sync)
        tally.written[schema.ALERTS.file_name] = len(all_rows)
    except WriteError as exc:
        tally.errors.append(str(exc))
        size = start + sum(len(r) for r in all_rows[: exc.written])
        keep, kept_rows, rows_seen = start, 0, 0
        for batch, batch_end in commits:
            rows_seen += len(batch.rows)
            if batch_end <= size:
                keep, kept_rows = batch_end, rows_seen
        truncate_to(alerts_path, keep)
        tally.written[schema.ALERTS.file_name] = kept_rows
        tally.dropped[schema.ALERTS.file_name] = len(all_rows) - kept_rows
    on_disk = _size(alerts_path)
    return tuple(batch for batch, batch_end in commits if batch_end <= on_disk)


def _size(path: Path) -> int:
    return path.stat().st_size
