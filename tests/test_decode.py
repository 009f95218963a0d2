"""The one decoder: whatever a file holds, rows in the description's order, skips counted."""

from __future__ import annotations

import csv
import io
import itertools
import re
import tracemalloc
from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.schema.decode import (
    MAX_LINE,
    Batch,
    DecodedRow,
    Skipped,
    decode_batches_untrusted,
    decode_untrusted,
    header_positions,
    seconds,
)

TS = datetime(2026, 12, 6, 7, 0, 0, tzinfo=UTC)


def decode(data: bytes, daily: schema.DailyFile = schema.DISK) -> tuple[list[DecodedRow], Skipped]:
    skipped = Skipped()
    return list(decode_untrusted(io.BytesIO(data), daily, skipped)), skipped


disk_rows = st.lists(
    st.tuples(
        st.integers(0, 86399),
        st.text(max_size=40),
        st.text(max_size=40),
        st.integers(0, 2**62),
        st.one_of(st.none(), st.integers(0, 2**40)),
    ),
    max_size=20,
)


@given(disk_rows)
def test_what_the_writer_encodes_decodes_back(
    rows: list[tuple[int, str, str, int, int | None]],
) -> None:
    data = schema.DISK.header + b"".join(
        schema.DISK.encode(
            {
                "ts": TS + timedelta(seconds=s),
                "vm": vm,
                "fs": fs,
                "mount": "/rw",
                "size_kb": n,
                "used_kb": used,
            }
        )
        for s, vm, fs, n, used in rows
    )
    decoded, skipped = decode(data)
    assert skipped == Skipped()
    assert [r.ts for r in decoded] == [int(TS.timestamp()) + s for s, *_ in rows]
    size, used = schema.DISK.column("size_kb"), schema.DISK.column("used_kb")
    for row, (_, _, _, n, u) in zip(decoded, rows, strict=True):
        assert size.number(row.cells[4]) == n
        assert used.number(row.cells[5]) == (None if u is None else u)


@given(st.binary(max_size=3000))
def test_any_bytes_decode_without_error_and_every_row_is_full_width(data: bytes) -> None:
    decoded, _ = decode(schema.DISK.header + data)
    assert all(len(r.cells) == len(schema.DISK.columns) for r in decoded)


def test_each_skip_is_counted_by_its_reason() -> None:
    good = schema.DISK.encode({"ts": TS, "vm": "work", "fs": "/dev/xvdb", "mount": "/rw"})
    data = (
        schema.DISK.header
        + good
        + b"2026-12-06T07:00:00Z,work,short\n"
        + b"yesterday,work,/dev/xvdb,/rw,1,2,3,4%\n"
        + b'"'
        + b"x" * (MAX_LINE * 3)
        + b'"\n'
        + good
    )
    decoded, skipped = decode(data)
    assert len(decoded) == 2
    assert skipped.bad_time == 1
    assert skipped.unreadable == 1  # the endless line, read in pieces: its record past the limit
    assert skipped.wrong_width >= 1  # the short row, and pieces of the endless line


def test_an_older_layout_reads_its_missing_columns_as_empty() -> None:
    data = b"vm,ts,size_kb\nwork,2026-12-06T07:00:00Z,5\n"
    (row,), _ = decode(data)
    assert row.cells == ("2026-12-06T07:00:00Z", "work", "", "", "5", "", "", "")


def test_a_file_that_is_not_a_daily_file_gives_no_rows() -> None:
    for data in (b"", b"a,b\n1,2\n", b"ts,vm,ts\n1,2,3\n"):
        decoded, skipped = decode(data)
        assert decoded == []
        assert skipped.not_sysmon == 1


def test_number_takes_only_the_writers_forms() -> None:
    pct, size = schema.DISK.column("pct_used"), schema.DISK.column("size_kb")
    assert pct.number("12%") == 12
    assert size.number("-3.5") == -3.5
    for cell in ("", "nan", "inf", "1e9", "1_0", " 1", "0x10"):
        assert size.number(cell) is None


def csv_batches(
    data: bytes, daily: schema.DailyFile, max_line: int, rows: int
) -> tuple[list[Batch], Skipped]:
    """The batch decoder as it was before plain lines were split at once: all by the csv module.

    A record fed more than ``max_line`` characters is a csv.Error (its line dropped).
    """
    skipped = Skipped()
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace", newline="")
    fed = [0]

    def readline() -> str:
        line = text.readline(max_line)
        fed[0] += len(line)
        if fed[0] > max_line:
            fed[0] = 0
            raise csv.Error("a record longer than the line limit")
        return line

    def next_record() -> list[str] | None:
        fed[0] = 0
        return next(reader, None)

    reader = csv.reader(iter(readline, ""))
    try:
        header = next(reader, None)
    except csv.Error:
        header = None
    positions = header_positions(daily, header) if header else None
    if header is None or positions is None:
        skipped.not_sysmon += 1
        return [], skipped
    width, ts_at = len(header), positions[daily.names.index("ts")]
    batches: list[Batch] = []
    ended = False
    while not ended:
        batch: list[list[str]] = []
        while len(batch) < rows and not ended:
            part: list[list[str]] = []
            try:
                part.extend(itertools.islice(iter(next_record, None), 64))
            except csv.Error:
                skipped.unreadable += 1
            else:
                ended = len(part) < 64
            kept = [cells for cells in part if len(cells) == width]
            skipped.wrong_width += len(part) - len(kept)
            batch += kept
        ts = [seconds(cells[ts_at]) for cells in batch]
        skipped.bad_time += ts.count(None)
        batch = [
            [cells[i] if i >= 0 else "" for i in positions]
            for cells, t in zip(batch, ts, strict=True)
            if t is not None
        ]
        if batch:
            batches.append(Batch([t for t in ts if t is not None], batch))
    return batches, skipped


