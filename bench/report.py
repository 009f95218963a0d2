"""Benchmark: ``sysmon report`` over a 30-qube week.

    python bench/report.py [--qubes 30] [--days 7]

Writes the days with bench/archive.py's writer (3 interfaces, 3 filesystems
per qube, 10 s), then times reading them and drawing the page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from archive import write_day

from sysmon.commands.report import load, render


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        for i in range(args.days):
            write_day(out, args.qubes, 3, 3, date(2025, 8, 25) + timedelta(days=i))
        size = sum(p.stat().st_size for p in out.rglob("*.csv"))
        print(
            f"{args.days} days x {args.qubes} qubes: {size / 1e6:.0f} MB of CSV (written in {time.perf_counter() - t:.0f} s)"
        )
        t = time.perf_counter()
        data = load([out], None, float("-inf"), float("inf"))
        read = time.perf_counter() - t
        t = time.perf_counter()
        render(data, out / "report")
        drawn = time.perf_counter() - t
        print(
            f"read {data.rows:,} rows in {read:.1f} s, drew the page in {drawn:.1f} s: {read + drawn:.1f} s in all"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
