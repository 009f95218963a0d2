"""Benchmark: the handler's CPU and wall time per run, beside the cat-only floor.

    python bench/handler.py [--runs 300]

Runs are interleaved (handler, floor, handler, ...) so both see the same
machine noise; medians are printed with the ratio.  CPU is user+system of
the whole process tree (RUSAGE_CHILDREN), wall is fork to reap.  Two cases:
as on this machine (journal readable or not), and with a real journal of
1,000 entries read by journalctl (built with systemd-journal-remote), since
journalctl is the handler's one expensive child.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "handler" / "qubes.Metrics.Get"
FLOOR = ROOT / "bench" / "floor.sh"
REMOTE = "/lib/systemd/systemd-journal-remote"


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(cpu ms, wall ms) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1000, wall * 1000


def mounts_of_handler(env: dict[str, str] | None) -> list[str]:
    out = subprocess.run(["sh", str(HANDLER)], env=env, capture_output=True, check=True).stdout
    mounts = []
    for line in out.decode().splitlines():
        if line.startswith("disk: "):
            fields = dict(t.split("=", 1) for t in line[6:].split(" "))
            mounts.append(fields["mount"].encode().decode("unicode_escape"))
    return mounts


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


def run_case(name: str, runs: int, env: dict[str, str] | None, argument: str = "") -> float:
    mounts = mounts_of_handler(env)
    handler_argv = ["sh", str(HANDLER), *([argument] if argument else [])]
    floor_argv = ["sh", str(FLOOR), *mounts]
    results: dict[str, list[tuple[float, float]]] = {"handler": [], "floor": []}
    for _ in range(runs):
        results["handler"].append(measure(handler_argv, env))
        results["floor"].append(measure(floor_argv, env))
    med = {
        key: (statistics.median(c for c, _ in values), statistics.median(w for _, w in values))
        for key, values in results.items()
    }
    print(f"\n{name} ({runs} interleaved runs each, medians)")
    print(f"  {'':10} {'cpu ms':>8} {'wall ms':>8}")
    for key in ("handler", "floor"):
        print(f"  {key:10} {med[key][0]:8.2f} {med[key][1]:8.2f}")
    ratio_cpu = med["handler"][0] / med["floor"][0] if med["floor"][0] else float("nan")
    ratio_wall = med["handler"][1] / med["floor"][1]
    print(
        f"  {'ratio':10} {ratio_cpu:8.2f}x {ratio_wall:7.2f}x"
        "   (budget: 1.5x; 5 ms cpu, 10 ms wall)"
    )
    return med["handler"][0]


NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
#: The collector's defaults: disk every 6th poll, alerts every 3rd (a cycle of 6).
CYCLE = ("full", "fast", "fast", "alerts", "fast", "fast")


def cycle_case(runs: int, env: dict[str, str], cursor: str) -> float:
    """The kinds of poll of one cycle, interleaved with the /proc-only floor.

    Returns the average CPU per poll over the cycle (ms).
    """
    argument = {"full": cursor, "alerts": "nodisk." + cursor, "fast": "nodisk.noalerts."}
    floor_env = {**env, "FLOOR_NO_DF": "1"}
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in (*argument, "floor")}
    for _ in range(runs):
        for kind, arg in argument.items():
            results[kind].append(measure(["sh", str(HANDLER), arg], env))
        results["floor"].append(measure(["sh", str(FLOOR)], floor_env))
    med = {
        key: (statistics.median(c for c, _ in values), statistics.median(w for _, w in values))
        for key, values in results.items()
    }
    print(f"\nthe kinds of poll, real journal of 1,000 entries ({runs} interleaved runs each)")
    print(f"  {'':26} {'cpu ms':>8} {'wall ms':>8}")
    labels = {
        "full": "full (df + journalctl)",
        "alerts": "alerts, no disk",
        "fast": "fast: /proc only",
        "floor": "floor: cat /proc, no df",
    }
    for key, label in labels.items():
        print(f"  {label:26} {med[key][0]:8.2f} {med[key][1]:8.2f}")
    print(
        f"  fast / floor: {med['fast'][0] / med['floor'][0]:.2f}x cpu, "
        f"{med['fast'][1] / med['floor'][1]:.2f}x wall   (budget: 1.0x)"
    )
    average = sum(med[kind][0] for kind in CYCLE) / len(CYCLE)
    print(f"  average cpu per poll over a cycle {'/'.join(CYCLE)}: {average:.2f} ms")
    return average


def proc_cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def node_exporter_case(runs: int) -> tuple[float, float, float] | None:
    """(cpu ms per scrape, wall ms per scrape, resident MB) of node_exporter on loopback."""
    if not Path(NODE_EXPORTER).exists():
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen(
        [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.05)
        for _ in range(5):
            urllib.request.urlopen(url, timeout=5).read()
        before = proc_cpu_ms(proc.pid)
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            urllib.request.urlopen(url, timeout=5).read()
            walls.append((time.perf_counter() - start) * 1000)
        cpu = (proc_cpu_ms(proc.pid) - before) / runs
        rss = next(
            int(line.split()[1]) / 1024
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        return cpu, statistics.median(walls), rss
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    print(f"handler: {HANDLER} under sh = {shutil.which('sh')}")
    handler_cpu = run_case("this machine as it is", args.runs, None)
    cycle_cpu: float | None = None
    if Path(REMOTE).exists() and shutil.which("journalctl"):
        with tempfile.TemporaryDirectory() as tmp:
            make_journal(Path(tmp), 1000)
            env = {"PATH": "/usr/bin:/bin", "SYSMON_JOURNAL_DIR": tmp}
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
            cursor = f"{boot}.{int(time.time() * 1_000_000) - 5_000_000}"
            run_case(
                "with a real journal of 1,000 entries, cursor 5 s back", args.runs, env, cursor
            )
            cycle_cpu = cycle_case(args.runs, env, cursor)
    else:
        print(
            "\n(systemd-journal-remote or journalctl missing: journal case skipped)",
            file=sys.stderr,
        )
    peer = node_exporter_case(args.runs)
    if peer is None:
        print(
            f"\n({NODE_EXPORTER} missing: apt-get install prometheus-node-exporter)",
            file=sys.stderr,
        )
        return 0
    cpu, wall, rss = peer
    print(f"\nPrometheus node_exporter on loopback, {args.runs} scrapes of /metrics")
    print(f"  cpu per scrape {cpu:.2f} ms, wall {wall:.2f} ms, resident {rss:.1f} MB all the time")
    print(f"  full poll cpu / node_exporter cpu per scrape: {handler_cpu / cpu:.2f}")
    if cycle_cpu is not None:
        print(
            f"  average poll over a cycle, with a readable journal / node_exporter: "
            f"{cycle_cpu / cpu:.2f} (budget <= 0.5); the handler keeps no resident memory"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
