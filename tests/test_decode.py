"""The one decoder: whatever a file holds, rows in the description's order, skips counted."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.schema.decode import MAX_LINE, Row, Skipped, decode_untrusted

TS = datetime(2026, 12, 6, 7, 0, 0, tzinfo=UTC)


def decode(data: bytes, daily: schema.DailyFile = schema.DISK) -> tuple[list[Row], Skipped]:
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
    assert skipped.unreadable == 1  # the endless line, read in pieces: its field past the limit
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
