"""Reading day folders and archives for the report: every file once, a day per process.

Uses pandas' C reader (Debian packages python3-pandas; ``pip install
'sysmon[report]'``): the csv module read a 30-qube week in 45-53 s, this
reads it in a few (``bench/report.py`` runs both).  Everything read is
untrusted text: cells are parsed as numbers or kept as text to be escaped,
never interpreted.  A row that cannot be read -- wrong number of cells, a
cell longer than any row sysmon writes, a time that is not one or outside
1970-2199 -- is counted in :attr:`Data.skipped`, never guessed.
"""

from __future__ import annotations

import concurrent.futures
import csv
import functools
import io
import itertools
import os
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import attrs

from sysmon import schema
from sysmon.commands.progress import Progress
from sysmon.records import Status
from sysmon.store.archive import ArchiveError, archive_day, day_members, day_units


class ReportError(Exception):
    """The report cannot be made; the message says why."""


#: What a damaged archive (or an unreadable file) raises while it is read.
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, OSError)


def import_pandas() -> Any:
    """Pandas (and numpy), or a clear :class:`ReportError`."""
    try:
        import pandas as pd  # noqa: PLC0415
    except ImportError:
        raise ReportError(
            "sysmon report needs pandas and matplotlib: pip install 'sysmon[report]', "
            "or apt-get install python3-pandas python3-matplotlib"
        ) from None
    return pd


def parse_when(text: str) -> float:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS][Z]`` (UTC) as epoch seconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"not a UTC date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    elif when.utcoffset():
        raise ReportError(f"not a UTC date or time: {text!r}")
    return when.timestamp()


#: Times a report can draw: 1970 up to 2200 (matplotlib has no year 0 or 10000).
FIRST_T, LAST_T = 0.0, 7_258_118_400.0
#: Lines one qube may have in one chart (mounts); a qube inventing names gets no more.
MAX_SERIES = 8
#: No cell of a row sysmon writes is longer: a longer one is not ours.
MAX_CELL = schema.MAX_ROW_BYTES
#: Rows parsed at a time, so that a huge file someone planted is read in bounded memory.
CHUNK_ROWS = 200_000
#: Bytes of one line read at most (a row sysmon writes is under 4 KiB): a longer one
#: sends the file to the csv module, which reads it in pieces and skips it.
MAX_LINE = 1 << 20

#: What the page needs of each file (besides ts and vm): text and number columns.
_TEXT = {"network.csv": ("if",), "disk.csv": ("mount",), "scrapes.csv": ("status",)}
_NUMBERS = {
    "system.csv": ("cpu_user", "cpu_system", "mem_used_kb"),
    "network.csv": ("rx_bytes", "tx_bytes"),
    "connections.csv": ("tcp_established",),
    "disk.csv": ("used_kb", "avail_kb"),
    "xen.csv": ("cpu_usage", "memory_kb"),
    "scrapes.csv": (),
    "alerts.csv": (),
}
#: The files the page reads (qubes.csv it does not).
FILES = tuple(_NUMBERS)
_SCHEMAS = {daily.file_name: daily for daily in schema.DAILY_FILES}
_NUMBER_KINDS = frozenset({"int", "dec1", "dec2"})


@attrs.define(eq=False)
class Series:
    """Points of one line: times (epoch s) and values, numpy arrays in time order."""

    t: Any
    v: Any


@attrs.define
class Data:
    """What the report shows, per qube (disk: per qube and mount)."""

    cpu: dict[str, Series] = attrs.field(factory=dict)
    mem: dict[str, Series] = attrs.field(factory=dict)
    rx: dict[str, Series] = attrs.field(factory=dict)
    tx: dict[str, Series] = attrs.field(factory=dict)
    tcp: dict[str, Series] = attrs.field(factory=dict)
    disk: dict[tuple[str, str], Series] = attrs.field(factory=dict)
    xen_cpu: dict[str, Series] = attrs.field(factory=dict)
    xen_mem: dict[str, Series] = attrs.field(factory=dict)
    failures: dict[str, Series] = attrs.field(factory=dict)
    health: dict[str, Counter[str]] = attrs.field(factory=dict)
    alerts: list[tuple[float, str, str]] = attrs.field(factory=list)
    rows: int = 0
    #: Rows that could not be read (see the module's docstring).
    skipped: int = 0
    #: Rows of mounts past :data:`MAX_SERIES` of a qube, not drawn.
    cut_series: int = 0

    def lines(self) -> dict[str, dict[Any, Series]]:
        """Every drawn metric by name."""
        return {
            name: getattr(self, name)
            for name in ("cpu", "mem", "rx", "tx", "tcp", "disk", "xen_cpu", "xen_mem", "failures")
        }


