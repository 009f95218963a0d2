"""Benchmark: the handler's CPU, wall time and processes per poll, beside named
floors, the shell handler it replaced, and Prometheus node_exporter scraped at
the handler's own cadence.

    python bench/handler.py [--runs 300] [--spacing 10,1] [--ticks 60]
                            [--baseline b46ce42] [--compare REV] [--no-agent]

Two parts, each interleaved so that every variant sees the same machine noise:

- **Back to back**: ``--runs`` rounds, each running every variant and kind of
  poll, the floors, and one node_exporter scrape, in a shuffled order.  Medians.
- **At a cadence**, for each ``--spacing`` in seconds: ``--ticks`` ticks that far
  apart; in each tick every handler variant makes the poll the collector would
  ask for at that tick (disk and alerts every 6th: the defaults), the floors run
  and node_exporter is scraped once, each at its own fixed slot of the tick, so
  each runs once per spacing.  A daemon scraped every 10 s is colder than one
  scraped back to back, and it also spends CPU between scrapes; both are shown.

A handler's CPU is user+system of its whole process tree (RUSAGE_CHILDREN),
wall is fork to reap; node_exporter's CPU per scrape is the growth of its
threads' run time (/proc/PID/task/*/schedstat, in ns) around the HTTP request,
and "per period" all of it from one scrape to the next.

The floors, named for what they start: "one cat" is cat of the /proc files the
handler reads (one process, no shell: the cost of starting any one program and
reading the files); "sh + cat" is bench/floor.sh (a shell, then cat: what a
shell handler cannot go below); "sh + cat + df" adds df on the same filesystems.

Variants: the handler as qrexec runs it (its first line: mawk), the same file
under gawk (Fedora's own awk), the POSIX-sh handler of commit --baseline (run by
/bin/sh; the before of the awk rewrite), and with --compare REV the handler of
that git revision, run the same way as this tree's; every ratio is then printed
for both, side by side.  The journal is a real one of a day read by
journalctl (built with systemd-journal-remote), since journalctl is the
handler's one expensive child.

The socket agent (handler/sysmon-agent, unless --no-agent) is one more
variant: started once under systemd-socket-activate, with the same journal,
environment and cursors, its fallback the awk handler above, and asked as
qrexec asks (the descriptor, then the answer to EOF).  Its CPU per poll is
what it and its children ran across the poll: its own from its schedstat (ns),
its children's (the awk handler it falls back to, and that one's df and
journalctl) from a cgroup v2 group of its own made for the run (cpu.stat's
usage_usec less its own: us), or, where no cgroup can be made (not root, no
cgroup2), from its cutime + cstime (whole clock ticks: 10 ms; the medians of
a kind that falls back are then not to be read).  A poll fell back when its
children's minor faults grew (cminflt: any process started has some).  The
bench's own connect and read are sys-monitor's qrexec, not the qube's: not
counted, their wall time printed.  Its memory after the run (RSS, PSS from
smaps_rollup) is printed beside node_exporter's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "handler" / "qubes.Metrics.Get"
AGENT = ROOT / "handler" / "sysmon-agent"
ACTIVATE = "systemd-socket-activate"
FLOOR = ROOT / "bench" / "floor.sh"
REMOTE = "/lib/systemd/systemd-journal-remote"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
PEER = "node_exporter"
#: The last shell handler: the before of the awk rewrite.
BASELINE = "b46ce42"
KINDS = ("full", "disk", "alerts", "fast", "flood")
LABELS = {
    "full": "full (df + journalctl)",
    "disk": "disk, no alerts (df)",
    "alerts": "alerts, no disk (journalctl)",
    "fast": "fast: /proc only",
    "flood": "alerts, 50 new of a day's",
}
#: The journal: a day of a qube polled every 10 s (about 6 entries per qrexec
#: call), 1 entry in NOTICE_EVERY of priority notice or higher.
JOURNAL_ENTRIES = 8640 * 6
NOTICE_EVERY = 100
TREE = "awk (mawk)"
SOCKET_AGENT = "sysmon-agent"
ONE_CAT = "floor: one cat"
SH_CAT = "floor: sh + cat"
SH_CAT_DF = "floor: sh + cat + df"
#: The collector's defaults: disk lines and alerts every 6th poll.
DISK_EVERY = ALERTS_EVERY = 6
#: Other cadences whose average is printed when their kinds were measured.
CADENCES = (
    (6, 6, "the defaults: disk and alerts once a minute"),
    (6, 12, "alerts every 2 min"),
    (6, 30, "alerts every 5 min"),
    (6, 0, "no alerts at all, disk once a minute"),
)

Job = Callable[[], tuple[float, float]]


def measure(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(cpu ms, wall ms) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1000, wall * 1000


def processes(argv: Sequence[str], env: dict[str, str]) -> int | None:
    """Processes one run starts, itself included (strace -ff: a file per process)."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "t"
        subprocess.run(
            [strace, "-ff", "-qq", "-e", "trace=execve", "-o", str(log), *argv],
            stdout=subprocess.DEVNULL,
            env=env,
            check=True,
        )
        return len(list(Path(tmp).iterdir()))


