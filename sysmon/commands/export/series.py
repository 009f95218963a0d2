"""One day's daily files, read through the schema's decoder, as text in an engine's format.

Rows are read a batch at a time (:data:`BATCH` rows: bounded memory whatever
the day's size) and grouped by series (the qube and its label columns); each
column of a group is then checked in one pass and written whole -- a line
per sample for OpenMetrics, one line per series with its values and times as
arrays for VictoriaMetrics' JSON import, a line per row for Influx (its
fields checked a column at a time too).  Loki pushes are a line per row.
Everything read is untrusted: a qube naming more than
:data:`MAX_LABEL_VALUES` interfaces or mounts in a day, or a day with more
than :data:`MAX_QUBES` qubes (or as many disposables), gets no more series; the rows left out are
counted in ``sysmon_export_cut_rows``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import attrs

from sysmon import schema
from sysmon.protocol.names import looks_disposable
from sysmon.schema import DecodedRow
from sysmon.schema import exposition as ex
from sysmon.schema.decode import Batch, decode_batches_untrusted
from sysmon.store.days import day_members

#: Interfaces (network.csv) or filesystems (disk.csv) one qube may name in a day.
MAX_LABEL_VALUES = 32
#: Qubes one host's day may hold (as the collector's own cap on domains), and
#: disposables besides: any qube may start them, each named anew by dom0.
MAX_QUBES = 1024
#: Qubes a day's cut rows are counted under by name; past them, under :data:`OTHERS`.
MAX_CUT_NAMES = 64
#: The ``vm`` label of rows cut from qubes past :data:`MAX_CUT_NAMES` (no qube is named so).
OTHERS = "(others)"
#: Rows grouped at a time: a few MB (a day's export peaks near 64 MiB), series lines of hundreds.
BATCH = 16384
FORMATS = ("openmetrics", "victoriametrics", "influx", "alerts-jsonl")
_FILES = {d.file_name: d for d in schema.DAILY_FILES}


@attrs.frozen
class Day:
    """One day to export: where it is, its host, and a hash of what it holds."""

    path: Path
    day: date
    host: str
    digest: str
    #: The readable name beside the identity (the ``host_name`` setting), if any.
    host_name: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What the ledger keeps of it."""
        return (self.host, self.day.isoformat(), self.digest)


@attrs.define
class Counts:
    """What an export wrote and left out."""

    days: int = 0
    skipped_days: int = 0
    samples: int = 0
    unreadable: int = 0
    cut: int = 0

    def add(self, other: Counts) -> None:
        """Count ``other``'s too."""
        self.days += other.days
        self.samples += other.samples
        self.unreadable += other.unreadable
        self.cut += other.cut


@attrs.define
class _Caps:
    """Label values a day has given so far, per qube; the rows left out."""

    qubes: set[str] = attrs.field(factory=set)
    disposables: set[str] = attrs.field(factory=set)
    values: dict[tuple[str, str], set[tuple[str, ...]]] = attrs.field(factory=dict)
    cut: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    cut_names: set[str] = attrs.field(factory=set)
    last_ts: int = 0

    def allow(self, file_name: str, vm: str, label_values: tuple[str, ...], rows: int = 1) -> bool:
        """Whether the series may be written; if not, its ``rows`` are counted as cut.

        A series once refused stays refused (the sets only grow), so deciding once
        per group of rows is deciding for each of its rows.
        """
        # A churn of disposables (a hostile qube can start them all day) takes no
        # place of a qube started later: each kind has its own cap.
        known = self.disposables if looks_disposable(vm) else self.qubes
        if vm not in known:
            if len(known) >= MAX_QUBES:
                self._count_cut(vm[:64], file_name, rows)
                return False
            known.add(vm)
        if not label_values:
            return True
        seen = self.values.setdefault((vm, file_name), set())
        if label_values not in seen:
            if len(seen) >= MAX_LABEL_VALUES:
                self._count_cut(vm, file_name, rows)
                return False
            seen.add(label_values)
        return True

    def _count_cut(self, vm: str, file_name: str, rows: int) -> None:
        # A series per cut qube would be a series per disposable a churn starts.
        if vm not in self.cut_names:
            if len(self.cut_names) >= MAX_CUT_NAMES:
                vm = OTHERS
            else:
                self.cut_names.add(vm)
        self.cut[(vm, file_name)] += rows


