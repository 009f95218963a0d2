"""The socket agent (handler/sysmon-agent) against the awk handler it stands in for.

The agent runs for real, under systemd-socket-activate (what its socket unit
does), and is asked as qrexec asks: the descriptor "SERVICE+ARG SOURCE\\0",
then the answer until EOF.  Its answer must be the awk handler's, byte for
byte; SYSMON_HANDLER is a wrapper that counts how often it had to run the awk
handler, so each test also says which polls the agent answers itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ASK_AGENT, FIXTURES, HANDLER, IN_CI, require_root, require_tool, wait_listening
from handler_run import STUB_BIN, run_handler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_handler import BOOT_A, BOOT_B, _export_entry, _make_journal

AGENT = HANDLER.parent / "sysmon-agent"
TREES = sorted(p.name for p in (FIXTURES / "proc").iterdir() if p.is_dir())
FAST = "nodisk.noalerts."


def _require_python_systemd() -> None:
    """The journal's fast path needs python3-systemd in the system's python3."""
    probe = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", "import systemd._reader"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        if IN_CI:
            pytest.fail("python3-systemd is required in CI (.ci/run installs it)")
        pytest.skip("python3-systemd not installed")


class Agent:
    """The agent under systemd-socket-activate, its socket in ``home``."""

    def __init__(self, home: Path, env: dict[str, str], user: str | None = None) -> None:
        self.home = home
        self.socket = home / "qubes.Metrics.Get"
        self.count = home / "handler-runs"
        agent, handler, argv = AGENT, HANDLER, []
        if user is not None:  # copies the user can read, wherever the checkout lies
            home.chmod(0o777)
            agent = Path(shutil.copy2(AGENT, home / "sysmon-agent"))
            handler = Path(shutil.copy2(HANDLER, home / "qubes.Metrics.Get.awk"))
            ids = pwd.getpwnam(user)
            argv = [require_tool("setpriv"), f"--reuid={ids.pw_uid}", f"--regid={ids.pw_gid}"]
            argv += ["--clear-groups"]
        wrapper = home / "handler"
        wrapper.write_text(f'#!/bin/sh\necho x >> "{self.count}"\nexec "{handler}" "$@"\n')
        wrapper.chmod(0o755)
        env = {"PATH": os.environ["PATH"], "LC_ALL": "C", "SYSMON_HANDLER": str(wrapper), **env}
        activate = require_tool("systemd-socket-activate")
        argv += [activate, "-l", str(self.socket)]
        argv += [f"--setenv={key}={value}" for key, value in env.items()]
        self.process = subprocess.Popen(
            [*argv, str(agent)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_listening(self.socket, self.process)

    def ask_raw(self, descriptor: bytes, timeout: float = 30) -> bytes:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(timeout)
            conn.connect(str(self.socket))
            conn.sendall(descriptor)
            conn.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := conn.recv(65536):
                out += chunk
            return out

    def ask(self, argument: str = "") -> bytes:
        service = "qubes.Metrics.Get" + (f"+{argument}" if argument else "")
        return self.ask_raw(f"{service} sys-monitor\0".encode())

    def handler_runs(self) -> int:
        return len(self.count.read_text().splitlines()) if self.count.exists() else 0

    def stop(self) -> str:
        self.process.kill()
        _, err = self.process.communicate(timeout=20)
        return err.decode(errors="replace")


@pytest.fixture(name="start_agent")
def _start_agent(tmp_path: Path) -> Iterator[object]:
    agents: list[Agent] = []

    def start(**env: str) -> Agent:
        home = tmp_path / f"agent{len(agents)}"
        home.mkdir()
        agents.append(Agent(home, env))
        return agents[-1]

    yield start
    for agent in agents:
        agent.stop()


def test_without_its_socket_it_says_so_in_one_line():
    done = subprocess.run([str(AGENT)], capture_output=True, check=False, timeout=30)
    assert done.returncode == 1
    assert done.stderr == b"sysmon-agent: start it with its socket unit (sysmon-agent.socket)\n"
    assert done.stdout == b""


@pytest.mark.parametrize("tree", TREES)
def test_a_fast_poll_of_a_recorded_tree_is_the_handlers_without_running_it(
    start_agent, tree, tmp_path
):
    root = FIXTURES / "proc" / tree
    agent = start_agent(SYSMON_PROC_ROOT=str(root), SYSMON_JOURNAL_DIR=str(tmp_path))
    for _ in range(2):  # and again: nothing is kept from one poll to the next
        assert agent.ask(FAST) == run_handler("qrexec", proc_root=root, argument=FAST)
    assert agent.handler_runs() == 0


def test_a_poll_it_does_not_answer_itself_is_the_handlers(start_agent, tmp_path):
    """An NFS mount beside the local disks: it needs a df of its own under a time limit."""
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc" / "many-ifaces-mounts", root)
    with (root / "self" / "mountinfo").open("a") as f:
        f.write("90 30 0:99 / /mnt/nfs rw - nfs4 server:/export rw\n")
    with (root / "df.txt").open("a") as f:
        f.write("server:/export 1000 10 990 1% /mnt/nfs\n")
    agent = start_agent(
        SYSMON_PROC_ROOT=str(root),
        SYSMON_JOURNAL_DIR=str(tmp_path),
        SYSMON_DF_FIXTURE=str(root / "df.txt"),
        PATH=f"{STUB_BIN}:{os.environ['PATH']}",
    )
    expected = run_handler("qrexec", proc_root=root, argument="noalerts.")
    assert b"disk: fs=server:/export mount=/mnt/nfs size_kb=1000" in expected
    # Each remote filesystem's df runs beside the local ones: their lines come in
    # the order they finish.
    assert sorted(agent.ask("noalerts.").splitlines()) == sorted(expected.splitlines())
    assert agent.handler_runs() == 1


# ---- /proc as a qube's kernel writes it, and as a hostile one could ---------

_word = st.binary(min_size=1, max_size=12).filter(lambda b: not set(b) & set(b" \t\n\0\r:"))
_number = st.one_of(
    st.integers(0, 2**64).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"-1", b"1e3", b"0x10", b"2147483647", b"2147483648", b"9" * 20]),
)
_blank = st.sampled_from([b" ", b"  ", b"\t", b" \t "])


@st.composite
def _proc_tree(draw: st.DrawFn) -> dict[str, bytes | None]:
    """Files of a /proc tree; None leaves a file out."""

    def line(words: list[bytes]) -> bytes:
        return draw(_blank).join(words)

    def maybe(data: bytes) -> bytes | None:
        return draw(st.sampled_from([data, data, data, b"", None]))

    cpu = line([b"cpu", *draw(st.lists(_number, max_size=10))])
    stat = b"\n".join(
        [
            cpu,
            line([b"cpu0", draw(_number)]),
            line([b"btime", draw(_number)]),
            line([b"procs_running", draw(_number)]),
            line([b"procs_blocked", draw(_number)]),
        ]
    )
    mem_keys = [b"MemTotal:", b"MemFree:", b"MemAvailable:", b"SwapTotal:", b"SwapFree:", b"Odd:"]
    meminfo = b"\n".join(line([k, draw(_number), b"kB"]) for k in draw(st.permutations(mem_keys)))
    ifaces = draw(
        st.lists(st.tuples(_word, st.lists(_number, min_size=0, max_size=17)), max_size=4)
    )
    dev = b"Inter-|   Receive\n face |bytes\n" + b"".join(
        line([name + b":", *counters]) + b"\n" for name, counters in ifaces
    )
    snmp_names = draw(st.permutations([b"RtoAlgorithm", b"CurrEstab", b"MaxConn", b"InSegs"]))
    snmp = b"Ip: Forwarding\nIp: 1\n" + line([b"Tcp:", *snmp_names]) + b"\n"
    snmp += line([b"Tcp:", *draw(st.lists(_number, max_size=4))]) + b"\n"
    sockstat = line([b"UDP:", b"inuse", draw(_number), b"mem", b"1"]) + b"\n"
    sockstat6 = line([b"UDP6:", b"inuse", draw(_number)]) + b"\n"
    load = line([draw(_number) for _ in range(draw(st.integers(0, 5)))]) + b"\n"
    return {
        "stat": maybe(stat + b"\n"),
        "meminfo": maybe(meminfo + b"\n"),
        "loadavg": maybe(load),
        "net/dev": maybe(dev),
        "net/snmp": maybe(snmp),
        "net/sockstat": maybe(sockstat),
        "net/sockstat6": maybe(sockstat6),
        "sys/kernel/random/boot_id": maybe(draw(st.sampled_from([b"", b"\n", BOOT_A.encode()]))),
        "self/mountinfo": b"",
    }


def test_any_proc_tree_gives_the_handlers_answer(start_agent, tmp_path):
    """Hypothesis writes /proc trees, kernel-shaped or not; whatever the agent answers
    itself or leaves to the awk handler, the answer is the awk handler's."""
    root = tmp_path / "proc"
    agent = start_agent(SYSMON_PROC_ROOT=str(root), SYSMON_JOURNAL_DIR=str(tmp_path))

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(tree=_proc_tree())
    def check(tree: dict[str, bytes | None]) -> None:
        shutil.rmtree(root, ignore_errors=True)
        for name, data in tree.items():
            if data is not None:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
        assert agent.ask(FAST) == run_handler("qrexec", proc_root=root, argument=FAST)

    check()