@attrs.define
class _Part:
    """What one day folder or archive gave: plain arrays, cheap to send back from a worker."""

    #: metric -> key -> (times, values), keys in the order they first came.
    series: dict[str, dict[Any, tuple[Any, Any]]] = attrs.field(factory=dict)
    #: qube -> (times, rx, tx): rates within the day (KiB/s), interfaces summed.
    net: dict[str, tuple[Any, Any, Any]] = attrs.field(factory=dict)
    #: (qube, interface) -> (time, rx, tx): its first and last counters of the day.
    net_first: dict[tuple[str, str], tuple[float, float, float]] = attrs.field(factory=dict)
    net_last: dict[tuple[str, str], tuple[float, float, float]] = attrs.field(factory=dict)
    health: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    alerts: list[tuple[float, str, str]] = attrs.field(factory=list)
    rows: int = 0
    skipped: int = 0


class _LineTooLongError(Exception):
    """A line longer than any sysmon writes: pandas' reader would hold it whole."""


class _CountLines(io.RawIOBase):
    """A byte stream that counts the lines read through it (the rows pandas skips).

    It stops at a line longer than :data:`MAX_LINE` bytes.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw, self.lines, self.last = raw, 0, b"\n"
        self.open_line = 0  # bytes of the line not yet ended

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(min(len(buffer), MAX_LINE))
        buffer[: len(data)] = data
        if data:
            self.lines += data.count(b"\n")
            self.last = data[-1:]
            first, last = data.find(b"\n"), data.rfind(b"\n")
            if first < 0:
                self.open_line += len(data)
            elif self.open_line + first > MAX_LINE:
                self.open_line += first
            else:
                self.open_line = len(data) - last - 1
            if self.open_line > MAX_LINE:
                raise _LineTooLongError
        return len(data)

    def data_rows(self) -> int:
        """Lines after the header (one not ended by a newline counts too)."""
        return max(0, self.lines + (self.last != b"\n") - 1)


def _text_columns(name: str) -> tuple[str, ...]:
    return ("ts", "vm", *_TEXT.get(name, ()), *(("msg",) if name == "alerts.csv" else ()))


def _chunks(pd: Any, name: str, opener: Callable[[], IO[bytes]]) -> Iterator[tuple[Any, int]]:
    """The file's rows in chunks, numbers as floats; then the count of rows left out.

    A number cell that is not one (a file someone else wrote) makes the file
    read again with the numbers as text, each cell then parsed alone (NaN
    when it is not a number), the rows already given left out.  A file cut
    inside a quoted cell is read on by the csv module, row by row.
    """
    numbers, text = _NUMBERS[name], _text_columns(name)
    kinds = {c.name: c.kind for c in _SCHEMAS[name].columns}
    done = 0  # rows given by a strict pass that met a cell that is not a number
    for strict in (True, False):
        with opener() as raw:
            columns = [c.strip() for c in raw.readline().decode("utf-8", "replace").split(",")]
            if "ts" not in columns or "vm" not in columns or len(set(columns)) < len(columns):
                return  # not a sysmon file (pandas refuses duplicate names too)
            raw.seek(0)
            counted = _CountLines(raw)
            # Every column is parsed (pandas checks a row's width only then), as
            # a number where the schema says so; only those the page needs are kept.
            numeric = {c for c in columns if kinds.get(c) in _NUMBER_KINDS} if strict else set()
            parsed = 0
            try:
                for whole in pd.read_csv(
                    io.BufferedReader(counted),
                    dtype={c: (float if c in numeric else object) for c in columns},
                    keep_default_na=False,
                    na_values={c: [""] for c in numeric},
                    on_bad_lines="skip",
                    engine="c",
                    encoding="utf-8",
                    encoding_errors="replace",
                    chunksize=CHUNK_ROWS,
                ):
                    # A column the file lacks (an older schema) reads as empty.
                    picked = {c: whole.get(c, "") for c in text}
                    for c in numbers:
                        if c not in whole:
                            picked[c] = float("nan")
                        elif strict:
                            picked[c] = whole[c]
                        else:
                            picked[c] = pd.to_numeric(whole[c], errors="coerce")
                    chunk = pd.DataFrame(picked, index=whole.index)
                    parsed += len(chunk)
                    if parsed > done:
                        yield chunk.iloc[max(0, len(chunk) - (parsed - done)) :], 0
            except (pd.errors.ParserError, _LineTooLongError):
                # Cut inside a quoted cell, or a line without end: the csv module
                # reads on, row by row, a bounded piece of a line at a time.
                yield from _row_by_row(pd, name, opener, max(parsed, done))
                return
            except ValueError:
                if strict:
                    done = parsed
                    continue
                # Read as text, nothing should fail; if it does, what came before stands.
            yield None, counted.data_rows() - max(parsed, done)
            return


def _row_by_row(
    pd: Any, name: str, opener: Callable[[], IO[bytes]], given: int
) -> Iterator[tuple[Any, int]]:
    """The file's rows after the first ``given``, read by the csv module.

    For a damaged file pandas' reader stops at; rows it cannot read are counted.
    """
    numbers, text = _NUMBERS[name], _text_columns(name)
    unread = 0

    def skip() -> None:
        nonlocal unread
        unread += 1

    with opener() as raw:
        stream = io.TextIOWrapper(raw, "utf-8", errors="replace", newline="")
        reader = csv.reader(iter(functools.partial(stream.readline, 1 << 16), ""))
        header = next(reader, [])
        width, index = len(header), {c: i for i, c in enumerate(header)}
        rows: list[list[str]] = []
        for n, cells in enumerate(schema.readable_rows(reader, skip)):
            if n < given:
                continue
            if len(cells) != width:
                unread += 1
                continue
            rows.append([cells[index[c]] if c in index else "" for c in (*text, *numbers)])
    if rows:
        chunk = pd.DataFrame(rows, columns=[*text, *numbers], dtype=object)
        for column in numbers:
            chunk[column] = pd.to_numeric(chunk[column], errors="coerce")  # "" -> NaN
        yield chunk, 0
    yield None, unread


def _times(pd: Any, np: Any, ts: Any) -> Any:
    """Epoch seconds of a ts column, NaN where it is not a time in 1970-2199."""
    codes, uniques = pd.factorize(ts)
    parsed = np.full(len(uniques) + 1, np.nan)
    for i, text in enumerate(uniques):
        when = schema.parse_ts(str(text))
        if when is not None and FIRST_T <= (t := when.timestamp()) < LAST_T:
            parsed[i] = t
    return parsed[codes]  # code -1 (none) reads the NaN at the end


def _too_long(pd: Any, column: Any) -> Any:
    """Rows whose cell is longer than any sysmon writes."""
    codes, uniques = pd.factorize(column)
    long = [i for i, text in enumerate(uniques) if len(str(text)) > MAX_CELL]
    return pd.Series(codes, index=column.index).isin(long)


def read_unit(unit: Path, vms: set[str] | None, start: float, end: float) -> _Part:
    """One day folder or archive, reduced to what the charts need."""
    pd = import_pandas()
    import numpy as np  # noqa: PLC0415

    part = _Part()
    pieces: dict[str, list[Any]] = {}
    try:
        for name, opener in day_members(unit):
            if name not in FILES:
                continue
            for chunk, unread in _chunks(pd, name, opener):
                if chunk is None:
                    part.skipped += unread
                else:
                    pieces.setdefault(name, []).append(
                        _usable(pd, np, part, name, chunk, vms, start, end)
                    )
    except UNREADABLE as exc:
        raise ReportError(f"{unit}: cannot be read ({exc})") from None
    for name, chunks in pieces.items():
        _reduce(pd, np, part, name, pd.concat(chunks, ignore_index=True))
    return part


def _usable(
    pd: Any,
    np: Any,
    part: _Part,
    name: str,
    chunk: Any,
    vms: set[str] | None,
    start: float,
    end: float,
) -> Any:
    """The chunk's rows that can be read, of the qubes and times asked for, with ``t``."""
    long = _too_long(pd, chunk["vm"])
    for column in _text_columns(name)[2:]:
        long |= chunk[column].str.len().fillna(0).gt(MAX_CELL)
    part.skipped += int(long.sum())
    readable = chunk[~long]
    part.rows += len(readable)
    if vms:
        readable = readable[readable["vm"].isin(vms)]
    t = _times(pd, np, readable["ts"])
    part.skipped += int(np.isnan(t).sum())
    readable = readable.assign(t=t)
    return readable[(readable["t"] >= start) & (readable["t"] <= end)]


