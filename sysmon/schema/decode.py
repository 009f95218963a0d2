"""The one way back from a daily file to rows: bounded, for files anyone may have written.

A daily file in a day folder or an archive may have been written by an older
sysmon, cut by a crash, or planted by someone with the vault's disk.  Every
command reads it here: a line is read at most :data:`MAX_LINE` characters at a
time (a line without end is read in pieces and skipped), a row of the wrong
width or with a time that is not one is skipped, and each skip is counted by
its reason.  Rows come out in the description's column order, a column the
file lacks (an older layout) as an empty cell, as text: a reader converts only
the cells it uses (:meth:`Column.number`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
from collections.abc import Iterator
from typing import IO

import attrs

from sysmon.schema.files import DailyFile, Role, parse_ts

#: The longest line read whole; rows are written under 4 KiB, and a file of
#: an older sysmon has none longer.
MAX_LINE = 1 << 16


@attrs.define
class Skipped:
    """Rows a decoder left out, by reason."""

    unreadable: int = 0  # the csv module could not read it (a field past its limit)
    wrong_width: int = 0  # not as many cells as the header names
    bad_time: int = 0  # a ts cell that is not a UTC time
    not_sysmon: int = 0  # files whose header has no ts and vm, or names a column twice

    @property
    def rows(self) -> int:
        """Rows left out, whatever the reason."""
        return self.unreadable + self.wrong_width + self.bad_time


@attrs.frozen
class Row:
    """One decoded row: its time in epoch seconds, its cells in the description's order."""

    ts: int
    cells: tuple[str, ...]


def seconds(text: str) -> int | None:
    """A ``ts`` cell as epoch seconds (a fraction cut off), None if it is not a UTC time."""
    when = parse_ts(text)
    return int(when.timestamp()) if when is not None else None


class _Seconds:
    """``ts`` cells to epoch seconds; every row of a tick shares its text."""

    def __init__(self) -> None:
        self.text = ""
        self.value: int | None = None

    def __call__(self, text: str) -> int | None:
        if text != self.text:
            self.text = text
            self.value = seconds(text)
        return self.value


def header_positions(daily: DailyFile, header: list[str]) -> list[int] | None:
    """Where each described column is in a file with ``header`` (-1: absent).

    None when it is not a daily file: no ``ts`` or ``vm``, or a name twice.
    """
    names = [name.strip() for name in header]
    key = [c.name for c in daily.of_role(Role.TIME, Role.KEY)]
    if len(set(names)) != len(names) or any(k not in names for k in key):
        return None
    where = {name: i for i, name in enumerate(names)}
    return [where.get(name, -1) for name in daily.names]


def decode_untrusted(
    raw: IO[bytes], daily: DailyFile, skipped: Skipped, *, max_line: int = MAX_LINE
) -> Iterator[Row]:
    """The rows of ``raw`` (a daily file described by ``daily``), skipping what is not one."""
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    try:
        yield from _rows(text, daily, skipped, max_line)
    finally:
        # ``raw`` stays the caller's to close: a dropped wrapper would close it, warning.
        with contextlib.suppress(ValueError):
            text.detach()


@attrs.frozen
class _Opened:
    """A daily file past its header: the rows' reader and where the columns are."""

    reader: Iterator[list[str]]
    width: int
    #: Where each of the description's columns is in a row (-1: the file lacks it).
    positions: list[int]
    ts_at: int
    complete: bool  # the description's columns, in its order: no reordering needed

    @classmethod
    def read(
        cls, text: IO[str], daily: DailyFile, skipped: Skipped, max_line: int
    ) -> _Opened | None:
        """Past the header; None (a file counted ``not_sysmon``) if it is not sysmon's."""
        reader = csv.reader(iter(functools.partial(text.readline, max_line), ""))
        try:
            header = next(reader, None)
        except csv.Error:
            header = None
        positions = header_positions(daily, header) if header else None
        if header is None or positions is None:
            skipped.not_sysmon += 1
            return None
        return cls(
            reader,
            len(header),
            positions,
            positions[daily.names.index("ts")],
            positions == list(range(len(daily.names))),
        )


def _rows(text: IO[str], daily: DailyFile, skipped: Skipped, max_line: int) -> Iterator[Row]:
    opened = _Opened.read(text, daily, skipped, max_line)
    if opened is None:
        return
    reader, width, positions = opened.reader, opened.width, opened.positions
    ts_at, complete = opened.ts_at, opened.complete
    seconds = _Seconds()
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error:
            skipped.unreadable += 1
            continue
        if len(cells) != width:
            skipped.wrong_width += 1
            continue
        ts = seconds(cells[ts_at])
        if ts is None:
            skipped.bad_time += 1
            continue
        if complete:
            yield Row(ts, tuple(cells))
        else:
            yield Row(ts, tuple(cells[i] if i >= 0 else "" for i in positions))


#: Rows a batch holds: a few MB of cells.
BATCH_ROWS = 32768
#: Rows read before their width is checked: at most this many max_line pieces held.
_PART = 64


@attrs.frozen
class Batch:
    """Rows decoded together: their times in epoch seconds, their cells in the description's order.

    The same rows :func:`decode_untrusted` gives, a batch at a time, for a reader that
    works a column at a time (the export): no object per row.
    """

    ts: list[int]
    rows: list[list[str]]


def decode_batches_untrusted(
    raw: IO[bytes],
    daily: DailyFile,
    skipped: Skipped,
    *,
    max_line: int = MAX_LINE,
    rows: int = BATCH_ROWS,
) -> Iterator[Batch]:
    """The rows of ``raw`` as :func:`decode_untrusted` reads and skips them, in batches.

    ``raw`` stays open: its opener closes it.
    """
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    try:
        yield from _batches(text, daily, skipped, max_line, rows)
    finally:
        text.detach()


def _batches(
    text: io.TextIOWrapper, daily: DailyFile, skipped: Skipped, max_line: int, rows: int
) -> Iterator[Batch]:
    opened = _Opened.read(text, daily, skipped, max_line)
    if opened is None:
        return
    reader, width, positions = opened.reader, opened.width, opened.positions
    ts_at, complete = opened.ts_at, opened.complete
    known: dict[str, int | None] = {}
    ended = False
    while not ended:
        batch: list[list[str]] = []
        while len(batch) < rows and not ended:
            # A few rows at a time, so that pieces of planted endless lines (max_line
            # characters each, of the wrong width) are dropped before they pile up.
            part: list[list[str]] = []
            try:
                part.extend(itertools.islice(reader, _PART))  # the csv module's loop
            except csv.Error:  # what was read before it stays in the part
                skipped.unreadable += 1
            else:
                ended = len(part) < _PART
            if part and set(map(len, part)) != {width}:
                kept = [cells for cells in part if len(cells) == width]
                skipped.wrong_width += len(part) - len(kept)
                part = kept
            batch += part
        texts = [cells[ts_at] for cells in batch]
        for new in set(texts) - known.keys():  # a tick's rows share their time
            when = parse_ts(new)
            known[new] = int(when.timestamp()) if when is not None else None
        ts = [known[t] for t in texts]
        if None in ts:
            kept_at = [i for i, t in enumerate(ts) if t is not None]
            skipped.bad_time += len(ts) - len(kept_at)
            batch = [batch[i] for i in kept_at]
            ts = [ts[i] for i in kept_at]
        if len(known) > 4 * rows:  # one entry per tick: a day's, not a stranger's millions
            known.clear()
        if not complete:
            batch = [[cells[i] if i >= 0 else "" for i in positions] for cells in batch]
        if batch:
            yield Batch([t for t in ts if t is not None], batch)
