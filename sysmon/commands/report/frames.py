"""One daily file as columns, by the one decoder; numpy and pandas are its fast path.

:func:`sysmon.schema.decode_untrusted` says what a daily file holds: rows of
the header's width whose time is one, each skip counted.  Reading a 30-qube
week through it row by row takes a minute, so :func:`read_frame` first tries
a fast path that gives the same frame and the same counts: a file that is
plain -- UTF-8, no quote, carriage return or NUL, every line under the
decoder's limit and of the header's width -- is split at its commas by numpy,
its times compared a word at a time (one parse per run of a time), its other
text cells made by pandas' C reader and its numbers from their digits
(a cell not in a form the writer writes is read by :meth:`Column.number`
alone).  Any other file is read by the decoder, whole.  tests/test_frames.py
checks both give the same, cell by cell, for files anyone may have written.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from sysmon import schema
from sysmon.schema.decode import MAX_LINE, Skipped, decode_untrusted, header_positions, seconds

#: Bytes split at a time (a piece of a planted file is read in bounded memory).
BLOCK = 1 << 24
#: Digits a number cell may have to be read from its bytes (10**18 < 2**63).
_DIGITS = 18
#: A decimal whose digits make an integer under this is divided exactly by the FPU.
_EXACT = 2**53

#: A fast frame's ``attrs`` key: the longest line's bytes, newline included
#: (no cell is longer).  A decoded frame does not know it.
LONGEST = "longest_line"

Opener = Callable[[], IO[bytes]]
Ints = npt.NDArray[np.int64]


def text_names(daily: schema.DailyFile) -> tuple[str, ...]:
    """The columns a reader keeps as text: the qube, labels, states and free text."""
    roles = (schema.Role.KEY, schema.Role.LABEL, schema.Role.STATE, schema.Role.TEXT)
    return tuple(c.name for c in daily.of_role(*roles))


def read_frame(
    opener: Opener, daily: schema.DailyFile, values: Sequence[str], *, max_line: int = MAX_LINE
) -> tuple[Any, Skipped]:
    """The file's rows: ``t`` (epoch s), its text columns, the ``values`` as floats.

    A value cell that is not a number is NaN; the skips are the decoder's.
    """
    skipped = Skipped()
    frame = fast_frame(opener, daily, values, skipped, max_line=max_line)
    if frame is None:
        skipped = Skipped()
        frame = decoded_frame(opener, daily, values, skipped, max_line=max_line)
    return frame, skipped


def decoded_frame(
    opener: Opener,
    daily: schema.DailyFile,
    values: Sequence[str],
    skipped: Skipped,
    *,
    max_line: int = MAX_LINE,
) -> Any:
    """The frame of :func:`read_frame`, row by row from the decoder."""
    text = text_names(daily)
    text_at = [daily.names.index(name) for name in text]
    value_at = [(daily.names.index(name), daily.column(name)) for name in values]
    times: list[int] = []
    cells: list[list[str]] = [[] for _ in text]
    numbers: list[list[float]] = [[] for _ in values]
    with opener() as raw:
        for row in decode_untrusted(raw, daily, skipped, max_line=max_line):
            times.append(row.ts)
            for out, at in zip(cells, text_at, strict=True):
                out.append(row.cells[at])
            for into, (at, column) in zip(numbers, value_at, strict=True):
                number = column.number(row.cells[at])
                into.append(float("nan") if number is None else float(number))
    columns: dict[str, Any] = {"t": np.array(times, dtype=float)}
    columns.update({n: np.array(c, dtype=object) for n, c in zip(text, cells, strict=True)})
    columns.update({n: np.array(v, dtype=float) for n, v in zip(values, numbers, strict=True)})
    return _frame(columns)


def fast_frame(
    opener: Opener,
    daily: schema.DailyFile,
    values: Sequence[str],
    skipped: Skipped,
    *,
    max_line: int = MAX_LINE,
) -> Any | None:
    """The frame of :func:`read_frame` split by numpy, or None if the file is not plain."""
    with opener() as raw:
        header = raw.readline(max_line + 1)
        if not header.endswith(b"\n") or len(header) > max_line or not _plain(header):
            return None
        names = header[:-1].decode().split(",")
        positions = header_positions(daily, names)
        if positions is None:
            return None  # the decoder counts it
        where = dict(zip(daily.names, positions, strict=True))
        pieces = []
        rest = b""
        while True:
            data = raw.read(BLOCK)
            block = rest + data
            if data:
                cut = block.rfind(b"\n") + 1
                if cut == 0 and len(block) > max_line:
                    return None
                block, rest = block[:cut], block[cut:]
            elif block:
                block += b"\n"  # a last line without end is a row too
            if block:
                piece = _block(block, len(names), where, daily, values, skipped, max_line)
                if piece is None:
                    return None
                pieces.append(piece)
            if not data:
                break
    if not pieces:
        return decoded_frame(lambda: io.BytesIO(header), daily, values, Skipped())
    frame = pd.concat(pieces, ignore_index=True)
    frame.attrs[LONGEST] = max(piece.attrs[LONGEST] for piece in pieces)
    return frame


def _plain(data: bytes, *, marks: bool = True) -> bool:
    """No byte the decoder reads otherwise than a split at commas and newlines does.

    ``marks``: look for a quote, CR or NUL (not needed where none can be).
    """
    if data.startswith(b"\xef\xbb\xbf"):
        return False
    if marks and (b'"' in data or b"\r" in data or b"\0" in data):
        return False
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
    return True


def _block(
    block: bytes,
    width: int,
    where: dict[str, int],
    daily: schema.DailyFile,
    values: Sequence[str],
    skipped: Skipped,
    max_line: int,
) -> Any | None:
    """Whole lines of a plain file as a frame; None if a line is not a plain row."""
    octets = np.frombuffer(block, dtype=np.uint8)
    # Newlines and commas in one pass: both are under 45, as few other bytes are.
    low = np.flatnonzero(octets <= ord(","))
    if len(low) % width == 0:
        # Nothing under 45 but commas and newlines (no quote, CR, NUL, space or
        # plus), each line its share of commas, if the shares end in newlines
        # and the rest are commas.
        table = low.reshape(-1, width)
        ends = table[:, -1]
        plain = (octets[ends] == ord("\n")).all() and octets[table[:, :-1]].min() == ord(",")
    else:
        plain = False
    if plain:
        if not _plain(block, marks=False):
            return None
        grid, quick = table[:, :-1], True
    else:
        if not _plain(block):
            return None
        kind = octets[low]
        ends = low[kind == ord("\n")]
        commas = low[kind == ord(",")]
        if len(commas) != len(ends) * (width - 1):
            return None
        grid = commas.reshape(len(ends), width - 1)
        # pandas' float reader takes " 1" and "+1", the decoder does not: the
        # numbers of a block with a space or a plus are read from their bytes.
        quick = not any(mark in block for mark in (b" ", b"\t", b"\x0b", b"\x0c", b"+"))
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    # Each line's share of commas lies inside it: every line has the header's width.
    if not ((grid[:, 0] >= starts).all() and (grid[:, -1] < ends).all()):
        return None
    longest = int((ends - starts).max()) + 1
    if longest > max_line:
        return None  # the decoder reads such a line in pieces
    text = text_names(daily)
    # Times in runs (a tick's rows share one) from the bytes: pandas would make
    # a string of every cell.
    ts = where["ts"]
    runs = _runs(
        block, starts if ts == 0 else grid[:, ts - 1] + 1, ends if ts == width - 1 else grid[:, ts]
    )
    wanted = {*({ts} if runs is None else ()), *(where[n] for n in text if where[n] >= 0)}
    numeric = [daily.column(n) for n in values if where[n] >= 0 and daily.column(n).kind != "pct"]
    try:
        cells = _read(block, width, wanted, {where[c.name] for c in numeric})
    except ValueError:  # a cell pandas cannot read as a number: read from its bytes
        cells = _read(block, width, wanted, set())
    if len(cells) != len(ends):
        return None
    # pandas' float reader also takes "1e2": a cell with an e after a digit is
    # read again by Column.number.
    e_line = e_field = np.zeros(0, dtype=np.int64)
    if quick and any(where[c.name] in cells for c in numeric):
        e = np.flatnonzero((octets | 0x20) == ord("e"))
        before = octets[np.maximum(e - 1, 0)]
        e = e[((before - ord("0")) <= 9) | (before == ord("."))]  # an exponent's e follows one
        e_line = np.searchsorted(ends, e)
        e_field = np.searchsorted(grid.ravel(), e) - e_line * (width - 1)
    codes, uniques = pd.factorize(cells[ts]) if runs is None else runs
    times = np.array([_seconds(str(u)) for u in uniques] + [np.nan])[codes]
    bad = int(np.isnan(times).sum())
    skipped.bad_time += bad
    # Every row kept (the usual case): no copies.
    good = ~np.isnan(times) if bad else slice(None)
    kept = len(times) - bad
    columns: dict[str, Any] = {"t": times[good]}
    for name in text:
        at = where[name]
        columns[name] = cells[at].to_numpy()[good] if at >= 0 else np.full(kept, "", object)
    for name in values:
        at = where[name]
        if at < 0:
            columns[name] = np.full(kept, np.nan)
            continue
        first = starts if at == 0 else grid[:, at - 1] + 1
        last = ends if at == width - 1 else grid[:, at]
        column = daily.column(name)
        if quick and at in cells:
            parsed = cells[at].to_numpy(dtype=float)
            number = _checked(block, octets, first, last, column, parsed, e_line[e_field == at])
        else:
            number = _numbers(block, octets, first, last, column)
        columns[name] = number[good]
    frame = _frame(columns)
    frame.attrs[LONGEST] = longest
    return frame


def _frame(columns: dict[str, Any]) -> Any:
    """Columns as a frame, text as Python objects.

    pandas 3 would make them its ``str``, slow to walk cell by cell.
    """
    return pd.DataFrame(
        {
            name: pd.Series(column, dtype=object if column.dtype == object else None, copy=False)
            for name, column in columns.items()
        }
    )


def _read(block: bytes, width: int, text: set[int], numbers: set[int]) -> Any:
    """Cells of whole plain lines: ``text`` columns as text, ``numbers`` as floats."""
    return pd.read_csv(
        io.BytesIO(block),
        header=None,
        names=list(range(width)),
        usecols=sorted(text | numbers),
        dtype={at: (float if at in numbers else object) for at in text | numbers},
        keep_default_na=False,
        na_values={at: [""] for at in numbers},
        engine="c",
        encoding="utf-8",
        skip_blank_lines=False,
    )


#: Powers of ten, to count a number's digits before its point.
_POWERS = 10.0 ** np.arange(1, 16)


def _checked(
    block: bytes,
    octets: npt.NDArray[np.uint8],
    first: Ints,
    last: Ints,
    column: schema.Column,
    parsed: npt.NDArray[np.float64],
    with_e: Ints,
) -> npt.NDArray[np.float64]:
    """Pandas' numbers for a block without marks, checked.

    A cell it may have read otherwise than :meth:`Column.number` is read by it.
    Without a space or a plus, and but in the cells ``with_e``, pandas reads
    ``-?[0-9]*(\\.[0-9]*)?``; the decoder wants a digit on each side of a point,
    at most 6 after it (at most 15 digits in all here, which pandas rounds as
    Python does).  A cell is suspect unless its bytes
    and its size say so.
    """
    size = last - first
    top = len(octets) - 1
    head, tail = octets[np.minimum(first, top)], octets[np.maximum(last - 1, 0)]
    minus = head == ord("-")
    second = octets[np.minimum(first + 1, top)]
    digits = np.searchsorted(_POWERS, np.abs(parsed), side="right") + 1
    with np.errstate(invalid="ignore"):
        suspect = (size > 0) & (
            ~np.isfinite(parsed)
            | (head == ord("."))
            | (minus & (second == ord(".")))
            | (tail == ord("."))
            | (size - minus > 15)
            | (size > digits + minus + 7)
            | (minus & (parsed == 0))
        )
    suspect[with_e] = True
    out = parsed.copy()
    for i in np.flatnonzero(suspect):
        value = column.number(block[first[i] : last[i]].decode())
        out[i] = np.nan if value is None else float(value)
    return out


#: Masks of a word's first 0 to 8 bytes (little-endian: its low bytes).
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)
#: Runs of times in a block (a share of its rows, and a few) above which its
#: times are pandas' (each run's is parsed in Python; a tick's rows share one).
RUNS, FEW_RUNS = 1 / 8, 64


def _runs(block: bytes, first: Ints, last: Ints) -> tuple[Ints, list[str]] | None:
    """The time cells ``block[first:last]`` numbered by runs of equal cells, and each run's.

    Cells are compared a word (8 bytes) at a time, with no string made but
    a run's first.  None if the cells are not a time's size or have too many runs.
    """
    size = last - first
    if not len(size) or size.max() > 32:  # a time is 20 bytes
        return None
    words = np.ndarray((len(block),), dtype="<u8", buffer=block + bytes(8), strides=(1,))
    end = len(block) - 1
    new = np.empty(len(size), dtype=bool)
    new[0] = True
    new[1:] = size[1:] != size[:-1]
    for n in range(-(-int(size.max()) // 8)):
        word = words[np.minimum(first + 8 * n, end)]
        valid = np.clip(size - 8 * n, 0, 8)
        if not (valid == 8).all():
            word &= _MASKS[valid]  # the bytes past a cell are not its
        new[1:] |= word[1:] != word[:-1]
    heads = np.flatnonzero(new)
    if len(heads) > RUNS * len(size) + FEW_RUNS:
        return None
    texts = [
        block[a:b].decode()
        for a, b in zip(first[heads].tolist(), last[heads].tolist(), strict=True)
    ]
    return np.cumsum(new) - 1, texts


def _seconds(text: str) -> float:
    second = seconds(text)
    return np.nan if second is None else float(second)


def _numbers(
    block: bytes, octets: npt.NDArray[np.uint8], first: Ints, last: Ints, column: schema.Column
) -> npt.NDArray[np.float64]:
    """The cells ``block[first:last]`` as :meth:`Column.number` reads them, NaN for None.

    A cell of up to 18 digits, a sign and a point is read from its bytes; any
    other (rare: a file someone else wrote) by :meth:`Column.number` itself.
    """
    begin, end = first, last
    if column.kind == "pct":
        last = last - ((last > first) & (octets[np.maximum(last - 1, 0)] == ord("%")))
    minus = (last > first) & (octets[np.minimum(first, len(octets) - 1)] == ord("-"))
    first = first + minus
    size = last - first
    width = int(min(size.max(), _DIGITS)) if len(size) else 0
    out = np.full(len(size), np.nan)
    if width == 0:
        slow = size > 0
    else:
        # Each cell right-aligned in ``width`` columns, zeros before it.
        at = last[:, None] - width + np.arange(width)
        octet = np.where(at >= first[:, None], octets[np.maximum(at, 0)], ord("0"))
        point = octet == ord(".")
        points = point.sum(axis=1)
        digit = octet - ord("0")
        ok = ((digit <= 9) | point).all(axis=1) & (size > 0) & (size <= width) & (points <= 1)
        # Digits after the point: 1-6, and one or more before it.
        after = np.where(points == 1, width - 1 - point.argmax(axis=1), 0)
        ok &= (points == 0) | ((after >= 1) & (after <= 6) & (size - after >= 2))
        whole = np.where(point, 0, digit).astype(np.int64) @ (
            10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        )
        scale = 10 ** after.astype(np.int64)
        # The point counted as a digit 0: one place too many before it.
        number = np.where(points == 1, (whole - whole % scale) // 10 + whole % scale, whole)
        ints = (points == 0) & ok
        out[ints] = np.where(minus, -number, number)[ints].astype(float)
        decimals = (points == 1) & ok & (number < _EXACT)
        fraction = number[decimals].astype(float) / scale[decimals].astype(float)
        out[decimals] = np.where(minus[decimals], -fraction, fraction)
        slow = (size > 0) & ~(ints | decimals)
    for i in np.flatnonzero(slow | (minus & (size == 0))):
        value = column.number(block[begin[i] : end[i]].decode())
        out[i] = np.nan if value is None else float(value)
    return out
