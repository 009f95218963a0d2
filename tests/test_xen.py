"""dom0's admin.vm.Stats stream: the parser, the runner, the daemon's loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import trio
from csvcheck import read_day
from fakequbes.recordings import read
from fakes import FakeQubes, daemon_on_virtual_time, run_for
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sysmon.collect.process import run_streaming
from sysmon.collect.xen import XenFollower
from sysmon.commands.daemon import Daemon
from sysmon.protocol.xen_events import (
    DomainStats,
    Event,
    EventReader,
    EventStreamError,
    domain_stats,
)


def encode(event: Event) -> bytes:
    body = b"".join(k.encode() + b"\0" + v + b"\0" for k, v in event.fields.items())
    return b"1\0" + event.subject.encode() + b"\0" + event.name.encode() + b"\0" + body + b"\0"


def stats_event(vm: str, usage: int, mem: int = 400_000) -> bytes:
    fields = {
        "memory_kb": str(mem).encode(),
        "cpu_time": b"1234",
        "cpu_usage": str(usage).encode(),
        "cpu_usage_raw": str(usage * 2).encode(),
    }
    return encode(Event(vm, "vm-stats", fields))


names = st.from_regex(r"[A-Za-z0-9_.-]{0,20}", fullmatch=True)
events = st.builds(
    Event,
    subject=names,
    name=names.filter(bool),
    fields=st.dictionaries(
        names.filter(bool), st.binary(max_size=20).filter(lambda b: b"\0" not in b), max_size=5
    ),
)


class TestEventReader:
    @given(st.lists(events, max_size=10), st.lists(st.integers(1, 50), max_size=20))
    def test_any_chunking_gives_the_same_events(self, evs, cuts):
        data = b"".join(encode(e) for e in evs)
        reader, got, pos = EventReader(), [], 0
        for cut in [*cuts, len(data)]:
            got += reader.feed_untrusted(data[pos : pos + cut])
            pos += cut
        got += reader.feed_untrusted(data[pos:])
        assert got == evs

    @given(st.binary(max_size=6000))
    def test_any_bytes_parse_or_raise_its_error(self, data):
        with contextlib.suppress(EventStreamError):
            EventReader().feed_untrusted(data)

    def test_oversize_event_is_an_error(self):
        with pytest.raises(EventStreamError):
            EventReader().feed_untrusted(b"1\0work\0vm-stats\0k\0" + b"x" * 5000)

    def test_connection_established_has_no_subject(self):
        (event,) = EventReader().feed_untrusted(b"1\0\0connection-established\0\0")
        assert event == Event("", "connection-established", {})
        assert domain_stats(event) is None

    def test_stats_of_a_vm_stats_event(self):
        (event,) = EventReader().feed_untrusted(stats_event("work", 7))
        assert domain_stats(event) == DomainStats("work", 7, 14, 1234, 400_000)

    @pytest.mark.parametrize("vm", ["Domain-0", "x-dm", "a" * 40, "-x"])
    def test_invalid_qube_names_are_dropped(self, vm):
        (event,) = EventReader().feed_untrusted(stats_event(vm, 1))
        assert domain_stats(event) is None


ROUND = ["dom0", "sys-monitor", "work", "nohandler", "personal", "secrets-vault", "sys-dns"]
ROUND.append("disp1234")


def stats_of(data: bytes) -> list[DomainStats]:
    return [s for e in EventReader().feed_untrusted(data) if (s := domain_stats(e)) is not None]


class TestRecordedStreams:
    @pytest.mark.parametrize("release", ["4.2", "4.3"])
    def test_four_rounds_of_eight_domains(self, release):
        """33 events: connection-established, then 4 rounds in domain-id order."""
        data = read(f"admin.vm.Stats-{release}.bin")
        events = EventReader().feed_untrusted(data)
        assert len(events) == 33
        assert events[0] == Event("", "connection-established", {})
        stats = stats_of(data)
        assert [s.vm for s in stats] == ROUND * 4
        assert all(s.cpu_usage == 0 and s.cpu_usage_raw == 0 for s in stats[:8])

    @pytest.mark.parametrize("release", ["4.2", "4.3"])
    def test_values_of_the_recording(self, release):
        """work runs 0.5 CPU-s/s on 2 vcpus: 50 raw, 25 normalised; memory fixed."""
        last = {s.vm: s for s in stats_of(read(f"admin.vm.Stats-{release}.bin"))}
        assert (last["work"].cpu_usage, last["work"].cpu_usage_raw) == (25, 50)
        assert (last["disp1234"].cpu_usage, last["disp1234"].cpu_usage_raw) == (75, 150)
        assert last["work"].memory_kb == 1_536_000
        assert last["dom0"].memory_kb == 4_096_000
        assert last["personal"].cpu_usage == 0

    @pytest.mark.parametrize(
        "name", ["admin.vm.Stats-4.2.bin", "admin.vm.Stats-4.3.bin", "vm-stats-4.4-event.bin"]
    )
    def test_cut_at_every_byte(self, name):
        """Fed in two pieces cut anywhere, the stream gives the same events."""
        data = read(name)
        whole = EventReader().feed_untrusted(data)
        for cut in range(len(data) + 1):
            reader = EventReader()
            first = reader.feed_untrusted(data[:cut])
            assert first == whole[: len(first)], cut
            assert first + reader.feed_untrusted(data[cut:]) == whole, cut

    def test_4_4_event_without_cpu_usage_raw(self):
        """4.4 drops cpu_usage_raw: its cell is empty, the others are read."""
        (stats,) = stats_of(read("vm-stats-4.4-event.bin"))
        assert stats == DomainStats(
            "work", 25, None, 11607, 1_536_000, 1_536_000, 6_144_000, 912_384, 20_480, 2
        )

    def test_4_4_hvm_event_ignores_the_stubdomain_keys(self):
        """The *_internal keys (a float among them) are ignored; no swap_used sent."""
        (stats,) = stats_of(read("vm-stats-4.4-event-hvm.bin"))
        assert stats == DomainStats(
            "sys-net", 10, None, 10643, 409_600, 409_600, 558_080, 409_600, None, 2
        )

    def test_halted_target_error_frame_is_a_stream_error(self):
        """qubesd's 2\\0 exception frame is not an event: the stream must be reopened."""
        with pytest.raises(EventStreamError):
            EventReader().feed_untrusted(read("admin.vm.Stats-halted-target.bin"))

    def test_a_malformed_value_leaves_only_its_cell_empty(self):
        event = encode(
            Event("work", "vm-stats", {"memory_kb": b"12x", "cpu_time": b"5", "cpu_usage": b"1"})
        )
        assert stats_of(event) == [DomainStats("work", 1, None, 5, None)]

    def test_no_known_key_drops_the_event(self):
        assert stats_of(encode(Event("work", "vm-stats", {"colour": b"red"}))) == []