def _finite(np: Any, *columns: Any) -> Any:
    ok = np.ones(len(columns[0]), dtype=bool)
    for column in columns:
        ok &= np.isfinite(column.to_numpy(dtype=float))
    return ok


def _split(frame: Any, keys: str | list[str]) -> dict[Any, tuple[Any, Any]]:
    """A frame of ``t`` and ``v`` as arrays per key, keys in the order they first came."""
    return {
        key: (group["t"].to_numpy(dtype=float), group["v"].to_numpy(dtype=float))
        for key, group in frame.groupby(keys, sort=False)
    }


def _reduce(pd: Any, np: Any, part: _Part, name: str, rows: Any) -> None:
    """Keep what the charts need of one file's readable rows."""

    def keep(metric: str, frame: Any, value: Any, keys: str | list[str] = "vm") -> None:
        part.series[metric] = _split(frame.assign(v=value), keys)

    if name == "system.csv":
        both = rows[_finite(np, rows["cpu_user"], rows["cpu_system"])]
        keep("cpu", both, both["cpu_user"] + both["cpu_system"])
        used = rows[_finite(np, rows["mem_used_kb"])]
        keep("mem", used, used["mem_used_kb"] / 1024)
    elif name == "network.csv":
        counters = rows[(rows["if"] != "lo") & _finite(np, rows["rx_bytes"], rows["tx_bytes"])]
        _day_rates(pd, np, part, counters)
    elif name == "connections.csv":
        tcp = rows[_finite(np, rows["tcp_established"])]
        keep("tcp", tcp, tcp["tcp_established"])
    elif name == "disk.csv":
        used, avail = rows["used_kb"], rows["avail_kb"]
        disk = rows[_finite(np, used, avail) & ((used + avail) > 0).to_numpy()]
        disk = disk.assign(mount=disk["mount"].where(disk["mount"] != "", "?"))
        keep(
            "disk",
            disk,
            100 * disk["used_kb"] / (disk["used_kb"] + disk["avail_kb"]),
            ["vm", "mount"],
        )
    elif name == "xen.csv":
        xen = rows[_finite(np, rows["cpu_usage"], rows["memory_kb"])]
        keep("xen_cpu", xen, xen["cpu_usage"])
        keep("xen_mem", xen, xen["memory_kb"] / 1024)
    elif name == "scrapes.csv":
        status = rows["status"].where(rows["status"] != "", "?")
        part.health.update(Counter(zip(rows["vm"], status, strict=True)))
        failed = rows[~status.isin([Status.OK.value, Status.SKIPPED.value])]
        keep("failures", failed, 1.0)
    elif name == "alerts.csv":
        part.alerts.extend(zip(rows["t"], rows["vm"], rows["msg"], strict=True))


