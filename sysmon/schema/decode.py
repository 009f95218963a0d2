"""The one way back from a daily file to rows: bounded, for files anyone may have written.

A daily file in a day folder or an archive may have been written by an older
sysmon, cut by a crash, or planted by someone with the vault's disk.  Every
command reads it here: a line is read at most :data:`MAX_LINE` characters at a
time (a line without end is read in pieces and skipped), a record longer than
that (lines that each end inside a quoted field) is unreadable, a row of the wrong
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
import operator
import re
from collections.abc import Callable, Iterator
from typing import IO, cast

import attrs

from sysmon.schema.files import DailyFile, Role, parse_ts

#: The longest line read whole; rows are written under 4 KiB, and a file of
#: an older sysmon has none longer.
MAX_LINE = 1 << 16


@attrs.define
class Skipped:
    """Rows a decoder left out, by reason."""

    unreadable: int = 0  # the csv module could not read it (a field past its limit), or
    # a record longer than the longest line
    wrong_width: int = 0  # not as many cells as the header names
    bad_time: int = 0  # a ts cell that is not a UTC time
    not_sysmon: int = 0  # files whose header has no ts and vm, or names a column twice

    @property
    def rows(self) -> int:
        """Rows left out, whatever the reason."""
        return self.unreadable + self.wrong_width + self.bad_time


@attrs.frozen
class DecodedRow:
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
) -> Iterator[DecodedRow]:
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
        cls, readline: Callable[[], str], daily: DailyFile, skipped: Skipped
    ) -> _Opened | None:
        """Past the header; None (a file counted ``not_sysmon``) if it is not sysmon's.

        ``readline`` gives the file's next line, or piece of one: "" at its end.
        """
        reader = csv.reader(iter(readline, ""))
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


class _Record:
    """The csv module's lines, a record of more than ``limit`` characters refused.

    The csv module keeps a record's fields until it ends, and lines that each end
    inside a quoted field (``","`` and a newline, again and again) are one record
    of a field a line: its list would grow with the file.  The reader counts
    from 0 (:attr:`fed`) before each record; past ``limit`` the record is a
    :class:`csv.Error` (what it had is dropped) and the next line starts another.
    """

    def __init__(self, readline: Callable[[], str], limit: int) -> None:
        self.readline = readline
        self.limit = limit
        self.fed = 0

    def __call__(self) -> str:
        line = self.readline()
        self.fed += len(line)
        if self.fed > self.limit:
            self.fed = 0
            raise csv.Error(f"a record longer than {self.limit} characters")
        return line


def _rows(text: IO[str], daily: DailyFile, skipped: Skipped, max_line: int) -> Iterator[DecodedRow]:
    record = _Record(functools.partial(text.readline, max_line), max_line)
    opened = _Opened.read(record, daily, skipped)
    if opened is None:
        return
    reader, width, positions = opened.reader, opened.width, opened.positions
    ts_at, complete = opened.ts_at, opened.complete
    seconds = _Seconds()
    while True:
        record.fed = 0
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
            yield DecodedRow(ts, tuple(cells))
        else:
            yield DecodedRow(ts, tuple(cells[i] if i >= 0 else "" for i in positions))


#: Rows a batch holds: a few MB of cells.
BATCH_ROWS = 32768
#: Rows read before their width is checked: at most this many max_line pieces held.
_PART = 64
#: Characters the batch decoder reads ahead at a time.
READ_AHEAD = 1 << 18
#: What the csv module reads otherwise than a split at commas would, in a row of
#: unquoted cells: a quote, a line's end other than "\n", NUL.  sysmon writes none
#: of them in a row of numbers (it quotes only cells that need it).
_SPECIAL = '"\r\0'
_LINE_END = re.compile("[\r\n]")
#: Characters of lines the csv module must read split at once (in C) when each is
#: short: a planted file of lone CRs is a line per character.
_SPLIT = 1 << 13


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
    read_ahead: int = READ_AHEAD,
) -> Iterator[Batch]:
    """The rows of ``raw`` as :func:`decode_untrusted` reads and skips them, in batches.

    ``raw`` stays open: its opener closes it.
    """
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    try:
        yield from _batches(_Lines(text, max_line, read_ahead), daily, skipped, rows)
    finally:
        text.detach()


class _Lines:
    """A text read ahead: its lines as ``readline(max_line)`` gives them, or plain lines at once.

    Plain lines -- whole, shorter than ``max_line``, without a character of
    :data:`_SPECIAL` -- are what sysmon writes: the csv module would read
    each as its split at commas, so they are split so, in C, many at a time.
    Anything else goes through the csv module, as before.
    """

    def __init__(self, text: IO[str], max_line: int, read_ahead: int) -> None:
        self.text = text
        self.limit = max_line
        self.read_ahead = max(read_ahead, 1)
        self.buffer = ""
        self.at = 0
        self.eof = False
        # Where in the buffer each character of _SPECIAL is next (its length: nowhere);
        # -1: not looked for yet.  Each found once, not again at every line.
        self.marks = [-1] * len(_SPECIAL)
        # A cell of a plain line is shorter than max_line: within the csv module's limit?
        self.fast = max_line <= csv.field_size_limit()
        # Lines split at once for the csv module, not yet read: ``split[taken:]``.
        self.split: list[str] = []
        self.taken = 0

    def _fill(self) -> None:
        """At least ``max_line`` characters and one more ahead (to see "\r\n"), or the rest."""
        while len(self.buffer) - self.at <= self.limit and not self.eof:
            more = self.text.read(self.read_ahead)
            self.eof = not more
            self.buffer = self.buffer[self.at :] + more
            self.at = 0
            self.marks = [-1] * len(_SPECIAL)

    def readline(self) -> str:
        """The next line or piece of one, as ``TextIOWrapper.readline(max_line)`` (newline="")."""
        if self.taken < len(self.split):
            self.taken += 1
            return self.split[self.taken - 1]
        self._fill()
        buffer, at = self.buffer, self.at
        # The lines of the next few KiB to their last end, split as readline would split
        # them (StringIO's newline="" is the same rule, in C), if none is a piece.  A
        # "\r" is an end if a character follows it in the window: a "\n" there is found.
        window = min(at + min(self.read_ahead, _SPLIT), len(buffer))
        split_end = max(buffer.rfind("\n", at, window), buffer.rfind("\r", at, window - 1)) + 1
        if split_end > at:
            split = io.StringIO(buffer[at:split_end], newline="").readlines()
            if max(map(len, split)) <= self.limit:
                self.at, self.split, self.taken = split_end, split, 1
                return split[0]
        stop = min(at + self.limit, len(buffer))
        end = _LINE_END.search(buffer, at, stop)
        if end is None:
            self.at = stop
        elif buffer.startswith("\r\n", end.start()):
            self.at = min(end.start() + 2, stop)
        else:
            self.at = end.end()
        return buffer[at : self.at]

    def plain(self) -> list[str]:
        """The plain lines next, without their "\n"; none if the next line is not plain."""
        if not self.fast or self.taken < len(self.split):
            return []  # lines split for the csv module come first
        self._fill()
        buffer, at = self.buffer, self.at
        end = buffer.rfind("\n", at) + 1
        # A find per character, in C (memchr), is quicker than a pattern's search.
        marks = self.marks
        for k, char in enumerate(_SPECIAL):
            if marks[k] < at:
                found = buffer.find(char, at)
                marks[k] = found if found >= 0 else len(buffer)
        special = min(marks)
        if special < end:
            end = buffer.rfind("\n", at, special) + 1
        if end <= at:
            return []
        lines = buffer[at : end - 1].split("\n")
        if max(map(len, lines)) >= self.limit:  # read in pieces: not plain
            lines = list(itertools.takewhile(lambda line: len(line) < self.limit, lines))
            end = at + sum(map(len, lines)) + len(lines)
        self.at = end
        return lines


class _Parts:
    """A file's rows a part (:data:`_PART` rows) at a time: plain lines split, others by csv.

    Rows come out in the file's order; rows of the wrong width are counted and
    dropped a part at a time, so pieces of planted endless lines (``max_line``
    characters each) never pile up.
    """

    def __init__(self, lines: _Lines, opened: _Opened, record: _Record, skipped: Skipped) -> None:
        self.lines = lines
        self.reader = opened.reader
        self.width = opened.width
        self.record = record
        self.skipped = skipped
        # Plain lines split, not yet given: ``plain[taken:]``; ``whole``: all of the width.
        self.plain: list[list[str]] = []
        self.taken = 0
        self.whole = True
        self.ended = False

    def bulk(self, wanted: int) -> list[list[str]]:
        """Whole parts of plain rows of the width, up to ``wanted`` rows rounded up to a part."""
        if not self.whole or len(self.plain) - self.taken < _PART:
            return []
        n = min(-(-wanted // _PART) * _PART, (len(self.plain) - self.taken) // _PART * _PART)
        self.taken += n
        return self.plain[self.taken - n : self.taken]

    def part(self) -> list[list[str]]:
        """The next part's rows of the width; :attr:`ended` once the file's end is in it."""
        part: list[list[str]] = []
        error = False
        while len(part) < _PART and not error:
            if self.taken == len(self.plain):
                self.plain = list(map(str.split, self.lines.plain(), itertools.repeat(",")))
                self.taken = 0
                self.whole = set(map(len, self.plain)) <= {self.width}
            if self.taken < len(self.plain):
                more = self.plain[self.taken : self.taken + _PART - len(part)]
                self.taken += len(more)
                part += more
                continue
            # The rest of the part through the csv module (plain lines in it too).
            error = self._records(part)
            if len(part) < _PART and not error:  # the end of the file
                self.ended = True
                break
        if part and set(map(len, part)) != {self.width}:
            kept = [cells for cells in part if len(cells) == self.width]
            self.skipped.wrong_width += len(part) - len(kept)
            return kept
        return part

    def _records(self, part: list[list[str]]) -> bool:
        """The csv module's records onto ``part`` until it is full; True on an unreadable one.

        Short of full without an error: the file ended.  A record at a time, each counted from 0
        against the limit; what was read before an unreadable record stays in the part.
        """
        try:
            while len(part) < _PART:
                self.record.fed = 0
                cells = next(self.reader, None)
                if cells is None:
                    return False
                part.append(cells)
        except csv.Error:
            self.skipped.unreadable += 1
            return True
        return False


def _batches(lines: _Lines, daily: DailyFile, skipped: Skipped, rows: int) -> Iterator[Batch]:
    record = _Record(lines.readline, lines.limit)
    opened = _Opened.read(record, daily, skipped)
    if opened is None:
        return
    parts = _Parts(lines, opened, record, skipped)
    times = _Times(opened.ts_at, rows, skipped)
    positions = opened.positions
    while not parts.ended:
        batch: list[list[str]] = []
        while len(batch) < rows and not parts.ended:
            batch += parts.bulk(rows - len(batch)) or parts.part()
        ts, batch = times(batch)
        if not opened.complete:
            batch = [[cells[i] if i >= 0 else "" for i in positions] for cells in batch]
        if batch:
            yield Batch(ts, batch)


#: The longest time text kept from one batch for the next (sysmon writes 20 characters).
_TS_KEPT = 32


class _Times:
    """A batch's times in epoch seconds; its rows whose time is not one dropped, counted."""

    def __init__(self, ts_at: int, rows: int, skipped: Skipped) -> None:
        self.ts_at = ts_at
        self.skipped = skipped
        # One entry per tick: a day's, not a stranger's millions.
        self.most = 4 * rows
        self.known: dict[str, int | None] = {}

    def __call__(self, batch: list[list[str]]) -> tuple[list[int], list[list[str]]]:
        known = self.known
        texts = list(map(operator.itemgetter(self.ts_at), batch))
        long = []
        for new in set(texts) - known.keys():  # a tick's rows share their time
            when = parse_ts(new)
            known[new] = int(when.timestamp()) if when is not None else None
            if len(new) > _TS_KEPT:
                long.append(new)
        ts = list(map(known.__getitem__, texts))
        # Kept for the next batches: a time as the writer writes it (20 characters),
        # not a planted cell as long as a line (kept, each would hold its line).
        for text in long:
            del known[text]
        if len(known) > self.most:
            known.clear()
        if None not in ts:
            return cast("list[int]", ts), batch
        kept_at = [i for i, t in enumerate(ts) if t is not None]
        self.skipped.bad_time += len(ts) - len(kept_at)
        return [t for t in ts if t is not None], [batch[i] for i in kept_at]
