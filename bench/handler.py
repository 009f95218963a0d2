"""Benchmark: the handler's CPU, wall time and processes per poll, beside a floor,
the shell handler it replaced, and Prometheus node_exporter.

    python bench/handler.py [--runs 300] [--baseline b46ce42]

Everything is measured in one run, interleaved (each round runs every variant
and scrapes node_exporter once, in a shuffled order), so all see the same
machine noise; medians are printed with their ratios.  A handler's CPU is
user+system of its whole process tree (RUSAGE_CHILDREN), wall is fork to
reap; node_exporter's CPU per scrape is the growth of its threads' run time
(/proc/PID/task/*/schedstat, in ns), wall the HTTP request.

Variants: the handler as qrexec runs it (its first line: mawk), the same file
under gawk (Fedora's own awk, for a template without mawk), and the POSIX-sh
handler of commit --baseline (taken from git, run by /bin/sh) -- the before.
The floor (bench/floor.sh) cats the same /proc files and, for a full poll,
runs df on the same filesystems.  The journal is a real one of 1,000 entries
read by journalctl (built with systemd-journal-remote), since journalctl is
the handler's one expensive child; without those tools that part is skipped.
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
KINDS = ("full", "disk", "alerts", "fast")
LABELS = {
    "full": "full (df + journalctl)",
    "disk": "disk, no alerts (df)",
    "alerts": "alerts, no disk (journalctl)",
    "fast": "fast: /proc only",
}


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


def make_journal(directory: Path, entries: int) -> None:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    now_us = int(time.time() * 1_000_000)
    export = directory / "in.export"
    with export.open("w") as f:
        for i in range(entries):
            f.write(
                f"__REALTIME_TIMESTAMP={now_us - (entries - i) * 1000}\n"
                f"__MONOTONIC_TIMESTAMP={i + 1}\n"
                f"_BOOT_ID={boot}\nPRIORITY={3 + i % 5}\nSYSLOG_IDENTIFIER=bench\n_PID=1\n"
                f"MESSAGE=benchmark entry {i}\n\n"
            )
    subprocess.run(
        [REMOTE, f"--output={directory / 'bench.journal'}", str(export)],
        check=True,
        capture_output=True,
    )
    export.unlink()


def mounts_of(handler: Sequence[str], env: dict[str, str]) -> list[str]:
    out = subprocess.run([*handler, "noalerts."], env=env, capture_output=True, check=True)
    mounts = []
    for line in out.stdout.decode().splitlines():
        if line.startswith("disk: "):
            fields = dict(t.split("=", 1) for t in line[6:].split(" "))
            mounts.append(fields["mount"].encode().decode("unicode_escape"))
    return mounts


def baseline_handler(commit: str, directory: Path) -> Path:
    path = directory / "qubes.Metrics.Get.sh"
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:handler/qubes.Metrics.Get"],
        capture_output=True,
        check=True,
    )
    path.write_bytes(shown.stdout)
    return path


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

    def scrape(self) -> tuple[float, float]:
        """(cpu ms, wall ms) of one scrape, node_exporter's threads only."""
        before = task_cpu_ns(self.proc.pid)
        start = time.perf_counter()
        urllib.request.urlopen(self.url, timeout=5).read()
        wall = time.perf_counter() - start
        time.sleep(0.005)  # let its threads finish the scrape and go idle
        return (task_cpu_ns(self.proc.pid) - before) / 1e6, wall * 1000

    def resident_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def cycle(disk_every: int, alerts_every: int) -> list[str]:
    """The kinds of poll the collector asks for over one cycle (health.argument's rule)."""
    kinds = []
    for n in range(math.lcm(disk_every, alerts_every)):
        disk, alerts = n % disk_every == 0, n % alerts_every == 0
        kinds.append(
            "full" if disk and alerts else "disk" if disk else "alerts" if alerts else "fast"
        )
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--baseline", default=BASELINE, help="commit of the shell handler")
    args = parser.parse_args()
    if not (Path(REMOTE).exists() and shutil.which("journalctl")):
        print("systemd-journal-remote or journalctl missing: no journal to read", file=sys.stderr)
        return 1
    interpreter = HANDLER.read_text().split("\n", 1)[0].removeprefix("#!").split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "journal"
        journal.mkdir()
        make_journal(journal, 1000)
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "SYSMON_JOURNAL_DIR": str(journal)}
        variants = {"awk (mawk)": [str(HANDLER)]}
        if shutil.which("gawk"):
            variants["awk (gawk)"] = ["gawk", "-f", str(HANDLER)]
        variants[f"sh {args.baseline}"] = ["sh", str(baseline_handler(args.baseline, Path(tmp)))]
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
        cursor = f"{boot[:16]}.{int(time.time() * 1_000_000) - 5_000_000}"
        arguments = {
            "full": cursor,
            "disk": "noalerts.",
            "alerts": "nodisk." + cursor,
            "fast": "nodisk.noalerts.",
        }
        mounts = mounts_of(variants["awk (mawk)"], env)
        floors = {
            "floor, full: cat /proc + df": (["sh", str(FLOOR), *mounts], env),
            "floor, fast: cat /proc": (["sh", str(FLOOR)], {**env, "FLOOR_NO_DF": "1"}),
        }
        runs: list[tuple[str, str, Sequence[str], dict[str, str]]] = [
            (v, k, [*argv, arguments[k]], env) for v, argv in variants.items() for k in KINDS
        ]
        runs += [(name, "", argv, floor_env) for name, (argv, floor_env) in floors.items()]
        jobs: list[tuple[str, str, Callable[[], tuple[float, float]]]] = [
            (v, k, functools.partial(measure, argv, job_env)) for v, k, argv, job_env in runs
        ]
        peer = NodeExporter() if Path(NODE_EXPORTER).exists() else None
        try:
            if peer is not None:
                jobs.append((PEER, "", peer.scrape))
            samples: dict[tuple[str, str], list[tuple[float, float]]] = {
                (v, k): [] for v, k, _ in jobs
            }
            for _ in range(args.runs):
                random.shuffle(jobs)
                for v, k, job in jobs:
                    samples[v, k].append(job())
            resident = peer.resident_mb() if peer is not None else 0.0
        finally:
            if peer is not None:
                peer.close()
        spawned = {(v, k): processes(argv, job_env) for v, k, argv, job_env in runs if k}
    med = {
        key: (statistics.median(c for c, _ in s), statistics.median(w for _, w in s))
        for key, s in samples.items()
    }
    print(f"handler {HANDLER} (first line: {interpreter}); /bin/sh = {os.path.realpath('/bin/sh')}")
    print(
        f"{args.runs} interleaved rounds, medians; a real journal of 1,000 entries, cursor 5 s back"
    )
    print(f"\n  {'':30} {'cpu ms':>8} {'wall ms':>8} {'processes':>10}")
    for v in variants:
        print(f"  {v}")
        for k in KINDS:
            n = spawned[v, k]
            print(
                f"    {LABELS[k]:28} {med[v, k][0]:8.2f} {med[v, k][1]:8.2f} "
                f"{'' if n is None else n:>10}"
            )
    for name in floors:
        print(f"  {name:30} {med[name, ''][0]:8.2f} {med[name, ''][1]:8.2f}")

    new, old = "awk (mawk)", f"sh {args.baseline}"
    fast_floor = med["floor, fast: cat /proc", ""]
    full_floor = med["floor, full: cat /proc + df", ""]
    print("\nratios")
    print(
        f"  fast poll / cat-only floor: {med[new, 'fast'][0] / fast_floor[0]:.2f}x cpu, "
        f"{med[new, 'fast'][1] / fast_floor[1]:.2f}x wall   (budget <= 1.0)"
    )
    print(
        f"  disk poll / cat + df floor: {med[new, 'disk'][0] / full_floor[0]:.2f}x cpu, "
        f"{med[new, 'disk'][1] / full_floor[1]:.2f}x wall"
    )
    for k in KINDS:
        print(
            f"  {LABELS[k]:28} awk / sh: {med[new, k][0] / med[old, k][0]:.2f}x cpu, "
            f"{med[new, k][1] / med[old, k][1]:.2f}x wall"
            + ("   (budget: full <= 1.0, no worse than before)" if k == "full" else "")
        )

    if (PEER, "") not in med:
        print(f"\n({NODE_EXPORTER} missing: apt-get install prometheus-node-exporter)")
        return 0
    cpu, wall = med[PEER, ""]
    print("\nPrometheus node_exporter on loopback, one scrape of /metrics in each round")
    print(
        f"  cpu per scrape {cpu:.2f} ms (its threads' schedstat), wall {wall:.2f} ms, "
        f"resident {resident:.1f} MB all the time"
    )
    print("\naverage cpu per poll over a cycle / node_exporter's cpu per scrape")
    rows = [
        (new, 6, 6, "the defaults: disk and alerts once a minute"),
        (new, 6, 3, "alerts every 30 s"),
        (new, 6, 12, "alerts every 2 min"),
        (old, 6, 3, f"before: {args.baseline}'s handler and defaults"),
        (old, 6, 6, f"{args.baseline}'s handler, today's defaults"),
    ]
    if "awk (gawk)" in variants:
        rows.insert(1, ("awk (gawk)", 6, 6, "the defaults, gawk (a Fedora template without mawk)"))
    for v, disk_every, alerts_every, what in rows:
        kinds = cycle(disk_every, alerts_every)
        average = sum(med[v, k][0] for k in kinds) / len(kinds)
        budget = "   (budget <= 0.5)" if (v, disk_every, alerts_every) == (new, 6, 6) else ""
        print(f"  {what:52} {average:6.2f} ms  {average / cpu:.2f}x{budget}")
    print("  (the handler keeps no resident memory between polls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