def _day_rates(pd: Any, np: Any, part: _Part, counters: Any) -> None:
    """Rates within one day per qube and time, all interfaces summed.

    Also each interface's first and last counters, to join rates across days.
    """
    keys = pd.factorize(counters["vm"] + "\0" + counters["if"])[0]
    order = np.argsort(keys, kind="stable")  # each interface's samples, in file order
    key, t = keys[order], counters["t"].to_numpy()[order]
    rx, tx = counters["rx_bytes"].to_numpy()[order], counters["tx_bytes"].to_numpy()[order]
    same = np.zeros(len(key), dtype=bool)
    same[1:] = key[1:] == key[:-1]
    dt, drx, dtx = (np.diff(a, prepend=np.nan) for a in (t, rx, tx))
    # Rates only from two samples in order with counters that did not go
    # back (a restart or a reset): no negative spikes.
    with np.errstate(invalid="ignore"):
        ok = same & (dt > 0) & (drx >= 0) & (dtx >= 0)
    vm, t = counters["vm"].to_numpy()[order][ok], t[ok]
    rx, tx = drx[ok] / dt[ok] / 1024, dtx[ok] / dt[ok] / 1024
    ends = counters[["vm", "if", "t", "rx_bytes", "tx_bytes"]].assign(key=keys)
    for side, keep in ((part.net_first, "first"), (part.net_last, "last")):
        for vm_, iface, t_, rx_, tx_, _key in ends.drop_duplicates("key", keep=keep).itertuples(
            index=False
        ):
            side[(vm_, iface)] = (t_, rx_, tx_)
    if not len(t):
        return
    code, names = pd.factorize(vm)
    by_time = np.lexsort((t, code))  # stable: each sum adds in the order the rates came
    code, t = code[by_time], t[by_time]
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (t[1:] != t[:-1])])
    rx, tx = np.add.reduceat(rx[by_time], starts), np.add.reduceat(tx[by_time], starts)
    code, t = code[starts], t[starts]
    bounds = np.flatnonzero(np.r_[True, code[1:] != code[:-1], True])
    for a, b in itertools.pairwise(bounds):
        part.net[str(names[code[a]])] = (t[a:b], rx[a:b], tx[a:b])


def units(paths: Iterable[Path]) -> list[Path]:
    """Day folders and archives, one per day (a folder wins over its archive), by day."""
    try:
        return day_units(paths)
    except ArchiveError as exc:
        raise ReportError(str(exc)) from None


