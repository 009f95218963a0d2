"""``sysmon status``: what a person checks first, from the files alone."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import attrs

from sysmon import schema
from sysmon.protocol.text import strip_controls
from sysmon.records import Status
from sysmon.store.daily import day_dir, day_folders

STALE_INTERVALS = 3
#: A row this far ahead of now means a wrong clock, then or now.
FUTURE_TOLERANCE = 60


@attrs.frozen
class QubeLine:
    """One qube's line of the table."""

    vm: str
    status: str
    last_ts: str
    failures_today: int
    cpu_user: str
    mem_used_kb: str


@attrs.frozen
class StatusReport:
    """Newest row per file, per-qube summary, and whether the collector is alive."""

    folder: Path | None
    file_ages: dict[str, float | None]
    qubes: tuple[QubeLine, ...]
    healthy: bool
    reason: str
    skipped_rows: int = 0


def latest_day(out_dir: Path, now: datetime | None = None) -> Path | None:
    """The newest day folder, not after ``now``'s day when there is one.

    A folder from the future is left by a clock that ran ahead; the folder
    being written now is the one to judge.
    """
    days = day_folders(out_dir)
    if now is not None:
        days = [d for d in days if d <= now.date()] or days
    return day_dir(out_dir, days[-1]) if days else None


def _last_ts(path: Path) -> datetime | None:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(tail[1:] if len(tail) > 1 else tail):
        ts = schema.parse_ts(line.split(b",", 1)[0].decode("ascii", errors="replace"))
        if ts is not None:
            return ts
    return None


@attrs.define
class _Reader:
    """Rows of the day's files, skipping (and counting) what cannot be read."""

    skipped: int = 0

    def count_skipped(self) -> None:
        self.skipped += 1

    def rows(self, path: Path) -> Iterator[dict[str, str]]:
        try:
            with path.open(newline="", encoding="utf-8", errors="replace") as f:
                reader = csv.reader(f)
                header = next(reader, [])
                for cells in schema.readable_rows(reader, self.count_skipped):
                    row = dict(zip(header, cells, strict=False))
                    yield {k: strip_controls(v) for k, v in row.items() if k}
        except OSError:
            return


def build_status(out_dir: Path, now: datetime, interval: float) -> StatusReport:
    """Read the newest day folder and judge whether rows are still coming."""
    folder = latest_day(out_dir, now)
    if folder is None:
        return StatusReport(None, {}, (), healthy=False, reason=f"no day folder under {out_dir}")
    ages: dict[str, float | None] = {}
    for daily in schema.DAILY_FILES:
        ts = _last_ts(folder / daily.file_name)
        ages[daily.file_name] = None if ts is None else (now - ts).total_seconds()
    last: dict[str, dict[str, str]] = {}
    failures: Counter[str] = Counter()
    reader = _Reader()
    for row in reader.rows(folder / schema.SCRAPES.file_name):
        vm = row.get("vm", "?")
        last[vm] = row
        if row.get("status") not in {Status.OK, Status.SKIPPED}:
            failures[vm] += 1
    values: dict[str, dict[str, str]] = {}
    for row in reader.rows(folder / schema.SYSTEM.file_name):
        values[row.get("vm", "?")] = row
    qubes = tuple(
        QubeLine(
            vm=vm,
            status=row.get("status", ""),
            last_ts=row.get("ts", ""),
            failures_today=failures.get(vm, 0),
            cpu_user=values.get(vm, {}).get("cpu_user", ""),
            mem_used_kb=values.get(vm, {}).get("mem_used_kb", ""),
        )
        for vm, row in sorted(last.items())
    )
    newest = ages.get(schema.SCRAPES.file_name)
    limit = STALE_INTERVALS * interval
    healthy, reason = False, "no poll recorded yet"
    if newest is not None and newest < -FUTURE_TOLERANCE:
        reason = f"the newest row is {-newest:.0f} s in the future: is the clock right?"
    elif newest is not None and newest > limit:
        reason = f"nothing written for {newest:.0f} s (more than {STALE_INTERVALS} intervals)"
    elif newest is not None:
        healthy, reason = True, "rows are coming"
    return StatusReport(folder, ages, qubes, healthy, reason, skipped_rows=reader.skipped)


def render_status(report: StatusReport) -> str:
    """The report as a terminal table."""
    if report.folder is None:  # nothing written yet: no tables to show
        return (
            f"NOT OK: {report.reason}\n"
            "(has `sysmon run` started? `systemctl status sysmon`; see docs/deploy.md)"
        )
    lines = [f"folder: {report.folder}", ""]
    lines.append(f"{'file':<16} {'newest row':>12}")
    for name, age in report.file_ages.items():
        shown = "-" if age is None else f"{age:.0f} s ago"
        lines.append(f"{name:<16} {shown:>12}")
    lines.append("")
    lines.append(
        f"{'qube':<32} {'status':<10} {'last poll':<21} {'fails':>5} "
        f"{'cpu_user':>8} {'mem_used_kb':>12}"
    )
    lines.extend(
        f"{q.vm[:32]:<32} {q.status:<10} {q.last_ts:<21} {q.failures_today:>5} "
        f"{q.cpu_user or '-':>8} {q.mem_used_kb or '-':>12}"
        for q in report.qubes
    )
    lines.append("")
    if report.skipped_rows:
        rows = "1 row" if report.skipped_rows == 1 else f"{report.skipped_rows} rows"
        lines.append(f"{rows} could not be read (a field over the csv module's limit)")
    lines.append(("OK: " if report.healthy else "NOT OK: ") + report.reason)
    return "\n".join(lines)


def main(out_dir: Path, interval: float, now: datetime) -> int:
    """``sysmon status``: exit 1 when nothing was written for three intervals."""
    report = build_status(out_dir, now, interval)
    print(render_status(report))
    return 0 if report.healthy else 1