def make_journal(directory: Path, entries: int = JOURNAL_ENTRIES) -> tuple[int, int]:
    """A qube's journal of the last day, as polling makes it: qrexec and PAM write
    a few info entries per call, and 1 in NOTICE_EVERY is notice or higher.
    Returns (the first entry's time, the newest notice's time), in microseconds."""
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    now_us = int(time.time() * 1_000_000)
    step = 86_400_000_000 // entries
    export = directory / "in.export"
    newest = 0
    with export.open("w") as f:
        for i in range(entries):
            at = now_us - (entries - i) * step
            notice = i % NOTICE_EVERY == 0
            if notice:
                newest = at
            f.write(
                f"__REALTIME_TIMESTAMP={at}\n__MONOTONIC_TIMESTAMP={i + 1}\n_BOOT_ID={boot}\n"
                f"PRIORITY={3 + i // NOTICE_EVERY % 3 if notice else 6}\n"
                f"SYSLOG_IDENTIFIER=qrexec-agent\n_PID={1000 + i % 97}\n"
                f"MESSAGE=executed user:qubes.Metrics.Get+nodisk.noalerts. entry {i}\n\n"
            )
    subprocess.run(
        [REMOTE, f"--output={directory / 'system.journal'}", str(export)],
        check=True,
        capture_output=True,
    )
    export.unlink()
    return now_us - entries * step, newest


def mounts_of(handler: Sequence[str], env: dict[str, str]) -> list[str]:
    out = subprocess.run([*handler, "noalerts."], env=env, capture_output=True, check=True)
    mounts = []
    for line in out.stdout.decode().splitlines():
        if line.startswith("disk: "):
            fields = dict(t.split("=", 1) for t in line[6:].split(" "))
            mounts.append(fields["mount"].encode().decode("unicode_escape"))
    return mounts