def load(
    paths: Iterable[Path],
    vms: set[str] | None,
    start: float,
    end: float,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Data:
    """Read every day once, several days at a time; keep what the charts need.

    Days are joined in order as they come back, so memory holds the week's
    points once, not every day's rows.
    """
    import_pandas()
    import numpy as np  # noqa: PLC0415

    days = units(paths)
    workers = min(workers or os.cpu_count() or 1, len(days))
    merged = _Merge(np)
    progress = progress or Progress.quiet()
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            n = len(days)
            parts = pool.map(read_unit, days, [vms] * n, [start] * n, [end] * n)
            for part in _each_day(days, parts, progress):
                merged.add(part)
    else:
        for part in _each_day(days, (read_unit(day, vms, start, end) for day in days), progress):
            merged.add(part)
    return merged.data()


class _Merge:
    """Days joined in order: series extended, mounts capped, rates joined across midnight."""

    def __init__(self, np: Any) -> None:
        self.np = np
        self.result = Data()
        self.pieces: dict[str, dict[Any, list[tuple[Any, Any]]]] = {}
        self.mounts: Counter[str] = Counter()
        self.last_seen: dict[tuple[str, str], tuple[float, float, float]] = {}

    def add(self, part: _Part) -> None:
        """The next day."""
        result = self.result
        result.rows += part.rows
        result.skipped += part.skipped
        result.alerts.extend(part.alerts)
        for (vm, word), n in part.health.items():
            result.health.setdefault(vm, Counter())[word] += n
        for name, by_key in part.series.items():
            pieces = self.pieces.setdefault(name, {})
            for key, (t, v) in by_key.items():
                if name == "disk" and key not in pieces:
                    if self.mounts[key[0]] >= MAX_SERIES:
                        result.cut_series += len(t)
                        continue
                    self.mounts[key[0]] += 1
                pieces.setdefault(key, []).append((t, v))
        day = dict(part.net)
        for key, sample in part.net_first.items():
            if key in self.last_seen and (rate := _rate(self.last_seen[key], sample)):
                day[key[0]] = self._add_at(day.get(key[0]), sample[0], rate)
        for vm, (t, rx, tx) in day.items():
            self.pieces.setdefault("rx", {}).setdefault(vm, []).append((t, rx))
            self.pieces.setdefault("tx", {}).setdefault(vm, []).append((t, tx))
        self.last_seen.update(part.net_last)

    def _add_at(
        self, day: tuple[Any, Any, Any] | None, t: float, rate: tuple[float, float]
    ) -> tuple[Any, Any, Any]:
        """A rate across midnight added to the day's sum at ``t`` (after the day's own)."""
        np = self.np
        if day is None:
            return np.array([t]), np.array([rate[0]]), np.array([rate[1]])
        times, rx, tx = day
        i = int(np.searchsorted(times, t))
        if i < len(times) and times[i] == t:
            rx, tx = rx.copy(), tx.copy()
            rx[i] += rate[0]
            tx[i] += rate[1]
            return times, rx, tx
        return np.insert(times, i, t), np.insert(rx, i, rate[0]), np.insert(tx, i, rate[1])

    def data(self) -> Data:
        """Every series in one piece."""
        np = self.np
        while self.pieces:  # each day's pieces let go as soon as they are joined
            name, by_key = self.pieces.popitem()
            joined = getattr(self.result, name)
            while by_key:
                key, parts = by_key.popitem()
                joined[key] = Series(
                    np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts])
                )
        return self.result


def _each_day(days: list[Path], parts: Iterable[_Part], progress: Progress) -> Iterator[_Part]:
    """``parts``, telling each day read and the rows so far (on a terminal)."""
    rows = 0
    for n, (unit, part) in enumerate(zip(days, parts, strict=False), 1):
        rows += part.rows
        day = archive_day(unit.name) if unit.is_file() else _folder_day(unit)
        progress.update(f"read day {n}/{len(days)}{f' {day}' if day else ''}", rows, "rows")
        yield part


def _folder_day(unit: Path) -> date | None:
    try:
        return date.fromisoformat(unit.name)
    except ValueError:
        return None


def _rate(
    prev: tuple[float, float, float], cur: tuple[float, float, float]
) -> tuple[float, float] | None:
    if cur[0] <= prev[0] or cur[1] < prev[1] or cur[2] < prev[2]:
        return None
    dt = cur[0] - prev[0]
    return (cur[1] - prev[1]) / dt / 1024, (cur[2] - prev[2]) / dt / 1024
