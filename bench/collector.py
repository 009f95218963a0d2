"""Benchmark: the collector's poll cycle against N fake qubes, beside a serial loop.

    python bench/collector.py [--sizes 10,50,200] [--cycles 5] [--delay 0.2]

Each fake qube answers after --delay seconds with a recorded handler payload
(the fake is sh + sleep + cat, so its own start-up stays small).  For each
size it runs the daemon's own tick, `Daemon.poll` -- what `sysmon once` runs
(discovery, health, concurrent scrape under the default concurrency cap and
timeout, parse, rows, rules, fsynced files, state) -- for
--cycles cycles and prints the median cycle wall time and the collector's own
CPU per qube-scrape (utime+stime of this process; children excluded).  Beside
it, the seed's shell loop: `qrexec-client-vm` for each qube, one after another.
Then a simulated day (MockClock, fake in-process qubes) for resident memory
and its growth.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakequbes.world import make_world  # noqa: E402

from sysmon.collect.qrexec import Qrexec, QrexecDiscovery  # noqa: E402
from sysmon.commands.once import run_once  # noqa: E402
from sysmon.config import Config  # noqa: E402
from sysmon.logconfig import configure_logging  # noqa: E402

PAYLOAD = ROOT / "tests" / "fixtures" / "golden" / "this-machine.txt"


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_size(n: int, cycles: int, delay: float, tmp: Path) -> tuple[float, float, float]:
    names = [f"q{i:03d}" for i in range(n)]
    env = make_world(tmp / f"world{n}", dict.fromkeys(names, f"slow-payload {delay} {PAYLOAD}"))
    os.environ.update(env)
    config = Config(out_dir=tmp / f"out{n}")
    walls, cpus = [], []
    for _ in range(cycles):
        start_cpu, start = cpu_self(), time.perf_counter()
        report = trio.run(run_once, config, QrexecDiscovery(), Qrexec())
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_self() - start_cpu)
        assert {r.status for r in report.results} == {"ok"}, {r.status for r in report.results}
        time.sleep(
            1.05 - (time.perf_counter() - start) % 1
        )  # one poll per second: rows keep their ts
    serial = [
        "sh",
        "-c",
        'for vm in "$@"; do qrexec-client-vm "$vm" qubes.Metrics.Get >/dev/null; done',
        "sh",
        *names,
    ]
    start = time.perf_counter()
    subprocess.run(serial, check=True, env=os.environ)
    serial_wall = time.perf_counter() - start
    return statistics.median(walls), statistics.median(cpus) / n, serial_wall


def simulated_day_memory() -> tuple[float, float, float]:
    """RSS at start, after a simulated hour and after a simulated day (30 qubes)."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from fakes import FakeQubes, daemon_on_virtual_time  # noqa: PLC0415

    marks: list[float] = [rss_mb()]

    async def day(tmp: Path) -> None:
        qubes = FakeQubes(dict.fromkeys((f"q{i:02d}" for i in range(30)), "ok"))
        c = daemon_on_virtual_time(tmp, qubes, datetime(2025, 8, 31, 0, 0, 5, tzinfo=UTC))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.tick_loop, nursery)
            await trio.sleep(3600)
            marks.append(rss_mb())
            await trio.sleep(86400 - 3600 - 10)
            marks.append(rss_mb())
            nursery.cancel_scope.cancel()

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(day, Path(tmp), clock=trio.testing.MockClock(autojump_threshold=0))
    return marks[0], marks[1], marks[2]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--no-day", action="store_true", help="skip the simulated day")
    args = parser.parse_args()
    # As under systemd: JSON lines at INFO, written (here to /dev/null).
    configure_logging(json_output=True, stream=open(os.devnull, "w"))  # noqa: SIM115, PTH123
    config = Config()
    print(
        f"defaults: concurrency {config.concurrency}, per-qube timeout {config.scrape_timeout:g} s; each fake answers after {args.delay:g} s"
    )
    print(f"{'qubes':>6} {'cycle s':>8} {'serial s':>9} {'speed-up':>9} {'cpu ms/scrape':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.sizes.split(",")):
            wall, cpu, serial = bench_size(n, args.cycles, args.delay, Path(tmp))
            print(f"{n:>6} {wall:8.2f} {serial:9.2f} {serial / wall:8.1f}x {cpu * 1000:14.2f}")
    print(
        "budgets: 50 qubes in <= 1 s per cycle and >= 10x the serial loop; <= 2 ms collector CPU per qube-scrape"
    )
    if not args.no_day:
        import trio.testing  # noqa: PLC0415, F401

        start, hour, day = simulated_day_memory()
        print(
            f"resident memory (simulated day, 30 qubes): start {start:.1f} MB, after 1 h {hour:.1f} MB, after 24 h {day:.1f} MB, growth {day - hour:+.2f} MB"
        )
        print("budgets: <= 60 MB resident, < 1 MB growth over the day")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