def from_git(commit: str, target: Path) -> Path:
    """handler/qubes.Metrics.Get as it was at ``commit``, written to ``target``."""
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:handler/qubes.Metrics.Get"],
        capture_output=True,
        check=True,
    )
    target.write_bytes(shown.stdout)
    target.chmod(0o755)
    return target


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (schedstat: not the tick's 10 ms)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def listening(path: Path) -> bool:
    """Whether a Unix socket listens at ``path`` (/proc/net/unix, as bound)."""
    with Path("/proc/net/unix").open() as table:
        next(table)
        for line in table:
            fields = line.rstrip("\n").split(None, 7)
            if len(fields) == 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
                return True
    return False


class NodeExporter:
    """Prometheus node_exporter on a loopback port, scraped one /metrics at a time."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.proc = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        for _ in range(5):
            urllib.request.urlopen(self.url, timeout=5).read()
        self.last = task_cpu_ns(self.proc.pid)

    def scrape(self) -> tuple[float, float]:
        """(cpu ms, wall ms) of one scrape, node_exporter's threads only."""
        before = task_cpu_ns(self.proc.pid)
        start = time.perf_counter()
        urllib.request.urlopen(self.url, timeout=5).read()
        wall = time.perf_counter() - start
        time.sleep(0.005)  # let its threads finish the scrape and go idle
        return (task_cpu_ns(self.proc.pid) - before) / 1e6, wall * 1000

    def period(self) -> float:
        """CPU ms of all its threads since the last call: a scrape and the idle time after it."""
        now = task_cpu_ns(self.proc.pid)
        spent, self.last = now - self.last, now
        return spent / 1e6

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def proc_stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields from the third (the state) on."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MB, from smaps_rollup."""
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    kb = {line.split()[0]: int(line.split()[1]) for line in rollup[1:]}
    return kb["Rss:"] / 1024, kb["Pss:"] / 1024


def own_cgroup(pid: int, name: str) -> Path | None:
    """A cgroup v2 group of its own for ``pid`` and the children it will start, beside
    ours; None when none can be made (no cgroup2 mounted, not allowed)."""
    mount = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            mount = Path(fields[4])
            break
    ours = next(
        (
            line[3:]
            for line in Path("/proc/self/cgroup").read_text().splitlines()
            if line[:3] == "0::"
        ),
        None,
    )
    if mount is None or ours is None:
        return None
    group = mount / ours.lstrip("/") / name
    try:
        group.mkdir()
        (group / "cgroup.procs").write_text(str(pid))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        return None
    return group


class Agent:
    """handler/sysmon-agent under systemd-socket-activate (what its socket unit does),
    asked as qrexec asks; CPU, wall and fallbacks per poll."""

    def __init__(
        self, program: Path, home: Path, env: dict[str, str], arguments: dict[str, str]
    ) -> None:
        self.socket = home / "qubes.Metrics.Get"
        self.arguments = arguments
        activate = shutil.which(ACTIVATE) or ACTIVATE
        argv = [activate, "-l", str(self.socket)]
        argv += [f"--setenv={key}={value}" for key, value in env.items()]
        # It execs the agent on the first connection: the same process all along.
        self.proc = subprocess.Popen(
            [*argv, str(program)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.cgroup = own_cgroup(self.proc.pid, f"sysmon-bench-{os.getpid()}")
        self.tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
        self.phase = ""
        #: (phase, kind) -> [polls asked, of them answered by the awk handler]
        self.counts: dict[tuple[str, str], list[int]] = {}
        #: (phase, kind) -> its own CPU ms per poll, and its children's
        self.own: dict[tuple[str, str], list[float]] = {}
        self.children: dict[tuple[str, str], list[float]] = {}
        try:
            deadline = time.monotonic() + 20
            while not listening(self.socket):  # its file is there before listen()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{ACTIVATE} never listened on {self.socket}")
                time.sleep(0.02)
            for _ in range(3):  # the start, the first imports, a first journal read
                for kind in KINDS:
                    self.poll(kind)
        except BaseException:
            self.close()
            raise
        self.counts.clear()
        self.own.clear()
        self.children.clear()

    def ask(self, argument: str) -> bytes:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(60)
            conn.connect(str(self.socket))
            conn.sendall(f"qubes.Metrics.Get+{argument} sys-monitor\0".encode())
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def counters(self) -> tuple[int, int, int, int]:
        """(its own ns, its cgroup's ns, its children's clock ticks, their minor faults)."""
        stat = proc_stat(self.proc.pid)
        group = 0
        if self.cgroup is not None:
            cpu = (self.cgroup / "cpu.stat").read_text().split()
            group = int(cpu[cpu.index("usage_usec") + 1]) * 1000
        return task_cpu_ns(self.proc.pid), group, int(stat[13]) + int(stat[14]), int(stat[8])

    def idle(self) -> None:
        """Wait until it sleeps in accept() again, its poll's work all done: after the
        EOF it only closes the connection (the drain reads the EOF at once)."""
        deadline = time.monotonic() + 10
        while proc_stat(self.proc.pid)[0] != "S":
            if time.monotonic() > deadline:
                raise RuntimeError("sysmon-agent never went back to accept()")
            time.sleep(0.0002)

    def poll(self, kind: str) -> tuple[float, float]:
        """(cpu ms, wall ms) of one poll: its own CPU and its children's; the wall
        time is the caller's, connect to EOF."""
        own0, group0, ticks0, faults0 = self.counters()
        start = time.perf_counter()
        answer = self.ask(self.arguments[kind])
        wall = time.perf_counter() - start
        self.idle()
        own1, group1, ticks1, faults1 = self.counters()
        if not answer.startswith(b"sys: "):
            raise RuntimeError(f"sysmon-agent answered {answer[:80]!r} to a {kind} poll")
        own = (own1 - own0) / 1e6
        if self.cgroup is not None:
            children = max(0.0, (group1 - group0) / 1e6 - own)
        else:
            children = (ticks1 - ticks0) * self.tick_ms
        count = self.counts.setdefault((self.phase, kind), [0, 0])
        count[0] += 1
        count[1] += faults1 > faults0
        self.own.setdefault((self.phase, kind), []).append(own)
        self.children.setdefault((self.phase, kind), []).append(children)
        return own + children, wall * 1000

    def total_ms(self) -> float:
        """All its CPU so far, and its children's."""
        own, group, ticks, _ = self.counters()
        return (group if self.cgroup is not None else own + ticks * self.tick_ms * 1e6) / 1e6

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.cgroup is not None:
            for _ in range(100):  # empty once the kernel has seen it exit
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.01)


def cycle(disk_every: int, alerts_every: int) -> list[str]:
    """The kinds of poll the collector asks for over one cycle (health.argument's rule);
    ``alerts_every`` 0: never."""
    kinds = []
    for n in range(math.lcm(disk_every, alerts_every or 1)):
        disk, alerts = n % disk_every == 0, alerts_every > 0 and n % alerts_every == 0
        kinds.append(
            "full" if disk and alerts else "disk" if disk else "alerts" if alerts else "fast"
        )
    return kinds


def cycle_average(med: dict[str, float], disk_every: int, alerts_every: int) -> float:
    """Average CPU ms per poll over a cycle, from each kind's median."""
    kinds = cycle(disk_every, alerts_every)
    return sum(med[k] for k in kinds) / len(kinds)


def medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(c for c, _ in samples), statistics.median(w for _, w in samples)


def at_cadence(
    spacing: float,
    ticks: int,
    polls: dict[str, Callable[[str], tuple[float, float]]],
    floors: dict[str, Job],
    peer: NodeExporter,
    kinds: list[str],
) -> tuple[dict[tuple[str, str], list[tuple[float, float]]], list[float], list[float]]:
    """Every handler variant, floor and a node_exporter scrape once per ``spacing`` s,
    each at a fixed slot of the tick; the handlers make the collector's poll of the tick."""

    def handler_slot(
        poll: Callable[[str], tuple[float, float]], n: int
    ) -> tuple[str, tuple[float, float]]:
        kind = kinds[n % len(kinds)]
        return kind, poll(kind)

    def other_slot(job: Job, _: int) -> tuple[str, tuple[float, float]]:
        return "", job()

    slots: list[tuple[str, Callable[[int], tuple[str, tuple[float, float]]]]] = []
    for name, poll in polls.items():
        slots.append((name, functools.partial(handler_slot, poll)))
    for name, job in floors.items():
        slots.append((name, functools.partial(other_slot, job)))
    slots.append((PEER, functools.partial(other_slot, peer.scrape)))
    random.shuffle(slots)
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    periods: list[float] = []
    peer.period()
    start = time.monotonic()
    for n in range(ticks):
        for i, (name, run) in enumerate(slots):
            at = start + n * spacing + i * spacing / len(slots)
            time.sleep(max(0.0, at - time.monotonic()))
            kind, sample = run(n)
            samples.setdefault((name, kind), []).append(sample)
            if name == PEER:
                periods.append(peer.period())
        print(f"\r  spacing {spacing:g} s: tick {n + 1}/{ticks}", end="", file=sys.stderr)
    print(file=sys.stderr)
    # The first period began at the call above, not at a scrape: dropped.
    scrapes = [c for c, _ in samples.pop((PEER, ""))]
    return samples, scrapes, periods[1:]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300, help="back-to-back rounds")
    parser.add_argument(
        "--spacing", default="10,1", help="seconds between polls, comma-separated ('' for none)"
    )
    parser.add_argument("--ticks", type=int, default=60, help="polls at each spacing")
    parser.add_argument(
        "--cycle",
        default=f"{DISK_EVERY},{ALERTS_EVERY}",
        metavar="DISK,ALERTS",
        help="at a cadence, ask for disk lines and alerts every Nth poll, as the collector"
        " (disk_every, alerts_every; ALERTS 0: never)",
    )
    parser.add_argument("--baseline", default=BASELINE, help="commit of the shell handler")
    parser.add_argument(
        "--compare", metavar="REV", help="also run the handler of REV, side by side"
    )
    parser.add_argument(
        "--no-agent", action="store_true", help="leave out the socket agent (handler/sysmon-agent)"
    )
    args = parser.parse_args()
    spacings = [float(s) for s in args.spacing.split(",") if s.strip()]
    disk_every, alerts_every = (int(n) for n in args.cycle.split(","))
    if not (Path(REMOTE).exists() and shutil.which("journalctl")):
        print("systemd-journal-remote or journalctl missing: no journal to read", file=sys.stderr)
        return 1
    if not Path(NODE_EXPORTER).exists():
        print(f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter", file=sys.stderr)
        return 1
    if not args.no_agent and not shutil.which(ACTIVATE):
        print(f"{ACTIVATE} missing (systemd): no agent; or --no-agent", file=sys.stderr)
        return 1
    interpreter = HANDLER.read_text().split("\n", 1)[0].removeprefix("#!").split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal"
        journal.mkdir()
        first_us, newest_us = make_journal(journal)
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "SYSMON_JOURNAL_DIR": str(journal)}
        # A copy: the tree may change while the benchmark runs.
        tree = Path(tmp) / "tree"
        shutil.copy(HANDLER, tree)
        variants = {TREE: [str(tree)]}
        handlers = [TREE]
        if args.compare:
            name = f"{TREE} {args.compare}"
            variants[name] = [str(from_git(args.compare, Path(tmp) / "compare"))]
            handlers.append(name)
        if shutil.which("gawk"):
            variants["awk (gawk)"] = ["gawk", "-f", str(tree)]
        old = f"sh {args.baseline}"
        variants[old] = ["sh", str(from_git(args.baseline, Path(tmp) / "baseline.sh"))]
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        # As the collector's cursor: at the newest notice, filed, so a poll reads
        # what came since (the seed's "notice+ entries in the last 10 s"): none.
        cursor = f"{boot[:16]}.{newest_us}.1"
        arguments = {
            "full": cursor,
            "disk": "noalerts.",
            "alerts": "nodisk." + cursor,
            "fast": "nodisk.noalerts.",
            "flood": f"nodisk.{boot[:16]}.{first_us}",
        }
        mounts = mounts_of(variants[TREE], env)
        files = subprocess.run(
            ["sh", str(FLOOR), "--list"], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        floor_runs = {
            ONE_CAT: (["cat", *files], env),
            SH_CAT: (["sh", str(FLOOR)], {**env, "FLOOR_NO_DF": "1"}),
            SH_CAT_DF: (["sh", str(FLOOR), *mounts], env),
        }
        floors: dict[str, Job] = {
            name: functools.partial(measure, argv, floor_env)
            for name, (argv, floor_env) in floor_runs.items()
        }

        def poll(argv: Sequence[str], kind: str) -> tuple[float, float]:
            return measure([*argv, arguments[kind]], env)

        polls: dict[str, Callable[[str], tuple[float, float]]] = {
            v: functools.partial(poll, argv) for v, argv in variants.items()
        }
        peer = NodeExporter()
        agent = None
        alerts_sent: dict[str, int] = {}  # the alert lines of the agent's answer, by kind
        try:
            if not args.no_agent:
                shutil.copy(AGENT, Path(tmp) / "sysmon-agent")
                (Path(tmp) / "agent").mkdir()
                agent = Agent(
                    Path(tmp) / "sysmon-agent",
                    Path(tmp) / "agent",
                    {**env, "SYSMON_HANDLER": str(tree)},
                    arguments,
                )
                polls[SOCKET_AGENT] = agent.poll
                handlers.append(SOCKET_AGENT)
                for k in KINDS:  # the same answer, but for the counters read
                    ours = sorted(
                        line.split(b" ")[0] for line in agent.ask(arguments[k]).split(b"\n")
                    )
                    alerts_sent[k] = ours.count(b"alert:")
                    awks = subprocess.run(
                        [str(tree), arguments[k]], env=env, capture_output=True, check=True
                    ).stdout.split(b"\n")
                    if ours != sorted(line.split(b" ")[0] for line in awks):
                        print(f"sysmon-agent's {k} poll is not the awk handler's", file=sys.stderr)
                        return 1
                    agent.idle()
            jobs: list[tuple[str, str, Job]] = [
                (v, k, functools.partial(polls[v], k)) for v in polls for k in KINDS
            ]
            jobs += [(name, "", job) for name, job in floors.items()]
            jobs.append((PEER, "", peer.scrape))
            samples: dict[tuple[str, str], list[tuple[float, float]]] = {
                (v, k): [] for v, k, _ in jobs
            }
            if agent is not None:
                agent.phase = "back to back"
            for n in range(args.runs):
                random.shuffle(jobs)
                for v, k, job in jobs:
                    samples[v, k].append(job())
                print(f"\r  back to back: round {n + 1}/{args.runs}", end="", file=sys.stderr)
            print(file=sys.stderr)
            kinds = cycle(disk_every, alerts_every)
            cadences = {}
            #: the agent's CPU over a whole cadence part per tick, idle time included
            agent_period: dict[float, float] = {}
            for spacing in spacings:
                if agent is not None:
                    agent.phase = f"{spacing:g} s"
                    before = agent.total_ms()
                cadences[spacing] = at_cadence(spacing, args.ticks, polls, floors, peer, kinds)
                if agent is not None:
                    agent_period[spacing] = (agent.total_ms() - before) / args.ticks
            memory = {PEER: memory_mb(peer.proc.pid)}
            if agent is not None:
                memory[SOCKET_AGENT] = memory_mb(agent.proc.pid)
        finally:
            peer.close()
            if agent is not None:
                agent.close()
        spawned: dict[tuple[str, str], int | None] = {
            (v, k): processes([*argv, arguments[k]], env)
            for v, argv in variants.items()
            for k in KINDS
        }
        spawned |= {(name, ""): processes(argv, e) for name, (argv, e) in floor_runs.items()}
    med = {key: medians(s) for key, s in samples.items()}

    print(f"handler {HANDLER} (first line: {interpreter}); /bin/sh = {os.path.realpath('/bin/sh')}")
    print(
        f"a real journal of a day: {JOURNAL_ENTRIES:,} entries, 1 in {NOTICE_EVERY} notice or"
        " higher; the cursor at the newest notice, filed (a flood: at the day's start)"
    )
    if agent is not None:
        print(
            f"{SOCKET_AGENT}: the same lines as the awk handler for each kind; alert lines: "
            + ", ".join(f"{k} {n}" for k, n in alerts_sent.items())
        )
    print(f"\nback to back: {args.runs} interleaved rounds, medians")
    print(f"  {'':34} {'cpu ms':>8} {'wall ms':>8} {'processes':>10}")
    for v in polls:
        if v == SOCKET_AGENT:
            print(
                f"  {v} (itself + children; wall: the caller's connect to EOF;"
                " processes: polls the awk handler answered)"
            )
        else:
            print(f"  {v}")
        for k in KINDS:
            if agent is not None and v == SOCKET_AGENT:
                asked, fell = agent.counts["back to back", k]
                own = statistics.median(agent.own["back to back", k])
                children = statistics.median(agent.children["back to back", k])
                note = f"{fell:>5}/{asked}   its own {own:.2f}, its children {children:.2f}"
            else:
                started = spawned[v, k]
                note = f"{'' if started is None else started:>10}"
            print(f"    {LABELS[k]:32} {med[v, k][0]:8.2f} {med[v, k][1]:8.2f} {note}")
    for name in floors:
        started = spawned[name, ""]
        print(
            f"  {name:34} {med[name, ''][0]:8.2f} {med[name, ''][1]:8.2f} "
            f"{'' if started is None else started:>10}"
        )
    peer_cpu, peer_wall = med[PEER, ""]
    print(
        f"  {PEER + ', one scrape':34} {peer_cpu:8.2f} {peer_wall:8.2f}   (its threads' schedstat)"
    )
    if agent is not None:
        how = (
            "its cgroup's usage_usec"
            if agent.cgroup is not None
            else "cutime + cstime, in whole clock ticks"
        )
        print(f"  ({SOCKET_AGENT}: its own cpu from schedstat, its children's from {how})")
    print("\nmemory after the run (smaps_rollup), resident all the time")
    for name, (rss, pss) in memory.items():
        print(f"  {name:34} RSS {rss:6.1f} MB, PSS {pss:6.1f} MB")
    print(f"  {'the awk handler':34} none between polls")

    kinds_med = {v: {k: med[v, k][0] for k in KINDS} for v in polls}
    header = "".join(f" {h:>22}" for h in handlers)
    print(f"\nratios, cpu (wall){'':26}{header}")

    def row(
        label: str, value: Callable[[str], tuple[float, float] | float], note: str = ""
    ) -> None:
        cells = []
        for h in handlers:
            got = value(h)
            cells.append(
                f"{got[0]:.2f}x ({got[1]:.2f}x)" if isinstance(got, tuple) else f"{got:.2f}x"
            )
        print(f"  {label:42}" + "".join(f" {c:>22}" for c in cells) + note)

    def over(h: str, kind: str, floor: str) -> tuple[float, float]:
        return med[h, kind][0] / med[floor, ""][0], med[h, kind][1] / med[floor, ""][1]

    row("fast poll / one cat", lambda h: over(h, "fast", ONE_CAT))
    row("fast poll / sh + cat", lambda h: over(h, "fast", SH_CAT))
    row("disk poll / sh + cat + df", lambda h: over(h, "disk", SH_CAT_DF))
    for k in KINDS:
        row(
            f"{LABELS[k]} / {old}",
            {
                h: (med[h, k][0] / med[old, k][0], med[h, k][1] / med[old, k][1]) for h in handlers
            }.__getitem__,
        )
    print("\naverage cpu per poll over a cycle / node_exporter's cpu per scrape, back to back")
    for d, a, what in ((6, 3, "alerts every 30 s"), *CADENCES):
        row(what, {h: cycle_average(kinds_med[h], d, a) / peer_cpu for h in handlers}.__getitem__)
    for v, d, a, what in [
        ("awk (gawk)", 6, 6, "gawk (a Fedora template without mawk), the defaults"),
        (old, 6, 3, f"before: {args.baseline}'s handler and defaults"),
    ]:
        if v in variants:
            average = cycle_average(kinds_med[v], d, a)
            print(f"  {what:52} {average:6.2f} ms  {average / peer_cpu:.2f}x")

    for spacing, (got, scrapes, periods) in cadences.items():
        scrape = statistics.median(scrapes)
        period = statistics.median(periods)
        print(
            f"\nat {spacing:g} s spacing, {args.ticks} ticks, each variant once per tick"
            f" (disk every {disk_every} polls, alerts every {alerts_every or 'never'}), medians"
        )
        print(
            f"  {PEER}: {scrape:.2f} ms cpu per scrape, {period:.2f} ms per period "
            f"(the scrape and its idle time after; back to back: {peer_cpu:.2f} ms)"
        )
        for name in floors:
            if (name, "") in got:
                print(f"  {name:34} {medians(got[name, ''])[0]:8.2f} ms cpu")
        averages = {}
        by_kind = {}
        for v in polls:
            by_kind[v] = {k: medians(s)[0] for (n, k), s in got.items() if n == v}
            averages[v] = cycle_average(by_kind[v], disk_every, alerts_every)
            parts = ", ".join(f"{k} {c:.2f}" for k, c in sorted(by_kind[v].items()))
            print(f"  {v:34} {averages[v]:8.2f} ms cpu per poll on average ({parts})")
        if agent is not None:
            phase = f"{spacing:g} s"
            mine = [(k, c) for (ph, k), c in agent.counts.items() if ph == phase]
            walls = ", ".join(
                f"{k} {medians(s)[1]:.2f}" for (n, k), s in sorted(got.items()) if n == SOCKET_AGENT
            )
            print(
                f"  {SOCKET_AGENT}: all its cpu over the {args.ticks} ticks,"
                f" idle time included: {agent_period[spacing]:.2f} ms per tick;"
                " polls the awk handler answered: "
                + ", ".join(f"{k} {fell}/{asked}" for k, (asked, fell) in sorted(mine))
                + f"; wall ms (the caller's): {walls}"
            )
        fast_floor = medians(got[ONE_CAT, ""])[0]
        for label, values in [
            ("cycle average / node_exporter's scrape", {h: averages[h] / scrape for h in handlers}),
            ("cycle average / node_exporter's period", {h: averages[h] / period for h in handlers}),
            ("fast poll / one cat", {h: medians(got[h, "fast"])[0] / fast_floor for h in handlers}),
        ]:
            row(label, values.__getitem__)
        print("  other cadences, from the kinds of poll measured here / node_exporter's scrape")
        for d, a, what in CADENCES:
            if all(set(cycle(d, a)) <= set(by_kind[h]) for h in handlers):
                row(
                    what,
                    {h: cycle_average(by_kind[h], d, a) / scrape for h in handlers}.__getitem__,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
