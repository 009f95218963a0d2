"""Benchmark: archiving a large day, and how late it makes a poll tick.

    python bench/archive.py [--qubes 30] [--ifaces 3] [--disks 3]

Writes one full day (8,640 ticks at 10 s) for N qubes with the real row
writer, then builds and verifies the day's archive in a worker thread, as
the daemon does, while a trio task ticks every 100 ms and records how late
each wake-up is.  Prints the day's bytes per file and per qube, the archive's
time, size and ratio, and the worst and median tick lateness beside a run
with no archive (the baseline, same machine, same moment).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import trio

from sysmon import schema
from sysmon.store.archive import build_archive

DAY = date(2025, 8, 31)


def write_day(out: Path, qubes: int, ifaces: int, disks: int, day: date = DAY) -> dict[str, int]:
    """A realistic day: the same row shapes the daemon writes, appended in bulk."""
    folder = out / day.isoformat()
    folder.mkdir(parents=True)
    files = {s.file_name: (folder / s.file_name).open("wb") for s in schema.DAILY_FILES}
    for daily in schema.DAILY_FILES:
        files[daily.file_name].write(daily.header)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    for tick in range(8640):
        ts = start + timedelta(seconds=10 * tick)
        for q in range(qubes):
            vm = f"qube-{q:03d}"
            n = tick + 1
            files["system.csv"].write(
                schema.SYSTEM.format_row(
                    [
                        ts,
                        vm,
                        3.1,
                        1.7,
                        95.0,
                        0.37,
                        0.28,
                        0.22,
                        4_000_000,
                        1_200_000 + n,
                        2_800_000 - n,
                        1_000_000,
                        0,
                        1,
                        0,
                    ]
                )
            )
            for i in range(ifaces):
                files["network.csv"].write(
                    schema.NETWORK.format_row([ts, vm, f"eth{i}", 1000 * n, 0, 0, 700 * n, 0, 0])
                )
            files["connections.csv"].write(schema.CONNECTIONS.format_row([ts, vm, 12, 4]))
            for d in range(disks):
                files["disk.csv"].write(
                    schema.DISK.format_row(
                        [
                            ts,
                            vm,
                            f"/dev/xvd{'abc'[d]}",
                            ["/", "/rw", "/tmp"][d],
                            20_000_000,
                            5_000_000 + n,
                            15_000_000 - n,
                            26,
                        ]
                    )
                )
            files["scrapes.csv"].write(schema.SCRAPES.format_row([ts, vm, "ok", 12, 950, 9, 0]))
            files["xen.csv"].write(schema.XEN.format_row([ts, vm, 3, 6, 1000 * n, 4_000_000]))
        if tick % 6 == 0:
            for q in range(qubes):
                files["qubes.csv"].write(schema.QUBES.format_row([ts, f"qube-{q:03d}", "Running"]))
    for f in files.values():
        f.close()
    return {name: (folder / name).stat().st_size for name in files}


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
