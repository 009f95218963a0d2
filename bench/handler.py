"""Benchmark: the handler's CPU, wall time and processes per poll, beside named
floors, the shell handler it replaced, and Prometheus node_exporter scraped at
the handler's own cadence.

    python bench/handler.py [--runs 300] [--spacing 10,1] [--ticks 60]
                            [--baseline b46ce42] [--compare REV]

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
for both, side by side.  The journal is a real one of 1,000 entries read by
journalctl (built with systemd-journal-remote), since journalctl is the
handler's one expensive child.
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

    def resident_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


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
    args = parser.parse_args()
    spacings = [float(s) for s in args.spacing.split(",") if s.strip()]
    disk_every, alerts_every = (int(n) for n in args.cycle.split(","))
    if not (Path(REMOTE).exists() and shutil.which("journalctl")):
        print("systemd-journal-remote or journalctl missing: no journal to read", file=sys.stderr)
        return 1
    if not Path(NODE_EXPORTER).exists():
        print(f"{NODE_EXPORTER} missing: apt-get install prometheus-node-exporter", file=sys.stderr)
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
        jobs: list[tuple[str, str, Job]] = [
            (v, k, functools.partial(polls[v], k)) for v in variants for k in KINDS
        ]
        jobs += [(name, "", job) for name, job in floors.items()]
        peer = NodeExporter()
        try:
            jobs.append((PEER, "", peer.scrape))
            samples: dict[tuple[str, str], list[tuple[float, float]]] = {
                (v, k): [] for v, k, _ in jobs
            }
            for n in range(args.runs):
                random.shuffle(jobs)
                for v, k, job in jobs:
                    samples[v, k].append(job())
                print(f"\r  back to back: round {n + 1}/{args.runs}", end="", file=sys.stderr)
            print(file=sys.stderr)
            kinds = cycle(disk_every, alerts_every)
            cadences = {s: at_cadence(s, args.ticks, polls, floors, peer, kinds) for s in spacings}
            resident = peer.resident_mb()
        finally:
            peer.close()
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
    print(f"\nback to back: {args.runs} interleaved rounds, medians")
    print(f"  {'':34} {'cpu ms':>8} {'wall ms':>8} {'processes':>10}")
    for v in variants:
        print(f"  {v}")
        for k in KINDS:
            started = spawned[v, k]
            print(
                f"    {LABELS[k]:32} {med[v, k][0]:8.2f} {med[v, k][1]:8.2f} "
                f"{'' if started is None else started:>10}"
            )
    for name in floors:
        started = spawned[name, ""]
        print(
            f"  {name:34} {med[name, ''][0]:8.2f} {med[name, ''][1]:8.2f} "
            f"{'' if started is None else started:>10}"
        )
    peer_cpu, peer_wall = med[PEER, ""]
    print(
        f"  {PEER + ', one scrape':34} {peer_cpu:8.2f} {peer_wall:8.2f}"
        f"   (its threads' schedstat; {resident:.1f} MB resident all the time)"
    )

    kinds_med = {v: {k: med[v, k][0] for k in KINDS} for v in variants}
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
        for v in variants:
            by_kind[v] = {k: medians(s)[0] for (n, k), s in got.items() if n == v}
            averages[v] = cycle_average(by_kind[v], disk_every, alerts_every)
            parts = ", ".join(f"{k} {c:.2f}" for k, c in sorted(by_kind[v].items()))
            print(f"  {v:34} {averages[v]:8.2f} ms cpu per poll on average ({parts})")
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
    print("  (the handler keeps no resident memory between polls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