GOOD = schema.DISK.encode({"ts": TS, "vm": "work", "fs": "/dev/xvdb", "mount": "/rw", "size_kb": 7})
#: Lines, good and bad, for the decoders to tell apart: hypothesis joins and cuts them.
pieces = st.one_of(
    st.just(GOOD),
    st.just(GOOD.replace(b"\n", b"\r\n")),
    st.just(GOOD.replace(b",work,", b',"work",')),  # quoted: read as work
    st.just(GOOD.replace(b",work,", b',"wo\nrk",')),  # a quoted line's end
    st.just(b'","\n'),  # a line that ends inside the quoted field it opens
    st.just(b"2026-12-06T07:00:00Z,work,short\n"),
    st.just(b"ts,vm,fs,mount,size_kb,used_kb,avail_kb,pct_used\n"),
    st.sampled_from([b'"', b"\r", b"\n", b"\0", b",", b"\xff", b"\xe2\x82", b"x" * 50]),
    st.binary(max_size=30),
)


@given(
    header=st.sampled_from([schema.DISK.header, b"vm,ts,size_kb\n", b'"ts",vm,fs\r\n', b""]),
    lines=st.lists(st.tuples(pieces, st.integers(1, 100)), max_size=30),
    max_line=st.integers(1, 120),
    rows=st.integers(1, 200),
    read_ahead=st.integers(1, 300),
    field_limit=st.integers(1, 200),
)
@example(
    header=schema.DISK.header,
    lines=[(GOOD, 200)],
    max_line=MAX_LINE,
    rows=65,
    read_ahead=1000,
    field_limit=csv.field_size_limit(),
)
@example(  # a "\r\n" across the end of the lines split at once: one line end
    header=schema.DISK.header,
    lines=[(GOOD.replace(b"\n", b"\r\n"), 1)],
    max_line=47,
    rows=1,
    read_ahead=46,
    field_limit=8,
)
def test_plain_lines_split_at_once_decode_as_the_csv_module_read_them(
    header: bytes,
    lines: list[tuple[bytes, int]],
    max_line: int,
    rows: int,
    read_ahead: int,
    field_limit: int,
) -> None:
    """Whatever the bytes, the same batches and skips as the csv module's reading of each line.

    The csv module's field limit is lowered, so that its errors (a quoted field
    past the limit) come in small files too.
    """
    data = header + b"".join(line * n for line, n in lines)
    # Each good row its own mount (/rw1, /rw2...), so that rows out of order show.
    numbers = itertools.count()
    data = re.sub(rb"/rw\b", lambda _: b"/rw%d" % next(numbers), data)
    skipped = Skipped()
    was = csv.field_size_limit(field_limit)
    try:
        batches = list(
            decode_batches_untrusted(
                io.BytesIO(data),
                schema.DISK,
                skipped,
                max_line=max_line,
                rows=rows,
                read_ahead=read_ahead,
            )
        )
        assert (batches, skipped) == csv_batches(data, schema.DISK, max_line, rows)
    finally:
        csv.field_size_limit(was)


#: A record that never ends: each line closes the quoted field the one before opened,
#: starts a field and opens another (``","`` then a newline inside the quotes).
ENDLESS_RECORD = schema.DISK.header + b'"\n' + b'","\n' * (1 << 20) + b'"\n'


def test_a_record_of_endless_quoted_lines_is_read_in_bounded_memory() -> None:
    """A planted file of lines that each end inside a quoted field is one record to the
    csv module, a field per line: its list grew with the file (2 bytes per byte read,
    a 1 GB file 2 GB), in both decoders.  A record is read as far as the longest line."""
    for decoder in (decode_untrusted, decode_batches_untrusted):
        skipped = Skipped()
        tracemalloc.start()
        try:
            assert list(decoder(io.BytesIO(ENDLESS_RECORD), schema.DISK, skipped)) == []
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, decoder
        assert skipped.unreadable >= 1


def test_bad_times_are_not_kept_past_their_batch() -> None:
    """A tick's time is parsed once and kept for the rows after it, but a planted cell
    as long as a line is no time: kept, 4 batches' worth of them held a cell each
    (4 x 16,384 x 64 KiB, 4 GiB, at the export's batch size)."""
    cell = "x" * 60_000
    data = schema.DISK.header + b"".join(
        f"{cell}{n:05},work,/dev/xvdb,/rw,1,1,1,1%\n".encode() for n in range(300)
    )
    skipped = Skipped()
    tracemalloc.start()
    try:
        batches = decode_batches_untrusted(io.BytesIO(data), schema.DISK, skipped, rows=64)
        assert list(batches) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert skipped.bad_time == 300
    assert peak < 8 << 20  # a part of 64 such lines, read ahead: 4-5 MiB; kept: 15 MiB more
