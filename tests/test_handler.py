"""The real handler: on this machine's /proc, on recorded trees, on a real journal."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import FIXTURES, HANDLER, handler_interpreter, require_root, require_tool
from handler_run import AWKS, run_handler

from sysmon.protocol.metrics import AlertRecord
from sysmon.protocol.parse import parse_metrics_untrusted

TREES = sorted(p.name for p in (FIXTURES / "proc").iterdir() if p.is_dir())
UPDATE_GOLDEN = os.environ.get("SYSMON_UPDATE_GOLDEN") == "1"


@pytest.fixture(name="awk", params=sorted(AWKS))
def _awk(request: pytest.FixtureRequest) -> str:
    require_tool((AWKS[request.param] or [handler_interpreter()])[0])
    return str(request.param)


def _proc_dev_names() -> set[str]:
    lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines}


def _meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _cpu_user_ticks() -> int:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[1])


class TestOnThisMachine:
    def test_parses_with_no_rejected_line(self, awk, tmp_path):
        """The handler's output for this machine parses cleanly and completely."""
        before = _cpu_user_ticks()
        snap = parse_metrics_untrusted(run_handler(awk, journal_dir=tmp_path))
        after = _cpu_user_ticks()
        assert snap.lines_rejected == 0
        assert snap.over_caps == frozenset()
        assert snap.lines_ok == snap.lines_total
        assert snap.sys is not None
        assert snap.sys.protocol == 1
        assert before <= (snap.sys.cpu_ticks_user or -1) <= after

    def test_values_match_proc_read_from_python(self, awk, tmp_path):
        """Values cross-check with /proc and statvfs read directly."""
        snap = parse_metrics_untrusted(run_handler(awk, journal_dir=tmp_path))
        assert snap.sys is not None
        assert snap.sys.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert snap.sys.mem_total_kb == _meminfo("MemTotal")
        assert snap.sys.swap_total_kb == _meminfo("SwapTotal")
        btime = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        assert snap.sys.btime == btime
        assert {n.interface for n in snap.net} == _proc_dev_names()
        root = next(d for d in snap.disk if d.mount == "/")
        vfs = os.statvfs("/")
        assert abs(root.size_kb - vfs.f_blocks * vfs.f_frsize // 1024) <= 1
        assert snap.conn is not None
        assert snap.conn.udp_sockets is not None

    def test_journal_unreadable_is_one_alert_stamped_at_boot(self, awk, tmp_path):
        """An unreadable journal is reported once, at boot time, not as a failure."""
        snap = parse_metrics_untrusted(run_handler(awk, journal_dir=tmp_path))
        assert snap.sys is not None
        assert snap.sys.btime is not None
        assert len(snap.alerts) == 1
        assert snap.alerts[0].ts_us == snap.sys.btime * 1_000_000
        assert snap.alerts[0].identifier == "sysmon-handler"
        assert snap.alerts[0].message.startswith("no journal files")

    def test_a_journal_it_may_not_read_names_the_user(self, awk):
        """Journal files it cannot read: said so, naming the user (not $USER's guess)."""
        require_root("running the handler as another user")
        require_tool("setpriv")
        journal = Path(tempfile.mkdtemp(prefix="sysmon-journal-"))
        try:
            journal.chmod(0o755)
            (journal / "system.journal").write_bytes(b"LPKSHHRH")
            (journal / "system.journal").chmod(0o600)
            # A copy nobody can read wherever the checkout lies (a clone in a
            # 0700 home, as Debian 12 makes them).
            handler = Path(shutil.copy2(HANDLER, journal / "qubes.Metrics.Get"))
            out = run_handler(
                awk, journal_dir=journal, argument="nodisk.", as_user="nobody", handler=handler
            )
        finally:
            shutil.rmtree(journal)
        message = parse_metrics_untrusted(out).alerts[0].message
        assert message == "journal not readable by user nobody, no alerts from this qube"


class TestRecordedTrees:
    @pytest.mark.parametrize("tree", TREES)
    def test_golden(self, awk, tree, tmp_path):
        """A recorded /proc tree gives exactly the recorded output, in every awk."""
        root = FIXTURES / "proc" / tree
        out = run_handler(awk, proc_root=root, journal_dir=tmp_path)
        golden = FIXTURES / "golden" / f"{tree}.txt"
        if UPDATE_GOLDEN:
            golden.parent.mkdir(exist_ok=True)
            golden.write_bytes(out)
        assert out == golden.read_bytes()
        snap = parse_metrics_untrusted(out)
        # The hostile names are the collector's to refuse (next test).
        assert snap.lines_rejected == (4 if tree == "hostile-names" else 0)

    @pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
    def test_hostile_names_pass_through_as_bytes(self, awk, locale, tmp_path):
        """Names with invalid UTF-8, quotes and $(...) come out as the kernel wrote them,
        in any locale, and nothing in them runs (df is given the mount as one word)."""
        root = FIXTURES / "proc" / "hostile-names"
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        out = run_handler(awk, proc_root=root, journal_dir=tmp_path, cwd=cwd, locale=locale)
        assert out == (FIXTURES / "golden" / "hostile-names.txt").read_bytes()
        assert list(cwd.iterdir()) == []
        snap = parse_metrics_untrusted(out)
        assert {d.mount for d in snap.disk} == {"/", r"/mnt/back\134slash"}
        assert snap.lines_rejected == 4  # two interfaces, two mounts: unsafe characters

    @pytest.mark.parametrize("argument", ["-f.bashrc", "-Wversion", "-v", "--", "-F."])
    def test_an_argument_is_never_an_option_of_awk(self, argument, tmp_path):
        """A caller's argument that looks like an awk option is only a (bad) cursor:
        run from its #! line, awk must not load a file of the qube's working
        directory as a program, print its version, or fail."""
        cwd = tmp_path / "home"
        cwd.mkdir()
        (cwd / ".bashrc").write_text("secret_history_line = 1\n")
        root = FIXTURES / "proc" / "this-machine"
        out = run_handler(
            "qrexec", proc_root=root, journal_dir=tmp_path, argument=argument, cwd=cwd
        )
        assert b"secret" not in out
        snap = parse_metrics_untrusted(out)
        assert snap.sys is not None
        assert snap.lines_rejected == 0

    def test_bind_mounts_counted_once_and_escapes_kept(self, tmp_path):
        """/home and /usr/local binds of /rw appear once; a space stays \\040."""
        require_tool(handler_interpreter())
        root = FIXTURES / "proc" / "many-ifaces-mounts"
        snap = parse_metrics_untrusted(run_handler("qrexec", proc_root=root, journal_dir=tmp_path))
        mounts = [d.mount for d in snap.disk]
        assert "/tmp/mnt-root/rw" in mounts
        assert "/tmp/mnt-root/home" not in mounts
        assert "/tmp/mnt-root/usrlocal" not in mounts
        assert r"/tmp/mnt-root/My\040Data" in mounts
        assert len(snap.net) == 31

    @staticmethod
    def _tree_with(tmp_path: Path, mounts: list[tuple[str, str]]) -> Path:
        """this-machine's tree with more mounts (mount point, fstype) that df can answer."""
        root = tmp_path / "proc"
        shutil.copytree(FIXTURES / "proc" / "this-machine", root)
        with (root / "self" / "mountinfo").open("a") as info, (root / "df.txt").open("a") as df:
            for n, (mount, fstype) in enumerate(mounts):
                info.write(f"{99 + n} 27 0:{77 + n} / {mount} rw,relatime - {fstype} src{n} rw\n")
                df.write(f"src{n} {1000 + n} 10 990 1% {mount}\n")
        return root

    def _disk_when_hung(
        self, tmp_path: Path, mounts: list[tuple[str, str]], hung: list[str], awk: str = "qrexec"
    ) -> list[str]:
        root = self._tree_with(tmp_path, mounts)
        # Within the collector's own limit (scrape_timeout, 8 s): a poll that took
        # longer would lose every line, not only the hung ones.
        out = run_handler(
            awk,
            proc_root=root,
            journal_dir=tmp_path,
            argument="noalerts.",
            timeout=8,
            extra_env={"SYSMON_DF_HANG": " ".join(hung)},
        )
        snap = parse_metrics_untrusted(out)
        assert snap.sys is not None
        assert snap.net
        return sorted(d.mount for d in snap.disk)

    @pytest.mark.slow
    def test_a_hung_network_filesystem_costs_only_its_own_line(self, awk, tmp_path):
        """df that never answers on an NFS mount is killed after the time limit;
        / and the other network filesystem are still reported (they were not:
        one df for all, killed whole)."""
        mounts = [("/mnt/nfs", "nfs4"), ("/mnt/cifs", "cifs")]
        assert self._disk_when_hung(tmp_path, mounts, ["/mnt/nfs"], awk) == ["/", "/mnt/cifs"]

    @pytest.mark.slow
    def test_hung_filesystems_cost_one_time_limit_together(self, tmp_path):
        """Three hung mounts are waited for at once (3 s), not one after the other (9 s,
        past the collector's 8 s), and cost their own lines only."""
        require_tool(handler_interpreter())
        mounts = [(f"/mnt/nfs{n}", "nfs4") for n in range(3)] + [("/mnt/ok", "nfs4")]
        hung = [m for m, _ in mounts[:3]]
        assert self._disk_when_hung(tmp_path, mounts, hung) == ["/", "/mnt/ok"]

    def test_a_users_fuse_mount_is_skipped(self, tmp_path):
        """A user's FUSE program mounted without subtype= has type "fuse": it is the
        user's, it may never answer, and it is skipped like fuse.* (it was asked
        about, and its hang cost / its line too)."""
        require_tool(handler_interpreter())
        mounts = [("/home/user/fusemnt", "fuse")]
        assert self._disk_when_hung(tmp_path, mounts, ["/home/user/fusemnt"]) == ["/"]

    def test_odd_proc_files(self, tmp_path):
        """CurrEstab found by name, -1 neighbours, no MemAvailable, a short cpu line."""
        require_tool(handler_interpreter())
        root = FIXTURES / "proc" / "odd-snmp"
        snap = parse_metrics_untrusted(run_handler("qrexec", proc_root=root, journal_dir=tmp_path))
        assert snap.conn is not None
        assert snap.conn.tcp_established == 17
        assert snap.conn.udp_sockets == 7
        assert snap.sys is not None
        assert snap.sys.mem_avail_kb is None
        assert snap.sys.cpu_ticks_steal == 0
        assert snap.net[0].rx_bytes == 2**64 - 1


BOOT_A = "4a45ce28-624d-4a4e-bba8-e09b00cd36e5"
BOOT_B = "11111111-2222-3333-4444-555555555555"


def _export_entry(ts_us: int, boot: str, prio: int, ident: str, msg: str, mono: int) -> str:
    return (
        f"__REALTIME_TIMESTAMP={ts_us}\n__MONOTONIC_TIMESTAMP={mono}\n"
        f"_BOOT_ID={boot.replace('-', '')}\nPRIORITY={prio}\nSYSLOG_IDENTIFIER={ident}\n"
        f"_PID=42\n_HOSTNAME=q\nMESSAGE={msg}\n\n"
    )


def _make_journal(directory: Path, entries: list[str]) -> Path:
    remote = require_tool("/lib/systemd/systemd-journal-remote")
    directory.mkdir()
    export = directory.parent / "in.export"
    export.write_text("".join(entries))
    subprocess.run(
        [remote, f"--output={directory / 'remote.journal'}", str(export)],
        check=True,
        capture_output=True,
    )
    return directory


@pytest.fixture(name="proc_boot_a")
def _proc_boot_a(tmp_path):
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc" / "this-machine", root)
    (root / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
    return root


class TestRealJournal:
    """journalctl itself, on journal files made by systemd-journal-remote."""

    @pytest.fixture(name="journal")
    def _journal(self, tmp_path):
        require_tool("journalctl")
        return _make_journal(
            tmp_path / "journal",
            [
                _export_entry(1_700_000_000_000_000, BOOT_B, 3, "old", "previous boot", 1),
                _export_entry(1_700_000_100_000_000, BOOT_A, 5, "kernel", "first", 1),
                _export_entry(1_700_000_100_000_000, BOOT_A, 4, "kernel", "same microsecond", 2),
                _export_entry(1_700_000_200_000_000, BOOT_A, 6, "info", "below notice", 3),
                _export_entry(1_700_000_300_000_000, BOOT_A, 2, "sshd", '=HYPERLINK("x")', 4),
            ],
        )

    def _alerts(self, awk, proc, journal, argument=""):
        out = run_handler(awk, proc_root=proc, journal_dir=journal, argument=argument)
        return parse_metrics_untrusted(out).alerts

    def test_cursor_of_this_boot_is_inclusive(self, awk, proc_boot_a, journal):
        """Entries at or after the cursor's microsecond, notice and above only."""
        cursor = BOOT_A.replace("-", "")[:16] + ".1700000100000000"
        assert self._alerts(awk, proc_boot_a, journal, cursor) == (
            AlertRecord(1_700_000_100_000_000, "kernel[42]", "first"),
            AlertRecord(1_700_000_100_000_000, "kernel[42]", "same microsecond"),
            AlertRecord(1_700_000_300_000_000, "sshd[42]", '=HYPERLINK("x")'),
        )

    def test_cursor_skips_entries_already_filed_at_its_microsecond(self, awk, proc_boot_a, journal):
        cursor = BOOT_A.replace("-", "")[:16] + ".1700000100000000.1"
        got = self._alerts(awk, proc_boot_a, journal, cursor)
        assert [a.message for a in got] == ["same microsecond", '=HYPERLINK("x")']

    def test_cursor_after_everything_gives_nothing(self, awk, proc_boot_a, journal):
        cursor = BOOT_A.replace("-", "")[:16] + ".1700000300000001"
        assert self._alerts(awk, proc_boot_a, journal, cursor) == ()

    def test_cursor_of_another_boot_sends_this_boot(self, awk, proc_boot_a, journal):
        """After a restart the whole new boot is sent, whatever the old cursor's time."""
        cursor = BOOT_B.replace("-", "")[:16] + ".1800000000000000"
        got = self._alerts(awk, proc_boot_a, journal, cursor)
        assert [a.message for a in got] == ["first", "same microsecond", '=HYPERLINK("x")']

    def test_no_cursor_sends_only_recent_minutes(self, awk, proc_boot_a, journal):
        assert self._alerts(awk, proc_boot_a, journal) == ()

    def test_garbage_cursor_is_treated_as_none(self, awk, proc_boot_a, journal):
        cursor = BOOT_A.replace("-", "")[:16] + ".12ab"
        assert self._alerts(awk, proc_boot_a, journal, cursor) == ()

    def test_a_full_poll_with_no_filesystem_to_df_still_sends_alerts(
        self, awk, proc_boot_a, journal
    ):
        """df and journalctl share a shell; with no mount worth a df, only journalctl runs
        and its lines are still read as alerts."""
        mountinfo = proc_boot_a / "self" / "mountinfo"
        mountinfo.write_text("22 1 0:21 / /proc rw - proc proc rw\n")
        cursor = BOOT_A.replace("-", "")[:16] + ".1700000100000000.1"
        snap = parse_metrics_untrusted(
            run_handler(awk, proc_root=proc_boot_a, journal_dir=journal, argument=cursor)
        )
        assert snap.disk == ()
        assert [a.message for a in snap.alerts] == ["same microsecond", '=HYPERLINK("x")']

    def test_flags_before_the_cursor_leave_lines_out(self, awk, proc_boot_a, journal):
        """nodisk. and noalerts. leave out what costs a process; the cursor still counts."""
        cursor = BOOT_A.replace("-", "")[:16] + ".1700000100000000.1"
        for argument, disk, alerts in [
            (cursor, True, 2),
            ("nodisk." + cursor, False, 2),
            ("noalerts.", True, 0),
            ("nodisk.noalerts.", False, 0),
        ]:
            out = run_handler(awk, proc_root=proc_boot_a, journal_dir=journal, argument=argument)
            snap = parse_metrics_untrusted(out)
            assert snap.sys is not None, argument
            assert snap.net, argument
            assert bool(snap.disk) == disk, argument
            assert len(snap.alerts) == alerts, argument

    def test_a_fast_poll_spawns_no_process(self, awk, proc_boot_a, journal, tmp_path):
        """nodisk.noalerts.: no df, no journalctl (they would leave a trace here)."""
        trace = tmp_path / "spawned"
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        for tool in ("df", "journalctl", "timeout"):
            (stubs / tool).write_text(f"#!/bin/sh\necho {tool} >>{trace}\nexit 1\n")
            (stubs / tool).chmod(0o755)
        env = {"PATH": f"{stubs}:{os.environ['PATH']}"}
        fast = "nodisk.noalerts."
        run_handler(awk, proc_root=proc_boot_a, journal_dir=journal, argument=fast, extra_env=env)
        assert not trace.exists()
        run_handler(awk, proc_root=proc_boot_a, journal_dir=journal, extra_env=env)
        assert set(trace.read_text().split()) >= {"df", "journalctl"}

    @pytest.mark.parametrize(
        ("argument", "programs", "processes"),
        [
            ("nodisk.noalerts.", [], 1),
            ("noalerts.", ["sh", "df"], 2),
            ("nodisk.", ["sh", "journalctl"], 3),
            ("", ["sh", "df", "journalctl"], 4),
        ],
    )
    def test_what_each_kind_of_poll_starts(
        self, proc_boot_a, journal, argument, programs, processes
    ):
        """Counted by strace: a fast poll is the one awk process; df and journalctl
        come with one shell, the same one when both are asked for, and awk reads
        journalctl's lines itself (no pipeline, no subshells: docs/performance.md)."""
        strace = require_tool("strace")
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "trace"
            # The real df: this recorded tree's one disk is this machine's /.
            env = {
                "PATH": os.environ["PATH"],
                "LC_ALL": "C",
                "SYSMON_PROC_ROOT": str(proc_boot_a),
                "SYSMON_JOURNAL_DIR": str(journal),
            }
            # One file per process (-ff), successful calls only (-z): no interleaving,
            # no failed tries along PATH.
            argv = [strace, "-ff", "-qq", "-z", "-e", "trace=execve", "-o", str(log)]
            subprocess.run(
                [*argv, str(HANDLER), argument], env=env, capture_output=True, check=True
            )
            traces = sorted(Path(tmp).glob("trace.*"), key=lambda f: int(f.suffix[1:]))
            started = [
                Path(line.split('execve("', 1)[1].split('"', 1)[0]).name
                for f in traces
                for line in f.read_text().splitlines()
                if 'execve("' in line
            ]
        assert started == [HANDLER.name, *programs]
        assert len(traces) == processes

    def test_caps_lines_and_length_oldest_first(self, awk, proc_boot_a, tmp_path):
        """At most 50 alert lines, the oldest, each cut to 1000 characters."""
        require_tool("journalctl")
        entries = [
            _export_entry(
                1_700_000_100_000_000 + i, BOOT_A, 3, "flood", f"{i} " + "x" * 3000, i + 1
            )
            for i in range(120)
        ]
        journal = _make_journal(tmp_path / "flood", entries)
        cursor = BOOT_A.replace("-", "")[:16] + ".1700000100000000"
        got = self._alerts(awk, proc_boot_a, journal, cursor)
        assert [a.ts_us for a in got] == [1_700_000_100_000_000 + i for i in range(50)]
        assert all(len(f"{a.identifier}: {a.message}") == 1000 for a in got)


def test_the_shell_part_is_posix_and_shellcheck_clean():
    """The handler's one piece of shell (journalctl and its lines), as sh will see it,
    and the test helpers."""
    shellcheck = require_tool("shellcheck")
    # "1": the part an awk counting bytes runs; "loop": the one that reads and cuts
    # the lines itself, for an awk counting characters.
    for dump in ("1", "loop"):
        script = subprocess.run(
            [str(HANDLER)],
            env={**os.environ, "SYSMON_DUMP_JOURNAL_SH": dump},
            capture_output=True,
            check=True,
        ).stdout
        assert b"journalctl" in script
        assert (b"read -r line" in script) == (dump == "loop")
        part = subprocess.run(
            [shellcheck, "--shell=sh", "-"], input=script, capture_output=True, check=False
        )
        assert part.returncode == 0, part.stdout.decode()
    helpers = [*sorted((FIXTURES.parent / "bin").iterdir()), FIXTURES / "record_proc.sh"]
    done = subprocess.run(
        [shellcheck, "--shell=sh", *map(str, helpers)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


def test_unreadable_boot_id_still_moves_the_cursor(tmp_path):
    """Without /proc/sys/kernel/random/boot_id the boot is "unknown", and a
    cursor naming it is honoured (else the oldest 50 entries came back forever)."""
    require_tool("journalctl")
    require_tool(handler_interpreter())
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc" / "this-machine", root)
    (root / "sys/kernel/random/boot_id").unlink()
    journal = _make_journal(
        tmp_path / "j",
        [
            _export_entry(1_700_000_000_000_000 + i, BOOT_A, 3, "k", f"m{i}", i + 1)
            for i in range(3)
        ],
    )
    out = run_handler(
        "qrexec", proc_root=root, journal_dir=journal, argument="unknown.1700000000000001.1"
    )
    assert [a.message for a in parse_metrics_untrusted(out).alerts] == ["m2"]
