"""Commit one tick's rows to the daily files and the state, under the lock.

Synchronous (run it in a thread).  Alert rows are written between two state
saves: first the new states of the qubes without alerts plus a *pending*
record of each alerting qube's end offset and new state, then the rows, then
the commit.  After a crash, :func:`recover` commits exactly the qubes whose
rows reached the disk whole and cuts off the rest, so no journal entry is
filed twice or lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs
import structlog

from sysmon import schema
from sysmon.protocol.admin import QubeInfo
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import AlertBatch, PendingAlerts, QubeState, ScrapeResult, State, TickOutcome
from sysmon.store.daily import WriteError, append_rows, ensure_day, locked, truncate_to
from sysmon.store.state import load_state, save_state
from sysmon.transform.rows import build_tick_rows
from sysmon.transform.rules import Rule, evaluate


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


def _size(path: Path) -> int:
    return path.stat().st_size


def commit_tick(
    out_dir: Path,
    ts: datetime,
    results: Sequence[ScrapeResult],
    qubes: Sequence[QubeInfo] | None,
    xen: Sequence[DomainStats] = (),
    notes: Sequence[tuple[str, str]] = (),
    rules: Sequence[Rule] = (),
    *,
    sync: bool = True,
) -> TickOutcome:
    """Write one tick (``ts``: its wall-clock time) and advance the state.

    Never raises for a full disk or an I/O error: the outcome says what was
    dropped, and the next tick tries again.  ``sync`` fsyncs every file and
    the state (off only in simulations).
    """
    try:
        return _commit_tick(out_dir, ts, results, qubes, xen, notes, rules, sync=sync)
    except OSError as exc:
        reason = f"{exc.filename or out_dir}: {exc.strerror or exc}"
        structlog.get_logger().error("tick_commit_failed", error=reason)
        return TickOutcome(dropped={"tick (all files)": len(results)}, errors=(reason,))


def _commit_tick(
    out_dir: Path,
    ts: datetime,
    results: Sequence[ScrapeResult],
    qubes: Sequence[QubeInfo] | None,
    xen: Sequence[DomainStats],
    notes: Sequence[tuple[str, str]],
    rules: Sequence[Rule],
    *,
    sync: bool,
) -> TickOutcome:
    with locked(out_dir):
        state = recover(out_dir, load_state(out_dir))
        epoch = int(ts.timestamp())
        if epoch <= state.last_ts:
            last = datetime.fromtimestamp(state.last_ts, tz=UTC)
            return TickOutcome(
                skipped=f"rows up to {schema.format_ts(last)} are written already "
                "(clock behind, or a poll in the same second)"
            )
        built = build_tick_rows(ts, results, qubes, state.qubes, xen, notes)
        rule_notes, rule_state = evaluate(rules, float(epoch), built.rows, state.rules)
        if rule_notes:
            built = attrs.evolve(
                built,
                alerts=built.alerts
                + tuple(
                    AlertBatch(vm, (schema.ALERTS.format_row([ts, vm, msg]),), None)
                    for vm, msg in rule_notes
                ),
            )
        written: dict[str, int] = {}
        dropped: dict[str, int] = {}
        errors: list[str] = []

        def drop_all(reason: str) -> TickOutcome:
            for name, rows in built.rows.items():
                if rows:
                    dropped[name] = len(rows)
            alert_rows = sum(len(b.rows) for b in built.alerts)
            if alert_rows:
                dropped[schema.ALERTS.file_name] = alert_rows
            return TickOutcome(dropped=dropped, errors=(reason,))

        try:
            folder = ensure_day(out_dir, ts.astimezone(UTC).date())
        except OSError as exc:
            return drop_all(f"day folder: {exc.strerror or exc}")

        for daily in schema.DAILY_FILES:
            rows = built.rows.get(daily.file_name, ())
            if daily is schema.ALERTS or not rows:
                continue
            try:
                append_rows(folder / daily.file_name, daily, rows, sync=sync)
                written[daily.file_name] = len(rows)
            except WriteError as exc:
                written[daily.file_name] = exc.written
                dropped[daily.file_name] = len(rows) - exc.written
                errors.append(str(exc))

        qubes_state: dict[str, QubeState] = {**state.qubes, **built.states}
        alerts_path = folder / schema.ALERTS.file_name
        try:
            if built.alerts:
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
                    State(qubes=qubes_state, last_ts=epoch, pending=pending, rules=rule_state),
                    sync=sync,
                )
                all_rows = [row for batch in built.alerts for row in batch.rows]
                try:
                    append_rows(alerts_path, schema.ALERTS, all_rows, sync=sync)
                    written[schema.ALERTS.file_name] = len(all_rows)
                except WriteError as exc:
                    errors.append(str(exc))
                    # Keep whole qubes only: a qube whose rows are cut is
                    # filed again, entire, at its next poll.
                    size = start + sum(len(r) for r in all_rows[: exc.written])
                    keep, kept_rows, rows_seen = start, 0, 0
                    for batch, (_vm, batch_end, _state) in zip(built.alerts, commits, strict=True):
                        rows_seen += len(batch.rows)
                        if batch_end <= size:
                            keep, kept_rows = batch_end, rows_seen
                    truncate_to(alerts_path, keep)
                    written[schema.ALERTS.file_name] = kept_rows
                    dropped[schema.ALERTS.file_name] = len(all_rows) - kept_rows
                on_disk = _size(alerts_path)
                qubes_state.update(
                    {vm: st for vm, end_, st in commits if end_ <= on_disk and st is not None}
                )
            save_state(
                out_dir,
                State(qubes=qubes_state, last_ts=epoch, pending=None, rules=rule_state),
                sync=sync,
            )
        except OSError as exc:
            errors.append(f"state: {exc.strerror or exc}")
        return TickOutcome(
            written=written, dropped=dropped, errors=tuple(errors), restarted=built.restarted
        )
