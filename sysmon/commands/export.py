"""``sysmon export``: day folders and vault archives into the time-series engines' formats.

sys-monitor has no network, so its days leave only as ``monitor-DAY.tgz`` in the
vault.  This turns them -- read in place, never extracted -- into what
VictoriaMetrics (``/api/v1/import/prometheus``), ``promtool tsdb
create-blocks-from openmetrics`` (Prometheus), InfluxDB and Loki take in:

- ``openmetrics``: every numeric cell a sample (an empty cell none), families
  together (each family is spooled to a file of its own while the days are
  read once, then written whole), ``# EOF`` at the end;
- ``influx``: one line per row, a measurement per file;
- ``alerts-jsonl``: each alert a push body for Loki.

The ``host`` label is the archive's own (its ``sysmon-meta.json``) or a day
folder's out_dir's ``host-id`` (made at sys-monitor's first tick), unless
``--host`` says otherwise; the ``host_name`` setting, when set, is a
``host_name`` label beside it.  A ledger of (host, day, content hash) makes a
second export of the same day -- or of the vault's ``monitor-DAY.2.tgz`` copy
-- write nothing.  Everything read is untrusted: a qube naming more than
:data:`MAX_LABEL_VALUES` interfaces or mounts in a day, or a day with more
than :data:`MAX_QUBES` qubes, gets no more series; the rows left out are
counted in ``sysmon_export_cut_rows``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import IO, TextIO

import attrs

from sysmon import schema
from sysmon.commands.progress import Progress
from sysmon.store import identity
from sysmon.store.archive import (
    META_NAME,
    ArchiveError,
    archive_day,
    day_members,
    day_units,
)
from sysmon.transform import exposition

FORMATS = ("openmetrics", "influx", "alerts-jsonl")
#: Interfaces (network.csv) or filesystems (disk.csv) one qube may name in a day.
MAX_LABEL_VALUES = 32
#: Qubes one host's day may hold (as the collector's own cap on domains).
MAX_QUBES = 1024
#: Characters read at a time from a daily file (a row sysmon writes is < 4 KiB).
MAX_LINE = 1 << 16
#: What a host label may be: what a qube name or a host identity can be.
_HOST = identity.HOST_LABEL
_FILES = {s.file_name: s for s in schema.DAILY_FILES}


class ExportError(Exception):
    """Nothing can be exported; the message says why."""


#: What a damaged archive (or an unreadable file) raises while it is read.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, OSError)


@attrs.frozen
class Day:
    """One day to export: where it is, its host, and a hash of what it holds."""

    path: Path
    day: date
    host: str
    digest: str
    #: The readable name beside the identity (the ``host_name`` setting), if any.
    host_name: str | None = None


def _read_meta(opener: Callable[[], IO[bytes]]) -> dict[str, object]:
    with opener() as f:
        text = f.read(4096)
    try:
        meta = json.loads(text)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def describe(path: Path, host: str | None, progress: Progress | None = None) -> Day:
    """The day at ``path``: its date, host (``host`` first, else its metadata), content hash.

    Raises:
        ExportError: no day in the name, or no host anywhere.
    """
    day = archive_day(path.name) if path.is_file() else None
    if path.is_dir():
        try:
            day = date.fromisoformat(path.name)
        except ValueError:
            day = None
    if day is None:
        raise ExportError(f"{path}: not a day folder or a monitor-YYYY-MM-DD.tgz")
    digest = hashlib.sha256()
    meta: dict[str, object] = {}
    progress = progress or Progress.quiet()
    read = 0
    try:
        for name, opener in day_members(path):
            if name == META_NAME:
                meta = _read_meta(opener)
            if name not in _FILES:
                continue
            digest.update(name.encode() + b"\0")
            with opener() as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    read += len(chunk)
                    progress.update(f"reading {day}", read, "bytes")
    except _UNREADABLE as exc:
        raise ExportError(f"{path}: cannot be read ({exc})") from None
    host_name = meta.get("host_name")
    try:
        if host is None:
            named = meta.get("host")
            host = named if isinstance(named, str) else None
            if host is None and path.is_dir():
                # sys-monitor makes it at its first tick (a folder of before: --host).
                host = identity.read_host_id(path.parent)
        if host_name is None and path.is_dir():
            host_name = identity.read_host_name(path.parent)
    except identity.IdentityError as exc:
        raise ExportError(f"{exc}: name the host with --host NAME") from None
    except OSError as exc:
        raise ExportError(f"{path}: the host identity cannot be read ({exc})") from None
    if host is None or not _HOST.fullmatch(host):
        raise ExportError(
            f"{path}: no host identity (an archive made before sysmon-meta.json, or a "
            "folder without its out_dir's host-id): name it with --host NAME"
        )
    if host_name is not None and not (isinstance(host_name, str) and _HOST.fullmatch(host_name)):
        raise ExportError(f"{path}: its host_name is not a label ({META_NAME} was replaced)")
    return Day(path, day, host, digest.hexdigest(), host_name)


class Ledger:
    """The days exported before: (host, day, content hash), one per line."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.done: set[tuple[str, str, str]] = set()
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                match line.split("\t"):
                    case [host, day, digest]:
                        self.done.add((host, day, digest))

    def seen(self, day: Day) -> bool:
        """Exported before, with the same content."""
        return (day.host, day.day.isoformat(), day.digest) in self.done

    def record(self, days: Iterable[Day]) -> None:
        """Remember ``days`` (after their export was written whole)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            for day in days:
                f.write(f"{day.host}\t{day.day.isoformat()}\t{day.digest}\n")
            f.flush()
            os.fsync(f.fileno())


def default_ledger() -> Path:
    """``$XDG_STATE_HOME/sysmon/export-ledger.tsv`` (``~/.local/state`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "sysmon" / "export-ledger.tsv"


@attrs.define
class _Caps:
    """Label values a day has given so far, per qube; the rows left out."""

    qubes: set[str] = attrs.field(factory=set)
    values: dict[tuple[str, str], set[tuple[str, ...]]] = attrs.field(factory=dict)
    cut: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    last_ts: int = 0

    def allow(self, file_name: str, vm: str, label_values: tuple[str, ...]) -> bool:
        if vm not in self.qubes:
            if len(self.qubes) >= MAX_QUBES:
                self.cut[(vm[:64], file_name)] += 1
                return False
            self.qubes.add(vm)
        if not label_values:
            return True
        seen = self.values.setdefault((vm, file_name), set())
        if label_values not in seen:
            if len(seen) >= MAX_LABEL_VALUES:
                self.cut[(vm, file_name)] += 1
                return False
            seen.add(label_values)
        return True


def _rows(
    opener: Callable[[], IO[bytes]], on_skip: Callable[[], None]
) -> Iterator[tuple[dict[str, int], list[str]]]:
    """A daily file's rows, with its header's column positions.

    A column the file lacks reads as empty; a row of the wrong width is
    skipped and told.
    """
    with opener() as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        # A line at most MAX_LINE characters at a time: a planted line without end
        # is read in pieces (its field then past the csv module's limit: skipped).
        reader = csv.reader(iter(functools.partial(text.readline, MAX_LINE), ""))
        header = next(reader, None)
        if not header or "ts" not in header or "vm" not in header:
            return
        width = len(header)
        index = {column: i for i, column in enumerate(header)}
        for cells in schema.readable_rows(reader, on_skip):
            if len(cells) != width:
                on_skip()
                continue
            cells.append("")  # what a column the file lacks reads as
            yield index, cells


class _Seconds:
    """``ts`` cells to epoch seconds; every row of a tick shares its text."""

    def __init__(self) -> None:
        self.text = ""
        self.value: int | None = None

    def __call__(self, text: str) -> int | None:
        if text != self.text:
            when = schema.parse_ts(text)
            self.text = text
            self.value = int(when.timestamp()) if when is not None else None
        return self.value


@attrs.define
class Counts:
    """What an export wrote and left out."""

    days: int = 0
    skipped_days: int = 0
    samples: int = 0
    unreadable: int = 0
    cut: int = 0

    def unreadable_row(self) -> None:
        """One more row that could not be read."""
        self.unreadable += 1


@attrs.frozen
class _Column:
    """One family's column in a file: where its cells are, how they are written."""

    family: exposition.Family
    name: str  # the family's name
    sample: str  # the sample's name


_COLUMNS = {
    file_name: tuple(
        _Column(f, f.name, f.sample_name) for f in exposition.FAMILIES if f.file == file_name
    )
    for file_name in exposition.LABELS
}


class _Writer:
    """Lines per family, written in batches (a day is millions of samples)."""

    def __init__(self, sink: Callable[[str, str], None]) -> None:
        self.sink = sink
        self.batches: dict[str, list[str]] = {}

    def __call__(self, family: str, text: str) -> None:
        batch = self.batches.setdefault(family, [])
        batch.append(text)
        if len(batch) >= 4096:
            self.sink(family, "".join(batch))
            batch.clear()

    def flush(self) -> None:
        for family, batch in self.batches.items():
            if batch:
                self.sink(family, "".join(batch))
                batch.clear()


def _export_day(day: Day, fmt: str, write: Callable[[str, str], None], counts: Counts) -> None:
    """Write one day's samples: ``write(family, text)``."""
    caps = _Caps()
    seconds = _Seconds()
    host = day.host
    # Beside the host label when the day has a name: the series without one are as before.
    named = {"host_name": day.host_name} if day.host_name else {}
    for name, opener in day_members(day.path):
        if (name == "alerts.csv") != (fmt == "alerts-jsonl") or (
            fmt != "alerts-jsonl" and name not in exposition.LABELS
        ):
            continue
        extra = exposition.LABELS.get(name, ())
        label_texts: dict[tuple[str, ...], str] = {}
        one_hot = [o for o in exposition.ONE_HOT if o[1] == name]
        where: dict[str, int] = {}
        positions: list[tuple[_Column, int]] = []
        for index, cells in _rows(opener, counts.unreadable_row):
            if index is not where:  # the file's columns, found once
                where = index
                positions = [(c, index.get(c.family.column, -1)) for c in _COLUMNS.get(name, ())]
            ts = seconds(cells[index["ts"]])
            vm = cells[index["vm"]]
            if ts is None or not vm:
                counts.unreadable += 1
                continue
            caps.last_ts = max(caps.last_ts, ts)
            label_values = tuple(cells[index.get(label, -1)] for label in extra)
            if not caps.allow(name, vm, label_values):
                continue
            if fmt == "alerts-jsonl":
                stream = {"host": host, **named, "vm": vm, "job": "sysmon"}
                msg = cells[index.get("msg", -1)]
                write("", exposition.loki_line(stream, ts * 1_000_000_000, msg))
                counts.samples += 1
                continue
            pairs = {"host": host, **named, "vm": vm, **dict(zip(extra, label_values, strict=True))}
            if fmt == "influx":
                counts.samples += _influx_row(name, pairs, index, cells, extra, ts, write)
                continue
            key = (vm, *label_values)
            label_text = label_texts.get(key)
            if label_text is None:
                label_text = label_texts[key] = exposition.labels(pairs)
            for column, at in positions:
                value = column.family.value(cells[at])
                if value is not None:
                    write(column.name, f"{column.sample}{label_text} {value} {ts}\n")
                    counts.samples += 1
            for family, _file, column_name, label, choices in one_hot:
                if (word := cells[index.get(column_name, -1)]) in choices:
                    for choice in choices:
                        hot = exposition.labels({**pairs, label: choice})
                        write(family, f"{family}{hot} {int(choice == word)} {ts}\n")
                        counts.samples += 1
    for (vm, file_name), n in caps.cut.items():
        counts.cut += n
        if fmt == "openmetrics":
            pairs = {"host": host, **named, "vm": vm, "file": file_name}
            cut = exposition.CUT_FAMILY
            write(cut, f"{cut}{exposition.labels(pairs)} {n} {caps.last_ts}\n")


def _influx_row(
    name: str,
    tags: dict[str, str],
    index: dict[str, int],
    cells: list[str],
    extra: tuple[str, ...],
    ts: int,
    write: Callable[[str, str], None],
) -> int:
    fields = {}
    for column in _FILES[name].columns:
        if column.name in {"ts", "vm", *extra}:
            continue
        cell = cells[index.get(column.name, -1)]
        value = exposition.influx_field(column.kind, cell) if cell else None
        if value is not None:
            fields[column.name] = value
    if not fields:
        return 0
    write("", exposition.influx_line(f"sysmon_{name.removesuffix('.csv')}", tags, fields, ts))
    return 1


def export(
    paths: list[Path],
    out: TextIO,
    *,
    fmt: str = "openmetrics",
    host: str | None = None,
    since: date | None = None,
    until: date | None = None,
    ledger: Ledger | None = None,
) -> Counts:
    """Export the days under ``paths`` to ``out``; return what was written.

    Raises:
        ExportError: a path that holds no day, a day without a host, an archive
            that cannot be read.
    """
    chosen, skipped = plan(paths, fmt=fmt, host=host, since=since, until=until, ledger=ledger)
    return write_days(chosen, out, fmt=fmt, ledger=ledger, skipped_days=skipped)


def plan(
    paths: list[Path],
    *,
    fmt: str,
    host: str | None,
    since: date | None,
    until: date | None,
    ledger: Ledger | None,
    progress: Progress | None = None,
) -> tuple[list[Day], int]:
    """The days to export, and how many the ledger (or a copy) left out.

    Every day is read whole here (its hash), so a damaged archive is found
    before anything is written.

    Raises:
        ExportError: as :func:`export`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if host is not None and not _HOST.fullmatch(host):
        raise ExportError(f"--host {host!r}: letters, digits, '_', '.', '-' (64 at most)")
    try:
        units = day_units(paths)
    except ArchiveError as exc:
        raise ExportError(str(exc)) from None
    days = [describe(path, host, progress) for path in units]
    days = [
        d for d in days if (since is None or d.day >= since) and (until is None or d.day <= until)
    ]
    skipped = 0
    chosen: list[Day] = []
    for day in days:
        if ledger is not None and ledger.seen(day):
            skipped += 1
        elif any((d.host, d.day, d.digest) == (day.host, day.day, day.digest) for d in chosen):
            skipped += 1  # the same day twice in one run (a .2 copy)
        else:
            chosen.append(day)
    return chosen, skipped


def write_days(
    chosen: list[Day],
    out: TextIO,
    *,
    fmt: str,
    ledger: Ledger | None,
    skipped_days: int = 0,
    progress: Progress | None = None,
) -> Counts:
    """Write the days :func:`plan` chose to ``out``; then remember them in ``ledger``."""
    counts = Counts(skipped_days=skipped_days)
    progress = progress or Progress.quiet()
    what = "samples" if fmt == "openmetrics" else "lines"
    stage = ""
    with tempfile.TemporaryDirectory(prefix="sysmon-export-") as spool_dir, ExitStack() as stack:
        spools: dict[str, TextIO] = {}

        def write(family: str, text: str) -> None:
            progress.update(stage, counts.samples, what)  # a batch: thousands of lines
            if fmt != "openmetrics":
                out.write(text)
                return
            if family not in spools:
                path = Path(spool_dir) / f"{len(spools)}.om"
                spools[family] = stack.enter_context(path.open("w+", encoding="utf-8"))
            spools[family].write(text)

        batched = _Writer(write)
        for n, day in enumerate(chosen, 1):
            stage = f"day {n}/{len(chosen)} {day.day}"
            _export_day(day, fmt, batched, counts)
            counts.days += 1
        batched.flush()
        if fmt == "openmetrics":
            _write_families(out, spools, progress)
    out.flush()
    if ledger is not None:
        ledger.record(chosen)
    return counts


def _write_families(out: TextIO, spools: dict[str, TextIO], progress: Progress) -> None:
    """Each family whole, in the table's order, then ``# EOF``."""
    order = [(f.name, f.kind, f.help) for f in exposition.FAMILIES]
    order += [
        (name, "gauge", f"1 when the row's {column} is the label's")
        for name, _, column, _, _ in exposition.ONE_HOT
    ]
    order.append(
        (
            exposition.CUT_FAMILY,
            "gauge",
            "rows left out: a qube named too many label values in a day",
        )
    )
    total = sum(spool.tell() for spool in spools.values())  # each is at its end
    done = 0
    for name, kind, help_text in order:
        spool = spools.get(name)
        if spool is None:
            continue
        out.write(exposition.openmetrics_header(name, kind, help_text))
        spool.seek(0)
        while chunk := spool.read(1 << 20):
            out.write(chunk)
            done += len(chunk)  # characters: the bytes but for a name's UTF-8
            progress.update("writing the families", done, "bytes", total=total)
    out.write("# EOF\n")


def _write_file(
    output: Path,
    chosen: list[Day],
    *,
    fmt: str,
    ledger: Ledger | None,
    skipped_days: int,
    progress: Progress | None = None,
) -> Counts:
    """Write ``output`` whole or not at all.

    A temporary file beside it is renamed over it only when complete: a
    failure leaves ``output`` as it was, and no partial file.
    """
    fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            counts = write_days(
                chosen, out, fmt=fmt, ledger=None, skipped_days=skipped_days, progress=progress
            )
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if ledger is not None:
        ledger.record(chosen)  # only once the file is in place
    return counts


def main(
    paths: list[Path],
    *,
    fmt: str,
    host: str | None,
    start: str | None,
    end: str | None,
    output: Path | None,
    ledger: Path | None,
    use_ledger: bool,
) -> int:
    """``sysmon export``: exit 2 with the reason when nothing can be exported."""
    try:
        since = date.fromisoformat(start) if start else None
        until = date.fromisoformat(end) if end else None
    except ValueError as exc:
        print(f"sysmon export: --from/--to: {exc}", file=sys.stderr)
        return 2
    book = Ledger(ledger or default_ledger()) if use_ledger else None
    # On a terminal only: a pipe or a log gets the summary line alone.
    progress = Progress("sysmon export")
    try:
        chosen, skipped = plan(
            paths, fmt=fmt, host=host, since=since, until=until, ledger=book, progress=progress
        )
    except ExportError as exc:
        progress.close()
        print(f"sysmon export: {exc}", file=sys.stderr)
        return 2
    if not chosen and skipped and book is not None:
        progress.close()
        # Not an empty export over the last one: nothing is written at all.
        print(
            f"sysmon export: nothing to export: all {skipped} days were exported before "
            f"(ledger {book.path}; --no-ledger exports them again)",
            file=sys.stderr,
        )
        return 1
    try:
        if output is None:
            counts = write_days(
                chosen, sys.stdout, fmt=fmt, ledger=book, skipped_days=skipped, progress=progress
            )
        else:
            counts = _write_file(
                output, chosen, fmt=fmt, ledger=book, skipped_days=skipped, progress=progress
            )
    except OSError as exc:
        progress.close()
        print(f"sysmon export: {output or 'stdout'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    progress.close()
    what = "samples" if fmt == "openmetrics" else "lines"
    print(
        f"sysmon export: {counts.days} days, {counts.samples:,} {what}; "
        f"{counts.skipped_days} days exported before (ledger), "
        f"{counts.unreadable:,} rows unreadable, {counts.cut:,} rows past the label caps",
        file=sys.stderr,
    )
    return 0
