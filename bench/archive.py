"""Benchmark: archiving a large day, and how late it makes a poll tick.

    python bench/archive.py [--qubes 30] [--ifaces 3] [--disks 3]

Writes one realistic full day (8,640 ticks at 10 s, bench/realistic.py:
random walks, bursty counters, a restart, an hour halted, timeouts) for N
qubes, then builds and verifies the day's archive in a worker thread, as
the daemon does, while a trio task ticks every 100 ms and records how late
each wake-up is.  Prints the day's bytes per file and per qube, the archive's
time, size and ratio, and the worst and median tick lateness beside a run
with no archive (the baseline, same machine, same moment).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realistic import generate

from sysmon import schema
from sysmon.store.archive import build_archive

DAY = date(2025, 8, 31)


def write_day(out: Path, qubes: int, ifaces: int, disks: int, day: date = DAY) -> dict[str, int]:
    """One realistic day (bench/realistic.py); its bytes per file."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    (folder,) = generate(out, qubes=qubes, start=start, ticks=8640, ifaces=ifaces, disks=disks)
    return {s.file_name: (folder / s.file_name).stat().st_size for s in schema.DAILY_FILES}


async def lateness_while(work: object | None, seconds: float = 0.0) -> list[float]:
    """Tick every 100 ms; return how late each wake-up was (s)."""
    late: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        interval = 0.1
        next_at = trio.current_time() + interval
        while not done.is_set():
            await trio.sleep_until(next_at)
            late.append(trio.current_time() - next_at)
            next_at += interval

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        if work is None:
            await trio.sleep(seconds)
        else:
            await trio.to_thread.run_sync(work)
        done.set()
    return late


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--ifaces", type=int, default=3)
    parser.add_argument("--disks", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        sizes = write_day(out, args.qubes, args.ifaces, args.disks)
        print(
            f"one day, {args.qubes} qubes, {args.ifaces} interfaces, {args.disks} filesystems, 10 s ({time.perf_counter() - t:.0f} s to write)"
        )
        total = sum(sizes.values())
        for name, size in sizes.items():
            print(f"  {name:<16} {size / 1e6:8.1f} MB   {size / args.qubes / 1e3:8.0f} kB per qube")
        print(
            f"  {'total':<16} {total / 1e6:8.1f} MB   {total / args.qubes / 1e6:8.2f} MB per qube per day"
        )
        t = time.perf_counter()
        built: list[Path] = []
        late_archive = trio.run(lateness_while, lambda: built.append(build_archive(out, DAY)))
        took = time.perf_counter() - t
        size = built[0].stat().st_size
        late_base = trio.run(lateness_while, None, took)
        print(
            f"archive: {took:.1f} s to build and verify, {size / 1e6:.1f} MB, ratio {total / size:.1f}:1"
        )
        print("tick lateness (ms)   median      max")
        for label, late in (("baseline", late_base), ("archiving", late_archive)):
            print(f"  {label:<16} {statistics.median(late) * 1e3:8.1f} {max(late) * 1e3:8.1f}")
        print("budget: a poll tick delayed by at most about 1 s")
        print(f"(machine: {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
