"""The report's fast path gives what the one decoder gives, cell by cell, for any file."""

from __future__ import annotations

import functools
import io
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

# The report's libraries: the README's `.[test]` has them not.
np = pytest.importorskip("numpy")
pytest.importorskip("pandas")

from sysmon import schema  # noqa: E402
from sysmon.commands.report import frames  # noqa: E402
from sysmon.commands.report import summary as summary_module  # noqa: E402

T0 = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
#: Short lines make a line past the limit cheap to write.
MAX_LINE = 200

#: Number cells: the writer's, and forms pandas reads but the decoder does not.
NUMBER = st.one_of(
    st.integers(-(2**63), 2**64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.1f}"),
    st.decimals(places=6, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(
        [
            "", "-", "-0", "-0.0", "007", "1.0", "1e2", "1E2", "1e+3", " 1", "1 ", "+1",
            ".5", "5.", "-.5", "nan", "NaN", "inf", "-inf", "Infinity", "1.1234567",
            "1.1000000", "12345678901234567890", "9007199254740993", "99999999999999999.5",
            "12%", "%", "-5%", "12%%", "0x10", "1_0", "--1", "1.2.3", "\t2", "\x0b3",
        ]
    ),
)  # fmt: skip
#: Text cells: names a qube may pick, some with the marks a number can hide.
TEXT = st.one_of(
    st.sampled_from(["work", "sys-net", "vm1e", "nan", "inf", "eth0", "lo", "a b", "x+y", "",
                     "ok", "skipped", "timeout", "/rw"]),
    st.text(alphabet="ae1.-+ E", max_size=6),
)  # fmt: skip
#: Time cells that are not one, or not as the writer writes it (one longer than a time's words).
TIME = st.sampled_from(
    ["", "yesterday", "2025-08-31T12:00:00+02:00", "2025-08-31", "2025-08-31T12:00:00",
     "2025-08-31T12:00:00Z ", "2025-08-31T12:00:00.5Z", "0001-01-01T00:00:00Z", "x" * 40,
     "2025-08-31T12:00:01Z", "2025-08-31T12:00:10Z", "2025-08-31t12:00:00z"]
)  # fmt: skip
#: Whole lines or pieces that are not one.
ODD = st.sampled_from(
    [
        "", "\r", "\x00", '"', '"a,b",', "\ufeff", "é", "x" * (MAX_LINE + 5), ",,,,,,,,,,,,,,,,",
        "yesterday", "2025-08-31T12:00:00+02:00", "2025-08-31", "0001-01-01T00:00:00Z",
    ]
)  # fmt: skip


def _line(daily: schema.DailyFile, *, odd_width: bool = True) -> st.SearchStrategy[str]:
    """One line: cells for ``daily``'s columns, now and then one too many or too few."""
    cells: list[st.SearchStrategy[str]] = []
    for column in daily.columns:
        if column.role is schema.Role.TIME:
            cells.append(
                # A tick's rows share their time: a few times often.
                (st.integers(0, 3) | st.integers(0, 86_400)).map(
                    lambda s: schema.format_ts(T0 + timedelta(seconds=s))
                )
                | TIME
            )
        elif column.role is schema.Role.VALUE:
            cells.append(NUMBER)
        else:
            cells.append(TEXT)
    width = st.sampled_from([0, 0, 0, 0, 0, 1, -1] if odd_width else [0])
    return st.tuples(st.tuples(*cells), width).map(
        lambda c: ",".join(list(c[0]) + ["1"] * c[1] if c[1] >= 0 else list(c[0])[: c[1]])
    )


def _file(daily: schema.DailyFile) -> st.SearchStrategy[bytes]:
    lines = st.lists(st.one_of(_line(daily), _line(daily), _line(daily), ODD), max_size=12)
    end = st.sampled_from(["\n", ""])
    return st.tuples(lines, end).map(
        lambda le: (daily.header.decode() + "\n".join(le[0]) + (le[1] if le[0] else "")).encode()
    )


def _compare(daily: schema.DailyFile, data: bytes, values: tuple[str, ...]) -> bool:
    """Read ``data`` both ways: the same frame and the same skips; whether it was fast."""

    def opener() -> io.BytesIO:
        return io.BytesIO(data)

    fast_skips = schema.Skipped()
    fast = frames.fast_frame(opener, daily, values, fast_skips, max_line=MAX_LINE)
    slow_skips = schema.Skipped()
    slow = frames.decoded_frame(opener, daily, values, slow_skips, max_line=MAX_LINE)
    frame, skips = frames.read_frame(opener, daily, values, max_line=MAX_LINE)
    assert skips == slow_skips
    for got in (frame, fast) if fast is not None else (frame,):
        assert list(got.columns) == list(slow.columns)
        assert len(got) == len(slow)
        for name in slow.columns:
            a, b = got[name].to_numpy(), slow[name].to_numpy()
            if b.dtype == object:
                assert a.tolist() == b.tolist(), name
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
                assert (np.signbit(a) == np.signbit(b)).all(), name
    if fast is not None:
        assert fast_skips == slow_skips
    return fast is not None


@pytest.fixture(autouse=True, params=["runs", "pandas"])
def _small_blocks(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Blocks of a few lines, so that a file is split in several; times read both ways."""
    monkeypatch.setattr(frames, "BLOCK", 97)
    if request.param == "pandas":  # as in a block of too many runs of times
        monkeypatch.setattr(frames, "FEW_RUNS", -1)


@given(st.sampled_from([schema.SYSTEM, schema.NETWORK, schema.DISK]).flatmap(
    lambda d: st.tuples(st.just(d), _file(d))))  # fmt: skip
def test_the_fast_path_and_the_decoder_agree_cell_by_cell(
    case: tuple[schema.DailyFile, bytes],
) -> None:
    daily, data = case
    values = tuple(c.name for c in daily.of_role(schema.Role.VALUE))
    _compare(daily, data, values)


@given(st.sampled_from([schema.SYSTEM, schema.NETWORK, schema.DISK]).flatmap(
    lambda d: st.tuples(st.just(d), st.lists(_line(d, odd_width=False), max_size=40),
                        st.sampled_from([97, 1 << 12]))))  # fmt: skip
def test_many_rows_of_the_headers_width_agree_in_blocks_of_several(
    case: tuple[schema.DailyFile, list[str], int],
) -> None:
    """Rows that are all the header's width (a block of many often fast), times in runs."""
    daily, lines, block = case
    data = daily.header + "".join(line + "\n" for line in lines).encode()
    values = tuple(c.name for c in daily.of_role(schema.Role.VALUE))
    saved = frames.BLOCK
    frames.BLOCK = block
    try:
        _compare(daily, data, values)
    finally:
        frames.BLOCK = saved


@given(st.lists(st.tuples(st.integers(0, 86_399), st.sampled_from(["work", "sys-net", "vm1e"]),
                          st.none() | st.floats(0, 100), st.none() | st.integers(0, 2**62)),
                max_size=30))  # fmt: skip
def test_what_the_writer_writes_takes_the_fast_path(
    rows: list[tuple[int, str, float | None, int | None]],
) -> None:
    data = schema.SYSTEM.header + b"".join(
        schema.SYSTEM.encode(
            {"ts": T0 + timedelta(seconds=s), "vm": vm, "cpu_user": cpu, "mem_used_kb": mem}
        )
        for s, vm, cpu, mem in rows
    )
    assert _compare(schema.SYSTEM, data, ("cpu_user", "mem_used_kb", "load1"))


def test_each_odd_form_agrees_and_plain_files_stay_fast() -> None:
    """Every hostile number in a file otherwise plain: still fast, still the decoder's value."""
    for cell in [
        "1e2", " 1", "+1", ".5", "5.", "nan", "inf", "-0", "-0.0", "1.1234567", "007",
        "12345678901234567890", "9007199254740993", "99999999999999999.5", "-", "1.2.3",
        "1E2", "-1e2", "1.5e3", "12345678e2", "1234567890E1", "123456789012e1", "1e-2",
    ]:  # fmt: skip
        data = (
            schema.CONNECTIONS.header.decode()
            + "2025-08-31T12:00:00Z,work,3,1\n"
            + f"2025-08-31T12:00:10Z,work,{cell},1\n"
        ).encode()
        fast = _compare(schema.CONNECTIONS, data, ("tcp_established", "udp_sockets"))
        assert fast, cell


def test_a_file_that_is_not_plain_is_read_by_the_decoder() -> None:
    for odd in ('"quoted, text"', "a\rb", "x" * (MAX_LINE + 1)):
        data = (schema.ALERTS.header.decode() + f"2025-08-31T12:00:00Z,work,{odd}\n").encode()
        assert not _compare(schema.ALERTS, data, ())


def test_a_long_line_and_a_short_one_do_not_make_up_for_each_other() -> None:
    """The commas of the two add up to two lines' worth: still two rows of the wrong width."""
    data = (
        schema.CONNECTIONS.header.decode()
        + "2025-08-31T12:00:00Z,work,3,1,9\n"
        + "2025-08-31T12:00:10Z,work,4\n"
        + "2025-08-31T12:00:20Z,work,5,1\n"
    ).encode()
    assert not _compare(schema.CONNECTIONS, data, ("tcp_established",))


@given(
    st.sampled_from([schema.SCRAPES, schema.DISK]).flatmap(
        lambda d: st.tuples(st.just(d), st.lists(_file(d), min_size=1, max_size=3))
    ),
    st.sampled_from([None, {"work"}, {"ok", "a b"}]),
    st.sampled_from([(-np.inf, np.inf), (T0.timestamp() + 600, T0.timestamp() + 40_000)]),
    st.integers(1, 4),
    st.integers(0, 3),
)
def test_the_summary_counts_a_frame_as_it_counts_the_rows(
    case: tuple[schema.DailyFile, list[bytes]],
    vms: set[str] | None,
    when: tuple[float, float],
    keys: int,
    text: int,
) -> None:
    """Polls, failures by status, disks' last and highest use, skips, in the same order:
    a frame of the fast path summed a distinct name at a time, or the decoder's rows one by
    one; names cut and counts capped (small here) alike, over several files."""
    daily, files = case
    start, end = when
    by_rows, by_frames = summary_module.Summary(), summary_module.Summary()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summary_module, "MAX_KEYS", keys)
        patch.setattr(summary_module, "MAX_TEXT", text)
        for data in files:
            for row in schema.decode_untrusted(
                io.BytesIO(data), daily, by_rows.skipped, max_line=MAX_LINE
            ):
                vm = row.cells[1]
                if (vms is None or vm in vms) and start <= row.ts <= end:
                    by_rows.add_row(daily.file_name, vm, row.ts, row.cells)
            values = summary_module._COLUMNAR[daily.file_name]
            frame, skipped = frames.read_frame(
                functools.partial(io.BytesIO, data), daily, values, max_line=MAX_LINE
            )
            for field in ("unreadable", "wrong_width", "bad_time", "not_sysmon"):
                setattr(
                    by_frames.skipped,
                    field,
                    getattr(by_frames.skipped, field) + getattr(skipped, field),
                )
            by_frames.add_rows(daily.file_name, summary_module._wanted(frame, vms, start, end))
    assert by_frames.skipped == by_rows.skipped
    assert list(by_frames.polls.items()) == list(by_rows.polls.items())
    assert [(k, list(c.items())) for k, c in by_frames.failed.items()] == [
        (k, list(c.items())) for k, c in by_rows.failed.items()
    ]
    assert list(by_frames.disks.items()) == list(by_rows.disks.items())
    assert by_frames.pairs == by_rows.pairs