def _handler_as_qrexec(root: Path, argument: str) -> bytes:
    """What the awk handler prints as qrexec runs it, whatever its exit status: mawk
    dies on some files (a directory) after printing part of its answer."""
    env = {
        "PATH": f"{STUB_BIN}:{os.environ['PATH']}",
        "LC_ALL": "C",
        "SYSMON_PROC_ROOT": str(root),
        "SYSMON_DF_FIXTURE": str(root / "df.txt"),
        "QREXEC_SERVICE_ARGUMENT": argument,
    }
    done = subprocess.run(
        [str(HANDLER), argument], env=env, capture_output=True, timeout=30, check=False
    )
    return done.stdout


@pytest.mark.parametrize(
    ("name", "argument"),
    [
        *((name, FAST) for name in ("stat", "loadavg", "meminfo", "sys/kernel/random/boot_id")),
        *((name, FAST) for name in ("net/dev", "net/snmp", "net/sockstat", "net/sockstat6")),
        ("self/mountinfo", "noalerts."),
    ],
)
def test_a_directory_where_a_file_should_be_is_the_handlers(start_agent, tmp_path, name, argument):
    """What mawk's getline makes of a directory depends on its version: Debian 12's
    (1.3.4 20200120) dies on reading it, exit 2, the answer cut there; Debian 13's
    (1.3.4 20250131) returns -1 and the handler goes on as though the file were
    empty. The agent must not guess, nor answer as though it were missing, but
    run the handler."""
    root = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc" / "this-machine", root)
    (root / name).unlink()
    (root / name).mkdir()
    agent = start_agent(SYSMON_PROC_ROOT=str(root), SYSMON_JOURNAL_DIR=str(tmp_path))
    assert agent.ask(argument) == _handler_as_qrexec(root, argument)
    assert agent.handler_runs() == 1