@attrs.frozen
class _Layout:
    """Where a file's key, labels, values and states are in a decoded row."""

    daily: schema.DailyFile
    labels: tuple[str, ...]
    key: Callable[[Sequence[str]], str | tuple[str, ...]]
    values: tuple[tuple[int, ex.Family, str, str], ...]  # where, family, its name, sample
    states: tuple[tuple[int, ex.OneHot], ...]

    @classmethod
    def of(cls, daily: schema.DailyFile) -> _Layout:
        names = daily.names
        labels = daily.labels
        at = [names.index(label) for label in labels]
        # The qube and its labels as one tuple, got in C: a slice when they are side by side.
        # The qube, or the qube and its labels as a tuple: got in C.
        key = operator.itemgetter(1, *at) if at else operator.itemgetter(1)
        return cls(
            daily,
            labels,
            key,
            tuple(
                (names.index(f.column.name), f, f.name, f.sample_name)
                for f in ex.FAMILIES
                if f.daily is daily
            ),
            tuple((names.index(o.column.name), o) for o in ex.ONE_HOTS if o.daily is daily),
        )


_LAYOUTS = {name: _Layout.of(_FILES[name]) for name in ex.LABELS}


class _Series:
    """Text for one series' samples in the chosen format."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "victoriametrics"
        # The last group's times and their text: a batch's groups mostly share their ticks.
        self._ts: list[int] = []
        self._text: list[str] = []

    def labels(self, pairs: dict[str, str]) -> str:
        """A group's labels as text, made once for all of its columns."""
        return ex.json_members(pairs) if self.json else ex.labels(pairs)

    def text(self, sample: str, labels: str, values: Sequence[str], times: list[str]) -> str:
        """The series' line(s); ``labels``, ``times`` as :meth:`labels`, :meth:`times` made them."""
        if self.json:
            return ex.json_series(_json_name(sample) + labels, ",".join(values), times[0])
        return ex.openmetrics_samples(sample, labels, values, times)

    def joined(self, sample: str, labels: str, joined: str, times: list[str]) -> str:
        """JSON only: the series' line, its values comma-joined already."""
        return ex.json_series(_json_name(sample) + labels, joined, times[0])

    def times(self, ts: list[int]) -> list[str]:
        """The times' text, made once for every column of a group (or groups at the same ticks).

        OpenMetrics: each sample's seconds; JSON: one item, the comma-joined milliseconds.
        """
        if ts == self._ts:
            return self._text
        if not self.json:
            text = list(map(str, ts))
        elif min(ts) > 0:  # a ts of 0 would be "0000", not a JSON number
            text = ["000,".join(map(str, ts)) + "000"]
        else:
            text = [",".join(str(t * 1000) for t in ts)]
        self._ts, self._text = ts, text
        return text


@functools.cache
def _json_name(sample: str) -> str:
    """``"__name__":"sample",`` -- the members' first, before the group's labels."""
    return '"__name__":' + json.dumps(sample) + ","


