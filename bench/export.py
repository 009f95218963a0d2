"""Benchmark: ``sysmon export`` of a realistic 30-qube day, and promtool backfilling it.

    python bench/export.py [--qubes 30] [--data DIR] [--no-promtool]

Writes one realistic day (bench/realistic.py; kept in --data), then runs, each
as a child process whose peak resident memory is taken from wait4(): the
export to OpenMetrics (budget #17: well under a minute, under 100 MB), and
``promtool tsdb create-blocks-from openmetrics`` on its output with the
default 2-hour blocks beside ``--max-block-duration=24h`` (the flag
docs/integrations.md recommends).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realistic import ROOT, csv_bytes, generate

DAY = datetime(2025, 8, 26, tzinfo=UTC)


def measured(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak resident MiB and stderr of one child."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None  # a pipe was asked for
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({child.returncode}): {err[-2000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, err


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--data", type=Path, help="keep the generated day here (reused)")
    parser.add_argument("--no-promtool", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "out"
        if not (data / "done").exists():
            generate(data, qubes=args.qubes, start=DAY, ticks=8640)
            (data / "done").touch()
        size = sum(csv_bytes(data))
        print(f"one realistic day, {args.qubes} qubes at 10 s: {size / 1e6:,.0f} MB of CSV")
        om = Path(tmp) / "day.om"
        argv = [sys.executable, "-m", "sysmon", "export", str(data / DAY.date().isoformat())]
        wall, peak, err = measured([*argv, "--host", "bench", "--no-ledger", "-o", str(om)])
        print(f"export:   {wall:6.1f} s, peak {peak:5.0f} MiB, {om.stat().st_size / 1e6:,.0f} MB"
              f" of OpenMetrics ({err.strip().split(': ', 1)[-1].split(';')[0]})")  # fmt: skip
        promtool = shutil.which("promtool")
        if args.no_promtool or promtool is None:
            print("promtool: not run" + ("" if args.no_promtool else " (not installed)"))
            return 0
        for label, flags in (
            ("2 h blocks (default)", []),
            ("--max-block-duration=24h", ["--max-block-duration=24h"]),
        ):
            blocks = Path(tmp) / f"blocks-{len(flags)}"
            wall, peak, _ = measured(
                [
                    promtool,
                    "tsdb",
                    "create-blocks-from",
                    "openmetrics",
                    *flags,
                    str(om),
                    str(blocks),
                ]
            )
            print(f"promtool, {label:<26} {wall:6.1f} s, peak {peak:5.0f} MiB")
        print(f"(machine: {os.cpu_count()} cpus; sysmon from {ROOT})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
