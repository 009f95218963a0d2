"""Benchmark: `sysmon report` on a week of 400 DispVMs, each up an hour, each
naming a fresh mount every poll (what made the report run past 5 minutes and
draw 68,000-pixel charts before it bounded what it draws).

    python bench/report_dispvms.py

Prints the wall time of the whole command and the rows read.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sysmon import schema  # noqa: E402

DAYS, PER_DAY, TICKS = 7, 57, 360  # 399 DispVMs, an hour each at 10 s


def write_week(out: Path, seed: int = 1) -> None:
    """Seven day folders of short-lived DispVMs with random CPU and invented mounts."""
    rng = random.Random(seed)
    start = datetime(2025, 8, 25, tzinfo=UTC)
    for d in range(DAYS):
        day = start + timedelta(days=d)
        folder = out / day.date().isoformat()
        folder.mkdir(parents=True)
        files = {s.file_name: (folder / s.file_name).open("wb") for s in schema.DAILY_FILES}
        for daily in schema.DAILY_FILES:
            files[daily.file_name].write(daily.header)
        for q in range(PER_DAY):
            vm = f"disp{d * PER_DAY + q:04d}"
            begin = rng.randrange(0, 86400 - 3600) // 10 * 10
            for i in range(TICKS):
                ts = day + timedelta(seconds=begin + 10 * i)
                cpu = rng.random() * 50
                system = [ts, vm, cpu, 5.0, 95.0 - cpu, 0.1, 0.1, 0.1, 400_000, 200_000]
                files["system.csv"].write(schema.SYSTEM.format_row([*system, 200_000, 0, 0, 1, 0]))
                files["network.csv"].write(
                    schema.NETWORK.format_row([ts, vm, "eth0", i * 5000, 0, 0, i * 2000, 0, 0])
                )
                files["disk.csv"].write(
                    schema.DISK.format_row([ts, vm, "/dev/xvdb", f"/m{i}", 1000, 500, 500, 50])
                )
                files["scrapes.csv"].write(schema.SCRAPES.format_row([ts, vm, "ok", 5, 900, 10, 0]))
        for f in files.values():
            f.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        write_week(out)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "sysmon", "report", str(out), "--out", str(Path(tmp) / "r")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        print(
            f"report of {DAYS * PER_DAY} DispVMs over {DAYS} days: "
            f"{time.perf_counter() - start:.1f} s ({done.stdout.strip().split('(')[-1]}"
        )


if __name__ == "__main__":
    main()