def day_pieces(day: Day, fmt: str, counts: Counts) -> Generator[tuple[str, str], None, None]:
    """One day's text in ``fmt``, as (family, text): the family for OpenMetrics, else "".

    Closed early (``close()``, or dropped), it puts the collector back as it was.
    """
    with _collector_paused():
        yield from _pieces(day, fmt, counts)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a day is read, back as it was after.

    Rows are lists of strings, in no cycle, freed by their counts; but each batch
    makes tens of thousands, and the collector would scan them again and again
    (a sixth of the export's CPU).  Off for the consumer too, between pieces.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _pieces(day: Day, fmt: str, counts: Counts) -> Iterator[tuple[str, str]]:
    caps = _Caps()
    host: dict[str, str] = {"host": day.host}
    if day.host_name:  # beside the host label when the day has a name
        host["host_name"] = day.host_name
    wanted = {"alerts.csv"} if fmt == "alerts-jsonl" else set(ex.LABELS)
    for name, opener in day_members(day.path):
        if name not in wanted:
            continue
        daily = _FILES[name]
        skipped = schema.Skipped()
        with opener() as raw:
            if fmt == "alerts-jsonl":
                rows = schema.decode_untrusted(raw, daily, skipped)
                yield from _alerts(rows, host, caps, counts)
            elif fmt == "influx":
                influx = _Influx(_LAYOUTS[name])
                for batch in decode_batches_untrusted(raw, daily, skipped, rows=BATCH):
                    yield from influx.lines(batch, host, caps, counts)
            else:
                series = _Series(fmt)
                for batch in decode_batches_untrusted(raw, daily, skipped, rows=BATCH):
                    yield from _grouped(batch, _LAYOUTS[name], series, host, caps, counts)
        counts.unreadable += skipped.rows
    for (vm, file_name), n in caps.cut.items():
        counts.cut += n
        if fmt in {"openmetrics", "victoriametrics"}:
            series = _Series(fmt)
            labels = series.labels({**host, "vm": vm, "file": file_name})
            yield (
                ex.CUT_FAMILY,
                series.text(ex.CUT_FAMILY, labels, [str(n)], series.times([caps.last_ts])),
            )


def _groups(
    batch: Batch, layout: _Layout
) -> Iterator[tuple[str | tuple[str, ...], Callable[[Sequence[Any]], Sequence[Any]]]]:
    """The batch's series: each key, and what picks its rows' items out of a column.

    When each tick's rows come in the same order (scrapes.csv and qubes.csv
    of the realistic day), the keys repeat with a period P: every P-th row is
    a series, sliced in C.  Otherwise (a qube started or stopped in the batch,
    or the polls of a tick ended in another order) each row's index is noted
    under its key.
    """
    keys = list(map(layout.key, batch.rows))
    n = len(keys)
    try:
        period = keys.index(keys[0], 1)
    except ValueError:
        period = n
    if keys[period:] == keys[: n - period] and len(set(keys[:period])) == period:
        for j in range(period):
            yield keys[j], operator.itemgetter(slice(j, n, period))
        return
    groups: defaultdict[str | tuple[str, ...], list[int]] = defaultdict(list)
    for i, group in enumerate(keys):
        groups[group].append(i)
    for group, at_rows in groups.items():
        if len(at_rows) == 1:
            yield group, _one(at_rows[0])
        else:
            yield group, operator.itemgetter(*at_rows)


def _one(i: int) -> Callable[[Sequence[Any]], Sequence[Any]]:
    return lambda column: (column[i],)


def _allowed(
    batch: Batch,
    layout: _Layout,
    caps: _Caps,
    counts: Counts,
    usable: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, tuple[str, ...], list[int], Callable[[Sequence[Any]], Sequence[Any]]]]:
    """The batch's series the day may have: the qube, its label values, times, picker.

    Rows without a qube, or with a qube or label value not ``usable`` in the format,
    are counted unreadable before the caps (they take no label's place); a series
    past the caps is cut (counted).
    """
    for group, pick in _groups(batch, layout):
        vm, *label_values = (group,) if isinstance(group, str) else group
        if not vm or (usable and not all(map(usable, (vm, *label_values)))):
            counts.unreadable += len(pick(batch.ts))
            continue
        ts = list(pick(batch.ts))
        caps.last_ts = max(caps.last_ts, *ts)
        if caps.allow(layout.daily.file_name, vm, tuple(label_values), len(ts)):
            yield vm, tuple(label_values), ts, pick


def _grouped(
    batch: Batch,
    layout: _Layout,
    series: _Series,
    host: dict[str, str],
    caps: _Caps,
    counts: Counts,
) -> Iterator[tuple[str, str]]:
    # The batch's columns, transposed in C once; a series' cells are picked out of them.
    columns: list[tuple[str, ...]] = list(zip(*batch.rows, strict=True))
    for vm, label_values, ts, pick in _allowed(batch, layout, caps, counts):
        pairs = {**host, "vm": vm, **dict(zip(layout.labels, label_values, strict=True))}
        labels = series.labels(pairs)
        times = series.times(ts)
        for at, family, name, sample in layout.values:
            cells: Sequence[str] = pick(columns[at])
            if series.json and (joined := family.joined(cells)) is not None:
                counts.samples += len(cells)
                yield name, series.joined(sample, labels, joined, times)
                continue
            values: Sequence[str] | None = None if series.json else family.values(cells)
            if values is not None:
                text = series.text(sample, labels, values, times)
            elif not any(cells):  # empty cells all: a column this qube's source leaves out
                continue
            else:  # an empty cell (a first poll, a failed one) or a stranger's: each on its own
                convert = family.json_value if series.json else family.value
                converted = zip(map(convert, cells), ts, strict=True)
                kept = [(v, t) for v, t in converted if v is not None]
                if not kept:
                    continue
                values, some = [v for v, _ in kept], [t for _, t in kept]
                text = series.text(sample, labels, values, series.times(some))
            counts.samples += len(values)
            yield name, text
        for at, hot in layout.states:
            cells = pick(columns[at])
            some = ts
            if not set(cells) <= set(hot.choices):  # a word no state is: no sample for the row
                kept_at = [i for i, cell in enumerate(cells) if cell in hot.choices]
                if not kept_at:
                    continue
                cells = tuple(cells[i] for i in kept_at)
                some = [ts[i] for i in kept_at]
            some_times = series.times(some)
            for choice in hot.choices:
                # "1" for the choice, "0" for the others: dict.get, in C, cell by cell.
                values = list(map({choice: "1"}.get, cells, itertools.repeat("0")))
                hot_labels = series.labels({**pairs, hot.label: choice})
                yield hot.name, series.text(hot.name, hot_labels, values, some_times)
                counts.samples += len(values)


