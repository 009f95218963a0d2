"""parse_metrics_untrusted: no payload can break it."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import records_only, snapshots

from sysmon.protocol.metrics import Snapshot, render
from sysmon.protocol.parse import Limits, MetricsParseError, parse_metrics_untrusted

SYS = b"sys: protocol=1 boot_id=abc btime=100 mem_total_kb=1000\n"
NET = b"net: if=eth0 rx_bytes=1 rx_errs=2 rx_drop=3 tx_bytes=4 tx_errs=5 tx_drop=6\n"


class TestAnyInput:
    @given(st.binary(max_size=4096))
    @example(b"")
    @example(b"\x00\xff\xfe")
    @example(b"sys: \n")
    @example(b"sys: =\n")
    @example(b"sys: load1=nan\n")
    def test_returns_or_raises_only_its_error(self, raw):
        """For any bytes: a Snapshot, or MetricsParseError, nothing else."""
        try:
            snap = parse_metrics_untrusted(raw)
        except MetricsParseError as exc:
            error = exc
        else:
            assert snap.lines_ok + snap.lines_rejected <= snap.lines_total
            return
        assert error.lines_rejected <= error.lines_total

    @given(
        st.lists(st.sampled_from([SYS, NET, b"alert: 1 k: m\n", b"\xff\n", b"x\r\n"]), max_size=30)
    )
    def test_counts_add_up(self, chunks):
        """Every line is counted: ok, rejected, or ignored (none here)."""
        raw = b"".join(chunks)
        try:
            snap = parse_metrics_untrusted(raw)
        except MetricsParseError:
            assert SYS not in chunks
        else:
            assert snap.lines_ok + snap.lines_rejected == snap.lines_total == len(chunks)


class TestRoundTrip:
    @given(snapshots())
    def test_render_then_parse_is_identity(self, snap: Snapshot):
        """Records rendered in protocol v1 parse back to the same records."""
        raw = render(snap)
        assert records_only(parse_metrics_untrusted(raw)) == records_only(snap)

    @given(snapshots())
    def test_crlf_line_ends_are_tolerated(self, snap: Snapshot):
        raw = render(snap).replace(b"\n", b"\r\n")
        parsed = parse_metrics_untrusted(raw)
        assert parsed.lines_rejected == 0
        assert parsed.sys == snap.sys
        assert parsed.net == snap.net


class TestBadLines:
    @pytest.mark.parametrize(
        "value",
        [
            *(b"nan", b"inf", b"-1", b"1e5", b"0x10", b"1.5", str(2**70).encode(), b"", b"+1"),
            b" 1",
            # 20 digits pass the digit count; only the range check stops these.
            *(str(2**64).encode(), b"9" * 20),
        ],
    )
    def test_bad_counter_rejects_only_its_line(self, value):
        """A counter that is not a plain in-range integer rejects its line only."""
        raw = SYS + NET.replace(b"rx_bytes=1", b"rx_bytes=" + value) + NET
        snap = parse_metrics_untrusted(raw)
        assert len(snap.net) == 1
        assert snap.lines_rejected == 1
        assert snap.lines_ok == 2

    def test_the_largest_counter_stands(self):
        """2**64 - 1, the kernel's largest counter, is the range's last value."""
        raw = SYS + NET.replace(b"rx_bytes=1", b"rx_bytes=" + str(2**64 - 1).encode())
        assert parse_metrics_untrusted(raw).net[0].rx_bytes == 2**64 - 1

    @pytest.mark.parametrize("value", [b"nan", b"inf", b"-0.5", b"1e3", b"1.0000000001"])
    def test_bad_gauge_rejects_the_sys_line(self, value):
        with pytest.raises(MetricsParseError):
            parse_metrics_untrusted(b"sys: load1=" + value + b"\n")

    @pytest.mark.parametrize(
        "name",
        [b"eth0,x", b'a"b', b"=cmd", b"a b", b"a\x00b", b"\xc3\xa9", b"x" * 256, b"a\\x"],
    )
    def test_unsafe_identifiers_are_rejected(self, name):
        """No comma, quote, equals, space, NUL, non-ASCII or stray backslash."""
        raw = SYS + NET.replace(b"if=eth0", b"if=" + name)
        snap = parse_metrics_untrusted(raw)
        assert snap.net == ()
        assert snap.lines_rejected == 1

    def test_mount_escapes_are_kept(self):
        raw = SYS + b"disk: fs=/dev/xvdb mount=/home/My\\040Files size_kb=3 used_kb=1 avail_kb=2\n"
        assert parse_metrics_untrusted(raw).disk[0].mount == "/home/My\\040Files"

    def test_repeated_sys_line_keeps_the_first(self):
        snap = parse_metrics_untrusted(SYS + b"sys: protocol=1 btime=999\n")
        assert snap.sys is not None
        assert snap.sys.btime == 100
        assert snap.lines_rejected == 1

    def test_repeated_interface_keeps_the_first(self):
        """One counter set per interface and tick: a second would be a second sample of
        the same series at the same time, which engines refuse or silently drop."""
        twice = NET.replace(b"rx_bytes=1", b"rx_bytes=9")
        snap = parse_metrics_untrusted(SYS + NET + twice)
        assert [n.rx_bytes for n in snap.net] == [1]
        assert snap.lines_rejected == 1
        assert "repeated interface eth0" in snap.reject_reasons[0]

    def test_repeated_filesystem_keeps_the_first(self):
        disk = b"disk: fs=/dev/xvdb mount=/rw size_kb=3 used_kb=1 avail_kb=2\n"
        other_mount = disk.replace(b"mount=/rw", b"mount=/home")
        snap = parse_metrics_untrusted(SYS + disk + other_mount + disk.replace(b"=3", b"=4"))
        assert [(d.mount, d.size_kb) for d in snap.disk] == [("/rw", 3), ("/home", 3)]
        assert snap.lines_rejected == 1
        assert "repeated filesystem /dev/xvdb on /rw" in snap.reject_reasons[0]

    def test_repeated_key_rejects_the_line(self):
        with pytest.raises(MetricsParseError, match="repeated key btime"):
            parse_metrics_untrusted(b"sys: btime=1 btime=2\n")

    def test_missing_sys_keys_are_none(self):
        snap = parse_metrics_untrusted(b"sys: protocol=1\n")
        assert snap.sys is not None
        assert snap.sys.mem_total_kb is None
        assert snap.sys.cpu_ticks_user is None

    def test_unknown_keys_and_prefixes_are_ignored(self):
        """A later protocol's keys and record types do not count against the qube."""
        snap = parse_metrics_untrusted(
            b"sys: protocol=2 vmstat_pgfault=12 btime=100\nvmstat: pgfault=1\n" + NET
        )
        assert snap.sys is not None
        assert snap.sys.btime == 100
        assert snap.lines_rejected == 0
        assert snap.lines_ok == 2
        assert snap.lines_total == 3

    def test_nothing_can_name_a_qube(self):
        """Keys that look like a qube name are simply unknown keys."""
        snap = parse_metrics_untrusted(b"sys: vm=dom0 name=vault protocol=1\nvm: dom0\n")
        assert not hasattr(snap, "vm")
        assert snap.sys is not None
        assert snap.sys.protocol == 1

    def test_nul_and_invalid_utf8(self):
        raw = SYS + b"net: if=eth0\x00 rx_bytes=1\n" + b"alert: 5 k: caf\xe9 \x00bell\x07\n"
        snap = parse_metrics_untrusted(raw)
        assert snap.net == ()
        assert snap.alerts[0].message == "caf\ufffd  bell "
        assert snap.lines_rejected == 1

    def test_alert_text_loses_control_and_bidi_characters(self):
        raw = SYS + "alert: 5 k: a\u202eb\u2028c\x1b[31md\n".encode()
        assert parse_metrics_untrusted(raw).alerts[0].message == "a b c [31md"

    def test_output_cut_short_rejects_the_partial_line(self):
        snap = parse_metrics_untrusted(SYS + NET[:20])
        assert snap.lines_rejected == 1
        assert snap.lines_total == 2

    @pytest.mark.parametrize("raw", [b"", b"\n\n", b"garbage\n", NET, b"\x89PNG\r\n\x1a\n"])
    def test_no_sys_line_is_an_error(self, raw):
        with pytest.raises(MetricsParseError):
            parse_metrics_untrusted(raw)


