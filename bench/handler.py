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
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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


def run_case(name: str, runs: int, env: dict[str, str] | None, argument: str = "") -> None:
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    print(f"handler: {HANDLER} under sh = {shutil.which('sh')}")
    run_case("this machine as it is", args.runs, None)
    if Path(REMOTE).exists() and shutil.which("journalctl"):
        with tempfile.TemporaryDirectory() as tmp:
            make_journal(Path(tmp), 1000)
            env = {"PATH": "/usr/bin:/bin", "SYSMON_JOURNAL_DIR": tmp}
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
            cursor = f"{boot}.{int(time.time() * 1_000_000) - 5_000_000}"
            run_case(
                "with a real journal of 1,000 entries, cursor 5 s back", args.runs, env, cursor
            )
    else:
        print(
            "\n(systemd-journal-remote or journalctl missing: journal case skipped)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