class _Influx:
    """A file's rows as Influx lines (CSV units): a measurement per file, a line per row.

    A group's tags are escaped once and each field column checked in one pass;
    the lines are then put together in C.  A row whose fields are all empty or
    not numbers has no line.
    """

    def __init__(self, layout: _Layout) -> None:
        self.layout = layout
        named = {schema.Role.TIME, schema.Role.KEY, schema.Role.LABEL}
        self.fields = [
            (i, column)
            for i, column in enumerate(layout.daily.columns)
            if column.role not in named and column.kind != "pct"
        ]
        self.measurement = f"sysmon_{layout.daily.stem}"
        # A series key's room: InfluxDB 1.x refuses a point whose key, 4 bytes and a
        # field key pass ex.INFLUX_MAX_KEY (any of the file's field keys, to be sure).
        self.room = ex.INFLUX_MAX_KEY - 4 - max(len(ex.influx_key(c.name)) for _, c in self.fields)

    def lines(
        self, batch: Batch, host: dict[str, str], caps: _Caps, counts: Counts
    ) -> Iterator[tuple[str, str]]:
        """The batch's lines, a group's at a time."""
        layout = self.layout
        columns: list[tuple[str, ...]] = list(zip(*batch.rows, strict=True))
        # A planted cell no tag can hold leaves its rows out.
        for vm, label_values, ts, pick in _allowed(batch, layout, caps, counts, ex.influx_tag):
            tags = {**host, "vm": vm, **dict(zip(layout.labels, label_values, strict=True))}
            if len(ex.influx_series(self.measurement, tags).encode()) > self.room:
                counts.unreadable += len(ts)  # a planted cell: a key InfluxDB refuses
                continue
            fields = self._fields(columns, pick)
            if not fields:
                continue
            text = ex.influx_lines(self.measurement, tags, fields, ts)
            counts.samples += len(fields) - fields.count(None)
            yield "", text

    def _fields(
        self, columns: list[tuple[str, ...]], pick: Callable[[Sequence[Any]], Sequence[Any]]
    ) -> list[str | None]:
        """Each row's fields (``a=1i,b=2.5``), in the file's order; None for a row with none."""
        fields: list[Sequence[str | None]] = []
        gaps = False
        for at, column in self.fields:
            texts = ex.influx_fields(column.kind, column.name, pick(columns[at]))
            if None in texts:
                if not any(texts):
                    continue  # a column this qube's source leaves out
                gaps = True
            fields.append(texts)
        if not fields:
            return []
        if not gaps:
            return list(map(",".join, zip(*fields, strict=True)))
        return [
            ",".join([text for text in row if text is not None]) or None
            for row in zip(*fields, strict=True)
        ]


def _alerts(
    rows: Iterator[DecodedRow], host: dict[str, str], caps: _Caps, counts: Counts
) -> Iterator[tuple[str, str]]:
    for row in rows:
        _, vm, msg = row.cells
        if not vm:
            counts.unreadable += 1
            continue
        if not caps.allow("alerts.csv", vm, ()):
            continue
        stream = {**host, "vm": vm, "job": "sysmon"}
        yield "", ex.loki_line(stream, row.ts * 1_000_000_000, msg)
        counts.samples += 1