async def test_run_streaming_with_a_real_child():
    chunks: list[bytes] = []
    with trio.fail_after(10):
        code = await run_streaming(
            ["sh", "-c", "printf 'a'; sleep 0.1; printf 'b'; echo err >&2; exit 4"], chunks.append
        )
    assert (b"".join(chunks), code) == (b"ab", 4)


def fake_stream(
    script: list[tuple[float, bytes]], code: int
) -> Callable[[Callable[[bytes], None]], object]:
    async def stream(on_chunk: Callable[[bytes], None]) -> int:
        for delay, chunk in script:
            await trio.sleep(delay)
            on_chunk(chunk)
        return code

    return stream


def xen_collector(tmp_path, stream) -> Daemon:
    start = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
    xen = XenFollower(stream=stream)
    return daemon_on_virtual_time(
        tmp_path, FakeQubes({"work": "ok"}), start, overrides={"xen": xen}
    )


async def test_xen_rows_each_tick_and_reconnect(tmp_path, autojump_clock):
    """Latest event per domain each tick; EOF reconnects; stale domains drop out."""
    script = [(0.5, b"1\0\0connection-established\0\0")]
    script += [(3, stats_event("dom0", 5) + stats_event("work", i)) for i in range(5)]
    c = xen_collector(tmp_path, fake_stream(script, 0))
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.xen.run)  # type: ignore[union-attr]
            await run_for(c, 61)
            nursery.cancel_scope.cancel()
    xen = read_day(tmp_path / "2025-08-31")["xen.csv"]
    # Events at 3.5, 6.5 and 9.5 s: the tick at 10 s has the third.
    assert [(r["ts"][11:19], r["vm"], r["cpu_usage"]) for r in xen[:2]] == [
        ("12:00:10", "dom0", "5"),
        ("12:00:10", "work", "2"),
    ]
    # The stream ends at 15.5 s and is reopened a second later: no gap.
    assert sorted({r["ts"][11:19] for r in xen}) == [f"12:00:{s}0" for s in range(1, 6)] + [
        "12:01:00"
    ]
    assert any(e["event"] == "xen_stats_reconnecting" for e in logs)