# ---- the journal ------------------------------------------------------------

CURSOR_A = BOOT_A.replace("-", "")[:16]


class TestJournal:
    """journalctl runs only when the journal has something for the cursor."""

    @pytest.fixture(name="journal")
    def _journal(self, tmp_path):
        require_tool("journalctl")
        _require_python_systemd()
        return _make_journal(
            tmp_path / "journal",
            [
                _export_entry(1_700_000_000_000_000, BOOT_B, 3, "old", "previous boot", 1),
                _export_entry(1_700_000_100_000_000, BOOT_A, 5, "kernel", "first", 1),
                _export_entry(1_700_000_100_000_000, BOOT_A, 4, "kernel", "same microsecond", 2),
                _export_entry(1_700_000_200_000_000, BOOT_A, 6, "info", "below notice", 3),
                _export_entry(1_700_000_300_000_000, BOOT_A, 2, "sshd", "last", 4),
                _export_entry(1_700_000_300_000_000, BOOT_A, 7, "info", "below, same µs", 5),
                _export_entry(1_700_000_400_000_000, BOOT_A, 6, "info", "later, below", 6),
            ],
        )

    @pytest.mark.parametrize(
        ("cursor", "runs"),
        [
            # nothing new: after the last notice, or at it with it filed
            (f"{CURSOR_A}.1700000300000001", 0),
            (f"{CURSOR_A}.1700000300000000.1", 0),
            (f"{CURSOR_A}.1700000400000000", 0),
            # something to send
            (f"{CURSOR_A}.1700000300000000", 1),
            (f"{CURSOR_A}.1700000100000000.1", 1),
            (f"{CURSOR_A}.1700000100000000.2", 1),
            (f"{CURSOR_A}.1700000000000000", 1),
            # the same time written otherwise: the awk handler compares texts
            (f"{CURSOR_A}.01700000300000000.1", 1),
            # what only journalctl's own options decide
            ("", 1),
            (f"{BOOT_B.replace('-', '')[:16]}.1800000000000000", 1),
            (f"{CURSOR_A}.12ab", 1),
            (f"{CURSOR_A}.123456", 1),
            (f"{CURSOR_A}.1700000300000001.1234567", 0),
        ],
    )
    def test_alerts_poll(self, start_agent, tmp_path, journal, cursor, runs):
        proc = tmp_path / "proc"
        shutil.copytree(FIXTURES / "proc" / "this-machine", proc)
        (proc / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
        agent = start_agent(SYSMON_PROC_ROOT=str(proc), SYSMON_JOURNAL_DIR=str(journal))
        argument = "nodisk." + cursor
        expected = run_handler("qrexec", proc_root=proc, journal_dir=journal, argument=argument)
        assert agent.ask(argument) == expected
        assert agent.handler_runs() == runs

    @pytest.mark.parametrize(
        ("cursor", "runs"),
        [
            # the entry the journal filed at the cursor's time was sent before it:
            # journalctl prints the time sent, so it is not the one filed
            (f"{CURSOR_A}.1700000300000000.1", 1),
            # the collector's cursor once it has filed that entry: nothing new
            (f"{CURSOR_A}.1700000299999995.1", 0),
            (f"{CURSOR_A}.1700000299999995", 1),
        ],
    )
    def test_alerts_poll_by_the_time_journalctl_prints(self, start_agent, tmp_path, cursor, runs):
        """journald stamps a message sent to its sockets with the time it was sent
        (_SOURCE_REALTIME_TIMESTAMP), a little before its own; journalctl -o short-unix
        prints that one, and the awk handler compares the cursor with what it prints."""
        require_tool("journalctl")
        _require_python_systemd()
        entry = _export_entry(1_700_000_300_000_000, BOOT_A, 3, "sshd", "sent before filed", 1)
        journal = _make_journal(
            tmp_path / "journal",
            [
                _export_entry(1_700_000_100_000_000, BOOT_A, 5, "kernel", "first", 1),
                entry[:-1] + "_SOURCE_REALTIME_TIMESTAMP=1700000299999995\n\n",
            ],
        )
        proc = tmp_path / "proc"
        shutil.copytree(FIXTURES / "proc" / "this-machine", proc)
        (proc / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
        agent = start_agent(SYSMON_PROC_ROOT=str(proc), SYSMON_JOURNAL_DIR=str(journal))
        argument = "nodisk." + cursor
        expected = run_handler("qrexec", proc_root=proc, journal_dir=journal, argument=argument)
        assert agent.ask(argument) == expected
        assert agent.handler_runs() == runs

    def test_a_journal_file_the_shells_glob_does_not_list_is_none(
        self, start_agent, tmp_path, journal
    ):
        """The awk handler looks for journal files with the shell's glob, which lists
        no dot file: a journal only in one is "no journal files", an alert."""
        (journal / "remote.journal").rename(journal / ".remote.journal")
        proc = tmp_path / "proc"
        shutil.copytree(FIXTURES / "proc" / "this-machine", proc)
        (proc / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
        agent = start_agent(SYSMON_PROC_ROOT=str(proc), SYSMON_JOURNAL_DIR=str(journal))
        argument = f"nodisk.{CURSOR_A}.1700000400000000"
        expected = run_handler("qrexec", proc_root=proc, journal_dir=journal, argument=argument)
        assert b"no journal files" in expected
        assert agent.ask(argument) == expected

    def test_a_directory_named_journalctl_is_no_journalctl(self, start_agent, tmp_path, journal):
        """The shell's command -v finds only a file: with nothing but a directory of
        that name on PATH, the awk handler says journalctl is not found, an alert."""
        (tmp_path / "bin" / "journalctl").mkdir(parents=True)
        proc = tmp_path / "proc"
        shutil.copytree(FIXTURES / "proc" / "this-machine", proc)
        (proc / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
        path = str(tmp_path / "bin")
        agent = start_agent(SYSMON_PROC_ROOT=str(proc), SYSMON_JOURNAL_DIR=str(journal), PATH=path)
        argument = f"nodisk.{CURSOR_A}.1700000400000000"
        expected = run_handler(
            "qrexec",
            proc_root=proc,
            journal_dir=journal,
            argument=argument,
            extra_env={"PATH": path},
        )
        assert b"journalctl not found" in expected
        assert agent.ask(argument) == expected

    #: An alerts poll after the one entry of ``_as_nobody``'s journal.
    AFTER_FIRST = f"nodisk.{CURSOR_A}.1700000400000000"

    @staticmethod
    def _as_nobody(public_tmp: Path) -> tuple[Path, Path]:
        """A /proc tree of boot A and a journal of one notice, for user nobody to
        read (the journal file's mode is the test's), and a folder for the agent."""
        require_root("running the agent as another user")
        require_tool("journalctl")
        _require_python_systemd()
        journal = _make_journal(
            public_tmp / "journal",
            [_export_entry(1_700_000_100_000_000, BOOT_A, 3, "kernel", "first", 1)],
        )
        journal.chmod(0o755)
        proc = public_tmp / "proc"
        shutil.copytree(FIXTURES / "proc" / "this-machine", proc)
        (proc / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
        (public_tmp / "agent").mkdir()
        return proc, journal

    @classmethod
    def _handler_as_nobody(
        cls, public_tmp: Path, proc: Path, journal: Path, extra_env: dict[str, str]
    ) -> bytes:
        """The awk handler's answer to AFTER_FIRST, run by qrexec as user nobody."""
        return run_handler(
            "qrexec",
            proc_root=proc,
            journal_dir=journal,
            argument=cls.AFTER_FIRST,
            as_user="nobody",
            extra_env=extra_env,
            handler=Path(shutil.copy2(HANDLER, public_tmp / "qubes.Metrics.Get")),
        )

    def test_as_the_qubes_user_with_a_path_it_cannot_search(self, public_tmp):
        """The agent runs as the qube's user: a folder on PATH it may not search is
        none to look for journalctl in, and a poll with nothing new its own to answer."""
        proc, journal = self._as_nobody(public_tmp)
        (journal / "remote.journal").chmod(0o644)
        (public_tmp / "closed" / "bin").mkdir(parents=True)
        (public_tmp / "closed").chmod(0o700)
        path = f"{public_tmp / 'closed' / 'bin'}:{os.environ['PATH']}"
        env = {"SYSMON_PROC_ROOT": str(proc), "SYSMON_JOURNAL_DIR": str(journal), "PATH": path}
        agent = Agent(public_tmp / "agent", env, user="nobody")
        try:
            expected = self._handler_as_nobody(public_tmp, proc, journal, {"PATH": path})
            assert agent.ask(self.AFTER_FIRST) == expected
            assert agent.handler_runs() == 0
        finally:
            assert "Error" not in agent.stop()

    def test_a_journal_it_opens_no_file_of_is_the_handlers_to_report(self, public_tmp):
        """A journal file the user may read passes the awk handler's check, but when it
        is no journal and the one journal is not theirs to read, journalctl opens none
        and fails: an alert ("reading the journal failed"), not "nothing new"."""
        proc, journal = self._as_nobody(public_tmp)
        (journal / "remote.journal").chmod(0o600)
        (journal / "readable.journal").write_bytes(b"not a journal\n")
        (journal / "readable.journal").chmod(0o644)
        env = {"SYSMON_PROC_ROOT": str(proc), "SYSMON_JOURNAL_DIR": str(journal)}
        agent = Agent(public_tmp / "agent", env, user="nobody")
        try:
            expected = self._handler_as_nobody(public_tmp, proc, journal, {})
            assert b"reading the journal failed (journalctl status 1)" in expected
            assert agent.ask(self.AFTER_FIRST) == expected
        finally:
            agent.stop()

    def test_a_journal_it_cannot_read_is_the_handlers_to_report(self, start_agent, tmp_path):
        _require_python_systemd()
        proc = FIXTURES / "proc" / "this-machine"
        empty = tmp_path / "empty"
        empty.mkdir()
        agent = start_agent(SYSMON_PROC_ROOT=str(proc), SYSMON_JOURNAL_DIR=str(empty))
        argument = "nodisk." + CURSOR_A + ".1700000300000001"
        expected = run_handler("qrexec", proc_root=proc, journal_dir=empty, argument=argument)
        assert b"no journal files" in expected
        assert agent.ask(argument) == expected
        assert agent.handler_runs() == 1


# ---- what qrexec, or anyone who can reach the socket, sends -----------------


@pytest.mark.parametrize(
    ("descriptor", "argument"),
    [
        (b"qubes.Metrics.Get+nodisk.noalerts. sys-monitor\0", FAST),
        (b"qubes.Metrics.Get+nodisk.noalerts.\0", FAST),  # no source
        (b"qubes.Metrics.Get+nodisk.noalerts. sys-monitor", FAST),  # no NUL before EOF
        (b"qubes.Metrics.Get+nodisk.noalerts. a b c\0trailing stdin", FAST),
        (b"qubes.Metrics.Get+nodisk.$(id). sys-monitor\0", ""),  # qrexec lets no $ through
        (b"qubes.Metrics.Get+nodisk.noalerts.+x sys-monitor\0", "nodisk.noalerts.+x"),
        (b"+nodisk.noalerts.\0", FAST),
        (b"", ""),
        (b"\0", ""),
        (b"x" * 5000, ""),
        (b"qubes.Metrics.Get+nodisk.noalerts. sys-monitor\0" + b"y" * 50_000, FAST),
    ],
)
def test_any_descriptor_gets_the_handlers_answer_for_its_argument(
    start_agent, tmp_path, descriptor, argument
):
    root = FIXTURES / "proc" / "this-machine"
    agent = start_agent(
        SYSMON_PROC_ROOT=str(root),
        SYSMON_JOURNAL_DIR=str(tmp_path),
        SYSMON_DF_FIXTURE=str(root / "df.txt"),
        PATH=f"{STUB_BIN}:{os.environ['PATH']}",
    )
    expected = run_handler("qrexec", proc_root=root, journal_dir=tmp_path, argument=argument)
    assert agent.ask_raw(descriptor) == expected


def test_the_qubes_user_in_group_qubes_gets_nothing_from_the_root_agent(public_tmp):
    """The socket is root's and group qubes' (sysmon-agent.socket), and Qubes adds
    the qube's user to group qubes (core-agent-linux debian/qubes-core-agent.preinst:
    usermod --append --groups qubes user).  Only the qrexec agent, root, calls it
    for the policy's user=root; the user connected too and had the root agent read
    the system journal for it (every notice of the boot, 50 a call, the cursor
    paging on): root's log in a template without passwordless root, and no
    qrexec policy asked.  It also held the one-at-a-time agent 5 s a connection,
    so sys-monitor's polls of the qube timed out.  Now a caller that is neither
    root nor the agent's own user is closed at once, unanswered."""
    require_root("a caller of another user")
    require_tool("journalctl")
    _require_python_systemd()
    roots_line = "pam_unix(sudo:auth): authentication failure; logname=root secret-4711"
    journal = _make_journal(
        public_tmp / "journal",
        [_export_entry(1_700_000_100_000_000, BOOT_A, 5, "sudo", roots_line, 1)],
    )
    journal.chmod(0o700)  # the system journal: root's (and systemd-journal's) alone
    (journal / "remote.journal").chmod(0o600)
    proc = public_tmp / "proc"
    shutil.copytree(FIXTURES / "proc" / "this-machine", proc)
    (proc / "sys/kernel/random/boot_id").write_text(BOOT_A + "\n")
    home = public_tmp / "agent"
    home.mkdir()
    home.chmod(0o755)
    agent = Agent(home, {"SYSMON_PROC_ROOT": str(proc), "SYSMON_JOURNAL_DIR": str(journal)})
    try:
        nobody = pwd.getpwnam("nobody")  # its group stands for group qubes
        os.chown(agent.socket, 0, nobody.pw_gid)
        agent.socket.chmod(0o660)  # SocketUser=root SocketGroup=qubes SocketMode=0660
        another_boot = "0000000000000000.1"  # all of this boot's notices
        as_user = [require_tool("setpriv"), f"--reuid={nobody.pw_uid}"]
        as_user += [f"--regid={nobody.pw_gid}", f"--groups={nobody.pw_gid}"]
        as_user += ["/usr/bin/python3", "-I", "-c", ASK_AGENT]
        done = subprocess.run(
            [*as_user, str(agent.socket), another_boot],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert b"PermissionError" not in done.stderr  # it reached the socket
        assert roots_line.encode() not in done.stdout
        assert done.stdout == b""  # closed unanswered (reset: its call was not read)
        # qrexec's call, as root, is answered as before, and at once while the
        # user holds connections open (each held the agent 5 s).
        hold = "import socket, sys, time\n" + "\n".join(
            f"s{i} = socket.socket(socket.AF_UNIX); s{i}.connect(sys.argv[1])" for i in range(4)
        )
        holder = subprocess.Popen(
            [
                *as_user[:-4],
                "/usr/bin/python3",
                "-I",
                "-c",
                hold + "\ntime.sleep(30)",
                str(agent.socket),
            ]
        )
        try:
            time.sleep(0.5)
            start = time.monotonic()
            assert roots_line.encode() in agent.ask(another_boot)
            assert time.monotonic() - start < 4
        finally:
            holder.kill()
            holder.wait()
    finally:
        agent.stop()


def test_without_the_awk_handler_a_poll_it_cannot_answer_is_empty_and_it_goes_on(
    start_agent, tmp_path
):
    root = FIXTURES / "proc" / "this-machine"
    agent = start_agent(
        SYSMON_PROC_ROOT=str(root),
        SYSMON_JOURNAL_DIR=str(tmp_path),
        SYSMON_HANDLER=str(tmp_path / "missing"),
    )
    assert agent.ask("") == b""
    assert agent.ask(FAST) == run_handler("qrexec", proc_root=root, argument=FAST)
    assert "the awk handler failed" in agent.stop()


@pytest.mark.slow
def test_a_caller_that_sends_nothing_holds_it_only_for_its_time_limit(start_agent, tmp_path):
    root = FIXTURES / "proc" / "this-machine"
    agent = start_agent(SYSMON_PROC_ROOT=str(root), SYSMON_JOURNAL_DIR=str(tmp_path))
    with socket.socket(socket.AF_UNIX) as idle:
        idle.connect(str(agent.socket))
        # The agent serves one caller at a time; this one waits out the first's
        # 5 s, then gets its answer.
        assert agent.ask(FAST) == run_handler("qrexec", proc_root=root, argument=FAST)


@pytest.mark.slow
@pytest.mark.parametrize(
    "before",
    [b"", b"qubes.Metrics.Get+nodisk.noalerts. sys-monitor\0"],
    ids=["descriptor", "after"],
)
def test_a_caller_that_sends_a_byte_at_a_time_holds_it_only_for_its_time_limit(
    start_agent, tmp_path, before
):
    """5 s for the connection, not for each read: a caller dripping a byte every half
    second, in its descriptor or after it, is cut off then, and the next call answered."""
    root = FIXTURES / "proc" / "this-machine"
    agent = start_agent(SYSMON_PROC_ROOT=str(root), SYSMON_JOURNAL_DIR=str(tmp_path))
    expected = run_handler("qrexec", proc_root=root, argument=FAST)
    stop = time.monotonic() + 20
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(str(agent.socket))
        slow.sendall(before)

        def drip() -> None:
            with contextlib.suppress(OSError):  # cut off
                while time.monotonic() < stop:
                    slow.sendall(b"x")
                    time.sleep(0.5)

        dripping = threading.Thread(target=drip)
        dripping.start()
        try:
            start = time.monotonic()
            assert agent.ask(FAST) == expected
            assert time.monotonic() - start < 8
        finally:
            stop = 0
            dripping.join()


# ---- disks, on this machine --------------------------------------------------


def test_a_disk_poll_is_dfs_numbers_from_statvfs(tmp_path):
    """In a mount namespace of its own, a read-only ext4 image gives numbers that do
    not move: the agent's line for it is df's, and it lists the same filesystems."""
    _make_images(tmp_path, ("disk.img", 16))
    mount = tmp_path / "My Disk"  # a space, as mountinfo escapes it
    mount.mkdir()
    by_agent, by_handler, runs = _polls_in_namespace(
        tmp_path, 'mount -o ro,loop disk.img "My Disk"\n'
    )
    disks = [[line for line in out if line.startswith(b"disk: ")] for out in (by_agent, by_handler)]
    assert [line.split(b" size_kb=")[0] for line in disks[0]] == [
        line.split(b" size_kb=")[0] for line in disks[1]
    ]
    ours = [
        line for line in disks[0] if b" mount=" + str(mount).replace(" ", "\\040").encode() in line
    ]
    assert len(ours) == 1
    assert ours[0] in disks[1]
    assert runs == 0


# A disk poll in a mount namespace of its own: SETUP (sh, in WORK) mounts what it
# likes, then the agent is asked and the awk handler run, both as qrexec would.
_IN_NAMESPACE = r"""
set -eu
cd "$WORK"
eval "$SETUP"
printf '#!/bin/sh\necho x >> "%s/handler-runs"\nexec "%s" "$@"\n' "$WORK" "$HANDLER" >wrapper
chmod 755 wrapper
SYSMON_HANDLER="$WORK/wrapper" systemd-socket-activate -E SYSMON_HANDLER \
    -l "$WORK/agent.sock" "$AGENT" 2>agent.err &
agent_pid=$!
trap 'kill "$agent_pid" 2>/dev/null || true' EXIT
# Listening, not only bound (its file is there before listen()).
until awk -v p="$WORK/agent.sock" '$NF == p && $4 == "00010000" {f = 1} END {exit !f}' \
    /proc/net/unix; do sleep 0.02; done
"$PYTHON" -c "$ASK" "$WORK/agent.sock" noalerts. >agent.out
"$HANDLER" noalerts. >handler.out
"""


def _make_images(tmp_path: Path, *images: tuple[str, int]) -> None:
    """ext4 images of the sizes given (MiB) in tmp_path, each holding one file, so
    that "used" is not mkfs's alone."""
    require_root("mounting images")
    for tool in ("unshare", "mkfs.ext4", "systemd-socket-activate"):
        require_tool(tool)
    content = tmp_path / "content"
    content.mkdir()
    (content / "file").write_bytes(b"x" * 300_000)
    for name, size in images:
        with (tmp_path / name).open("wb") as f:
            f.truncate(size << 20)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-d", str(content), str(tmp_path / name)], check=True
        )


def _polls_in_namespace(tmp_path: Path, setup: str) -> tuple[list[bytes], list[bytes], int]:
    """A disk poll's lines by the agent and by the awk handler after ``setup``, in a
    mount namespace of its own, and how often the agent ran the handler."""
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_NAMESPACE],
        env={
            "PATH": os.environ["PATH"],
            "LC_ALL": "C",
            "WORK": str(tmp_path),
            "SETUP": setup,
            "AGENT": str(AGENT),
            "HANDLER": str(HANDLER),
            "PYTHON": sys.executable,
            "ASK": ASK_AGENT,
        },
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    runs = tmp_path / "handler-runs"
    return (
        (tmp_path / "agent.out").read_bytes().splitlines(),
        (tmp_path / "handler.out").read_bytes().splitlines(),
        len(runs.read_text().splitlines()) if runs.exists() else 0,
    )


def _disk_polls_in_namespace(tmp_path: Path, setup: str) -> tuple[list[bytes], list[bytes], int]:
    """The disk lines naming tmp_path, by the agent and by the awk handler (the
    others' numbers move with this machine), and how often the agent ran it;
    images a.img and b.img are there for ``setup`` to mount."""
    require_tool("losetup")
    _make_images(tmp_path, ("a.img", 8), ("b.img", 12))
    by_agent, by_handler, runs = _polls_in_namespace(tmp_path, setup)
    ours = str(tmp_path).encode()

    def disks(out: list[bytes]) -> list[bytes]:
        return [line for line in out if line.startswith(b"disk: ") and ours in line]

    return disks(by_agent), disks(by_handler), runs


def test_a_mount_point_reached_through_a_symlink_is_dfs_to_name(tmp_path):
    """A tmpfs mounted over a mount point's parent, with a symlink where the mount
    point was: statvfs follows it, and df names the mount the symlink leads to, so
    the awk handler prints that one's line (here twice) and none for the hidden one."""
    by_agent, by_handler, _ = _disk_polls_in_namespace(
        tmp_path,
        "mkdir other x x/inner\n"
        "mount -o ro,loop b.img other\n"
        "mount -o ro,loop a.img x/inner\n"
        "mount -t tmpfs tmpfs x\n"
        'ln -s "$WORK/other" x/inner\n',
    )
    assert [b" mount=" + str(tmp_path / "other").encode() in line for line in by_handler] == [
        True,
        True,
    ]
    assert by_agent == by_handler


@pytest.mark.parametrize("source", ["dev%", "my% dev"])
def test_a_source_with_a_percent_sign_is_the_handlers(tmp_path, source):
    """df prints the source first, unescaped: a "%" then a blank in it is where the awk
    handler splits the line at "% ", and it finds no mount it asked for there."""
    by_agent, by_handler, _ = _disk_polls_in_namespace(
        tmp_path,
        'mkdir disk\nloop=$(losetup -f --show -r a.img)\nln -s "$loop" "$WORK/$SOURCE"\n'
        'mount --no-canonicalize -o ro "$WORK/$SOURCE" disk\nlosetup -d "$loop"\n'.replace(
            "$SOURCE", source
        ),
    )
    assert by_handler == []
    assert by_agent == by_handler