class TestCaps:
    def test_ten_thousand_interfaces(self):
        """Over the net cap: the first 512 stand, the result says so, counts are true."""
        lines = [
            f"net: if=v{i} rx_bytes=1 rx_errs=0 rx_drop=0 tx_bytes=1 tx_errs=0 tx_drop=0\n"
            for i in range(10_000)
        ]
        raw = SYS + "".join(lines).encode()
        snap = parse_metrics_untrusted(raw, Limits(max_bytes=10**7, max_lines=20_000))
        assert len(snap.net) == 512
        assert snap.over_caps == {"net"}
        assert snap.lines_total == 10_001
        assert snap.lines_rejected == 10_000 - 512

    def test_line_cap_counts_the_rest(self):
        raw = SYS + b"".join(NET.replace(b"eth0", b"eth%d" % i) for i in range(5000))
        snap = parse_metrics_untrusted(raw, Limits(max_bytes=10**7, max_lines=100, max_net=10**6))
        assert "lines" in snap.over_caps
        assert snap.lines_total == 5001
        assert len(snap.net) == 99

    def test_byte_cap(self):
        raw = SYS + NET * 10_000
        snap = parse_metrics_untrusted(raw)
        assert "bytes" in snap.over_caps
        assert snap.n_bytes == len(raw)

    def test_long_line_rejected(self):
        raw = SYS + b"alert: 1 k: " + b"x" * 5000 + b"\n"
        snap = parse_metrics_untrusted(raw)
        assert snap.alerts == ()
        assert snap.lines_rejected == 1

    def test_disk_cap(self):
        """Over the disk cap: the first 256 mounts stand, the rest are rejected and said."""
        lines = [
            f"disk: fs=/dev/x{i} mount=/m{i} size_kb=3 used_kb=1 avail_kb=2\n" for i in range(300)
        ]
        snap = parse_metrics_untrusted(SYS + "".join(lines).encode())
        assert [d.mount for d in snap.disk] == [f"/m{i}" for i in range(256)]
        assert snap.over_caps == {"disk"}
        assert snap.lines_rejected == 300 - 256

    def test_alert_cap(self):
        raw = SYS + b"alert: 1 k: m\n" * 300
        snap = parse_metrics_untrusted(raw)
        assert len(snap.alerts) == 200
        assert snap.over_caps == {"alert"}