async def test_policy_refusal_disables_with_one_line(tmp_path, autojump_clock):
    c = xen_collector(tmp_path, fake_stream([], 126))
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.xen.run)  # type: ignore[union-attr]
            await run_for(c, 30)
            nursery.cancel_scope.cancel()
    assert [e["event"] for e in logs if e["event"].startswith("xen_")] == ["xen_stats_disabled"]
    assert read_day(tmp_path / "2025-08-31")["xen.csv"] == []


async def test_xen_csv_fills_from_4_4_events(tmp_path, autojump_clock):
    """A 4.4 stream fills xen.csv, cpu_usage_raw left empty."""
    script = [(0.5, b"1\0\0connection-established\0\0"), (1, read("vm-stats-4.4-event.bin"))]
    script += [(20, b"")]
    c = xen_collector(tmp_path, fake_stream(script, 0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.xen.run)  # type: ignore[union-attr]
        await run_for(c, 11)
        nursery.cancel_scope.cancel()
    (row,) = read_day(tmp_path / "2025-08-31")["xen.csv"]
    assert row == {
        "ts": "2025-08-31T12:00:10Z",
        "vm": "work",
        "cpu_usage": "25",
        "cpu_usage_raw": "",
        "cpu_time_ms": "11607",
        "memory_kb": "1536000",
        "memory_assigned_usable": "1536000",
        "memory_assigned_total": "6144000",
        "memory_with_swap_used": "912384",
        "swap_used": "20480",
        "online_vcpus": "2",
    }


async def test_an_error_frame_is_logged_and_reopened_never_fatal(autojump_clock):
    """qubesd's 2\\0 frame (recorded) breaks the framing: logged, reopened with backoff."""
    opened = 0

    async def stream(on_chunk: Callable[[bytes], None]) -> int:
        nonlocal opened
        opened += 1
        on_chunk(read("admin.vm.Stats-halted-target.bin"))
        await trio.sleep_forever()  # the follower cancels it
        raise AssertionError  # pragma: no cover

    follower = XenFollower(stream=stream)
    with capture_logs() as logs, trio.move_on_after(10):
        await follower.run()
    assert opened == 4  # at 0, 1, 3 and 7 s
    broken = [e for e in logs if e["event"] == "xen_stats_broken"]
    assert len(broken) == 4
    assert broken[0]["error"] == "not an event header"


async def test_a_flood_of_new_names_keeps_only_listed_domains(tmp_path, autojump_clock):
    """Events with ever-new names neither grow memory nor xen.csv past dom0's list."""
    flood = b"".join(stats_event(f"fake{i}", 1) for i in range(20_000))
    script = [(0.5, b"1\0\0connection-established\0\0" + stats_event("work", 3) + flood)]
    script += [(60, b"")]
    c = xen_collector(tmp_path, fake_stream(script, 0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.xen.run)  # type: ignore[union-attr]
        await run_for(c, 11)
        assert len(c.xen.latest) <= 1024  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()
    xen = read_day(tmp_path / "2025-08-31")["xen.csv"]
    assert [r["vm"] for r in xen] == ["work"]  # of what dom0 listed, only work sent stats


@pytest.mark.slow
@given(st.lists(st.binary(max_size=300), max_size=8))
async def test_any_stream_bytes_are_survived(chunks):
    """A fuzzer on the stream: whatever dom0's side sends, the follower logs and reopens."""
    opened = 0

    async def stream(on_chunk: Callable[[bytes], None]) -> int:
        nonlocal opened
        opened += 1
        for chunk in chunks:
            on_chunk(chunk)
        return 0

    follower = XenFollower(stream=stream)
    with trio.move_on_after(0.05):  # real clock: a few reopenings at most
        await follower.run()
    assert opened >= 1
    assert len(follower.latest) <= 1024
