"""Measure the CPU and memory gap an honest qube shows between its own view and Xen's.

    python bench/views_gap.py [--seconds 300] [--tick 10] [--window 3]

Runs the real handler (as qrexec does: its first line, mawk) once a second
on this machine and parses it as the daemon does.  Each ``--tick`` seconds
the qube's own CPU figure is what sysmon writes as ``cpu_self``: user +
system over the whole tick.  Xen's ``cpu_usage`` is a share over the last
stats interval (``--window``, 3 s by default in qubesd) that ended up to one
interval before the tick, so it is taken here from the same counters over
that shorter, earlier window: the gap between the two is the part of an
honest qube's gap that comes from the views sampling different windows,
which no threshold can tell from a lie for one tick.  What Xen counts on
top (the guest kernel's time outside its tick accounting, event channels)
cannot be measured without Xen; docs/views.md says how it is allowed for.

Memory: MemTotal against the memory the kernel has online
(/sys/devices/system/memory), the share an honest kernel keeps for itself.

``--burst`` measures a qube of one vCPU whose only load is bursty (busy 0.5
to 6 s, idle 0.5 to 10 s, as a build or a browser; at nice 10): its
/proc/stat is the burning process's own user and system time, written each
second into a copy of tests/fixtures/proc/this-machine that the handler
reads (SYSMON_PROC_ROOT).  Xen would count exactly that process's run
time, so the gap is the windows' alone; on a machine kept busy by other
work (the whole machine's counters barely move) this is the case where the
two windows differ most.

Prints the gap's percentiles and, for each threshold, the longest run of
ticks over it: a threshold whose longest honest run is under the sustain
time never alerts on an honest qube like this one.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sysmon.protocol.parse import parse_metrics_untrusted
from sysmon.transform.rates import cpu_percent, ticks_of

HANDLER = Path(__file__).resolve().parents[1] / "handler" / "qubes.Metrics.Get"


ROOT = Path(__file__).resolve().parents[1]
HZ = 100


def sample(env: dict[str, str] | None = None) -> tuple[int, ...]:
    run = subprocess.run([str(HANDLER)], capture_output=True, check=True, timeout=30, env=env)
    out = run.stdout
    snap = parse_metrics_untrusted(out)
    assert snap.sys is not None
    ticks = ticks_of(snap.sys)
    assert ticks is not None
    return ticks


def busy(before: tuple[int, ...], after: tuple[int, ...]) -> float | None:
    cpu = cpu_percent(before, after)
    return None if cpu is None else cpu.user + cpu.system


def memory_reserved() -> str:
    blocks = Path("/sys/devices/system/memory")
    size = int((blocks / "block_size_bytes").read_text(), 16)
    online = sum(1 for b in blocks.glob("memory*") if (b / "online").read_text().strip() == "1")
    total_kb = online * size // 1024
    mem_total = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    share = 100 * (total_kb - mem_total) / total_kb
    return f"memory online {total_kb} kB, MemTotal {mem_total} kB: {share:.1f}% kept by the kernel"


def burn(seed: int) -> None:
    """One CPU busy and idle in turns, until killed."""
    rng = random.Random(seed)
    while True:
        until = time.monotonic() + rng.uniform(0.5, 6)
        while time.monotonic() < until:
            pass
        time.sleep(rng.uniform(0.5, 10))


def write_stat(path: Path, pid: int, elapsed: float) -> None:
    """A one-vCPU /proc/stat whose busy time is process ``pid``'s own."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])  # utime, stime (fields 14, 15)
    idle = max(0, round(elapsed * HZ) - user - system)
    rest = path.read_text().splitlines()[1:]
    path.write_text("\n".join([f"cpu  {user} 0 {system} {idle} 0 0 0 0 0 0", *rest]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--tick", type=int, default=10)
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--burst", action="store_true")
    args = parser.parse_args()
    burner = None
    env = None
    if args.burst:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        code += f"import views_gap; views_gap.burn({args.seed})"
        burner = subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", code])
        proc = Path(tempfile.mkdtemp()) / "proc"
        shutil.copytree(ROOT / "tests/fixtures/proc/this-machine", proc)
        env = {
            **os.environ,
            "SYSMON_PROC_ROOT": str(proc),
            "SYSMON_DF_FIXTURE": str(proc / "df.txt"),
            "PATH": f"{ROOT / 'tests/bin'}:{os.environ['PATH']}",
        }
        born = time.monotonic()
    rng = random.Random(args.seed)  # where in its interval Xen's figure ends
    samples: list[tuple[int, ...]] = []
    start = time.monotonic()
    for i in range(args.seconds + 1):
        if burner is not None:
            write_stat(proc / "stat", burner.pid, time.monotonic() - born)
        samples.append(sample(env))
        time.sleep(max(0.0, start + i + 1 - time.monotonic()))
    if burner is not None:
        burner.kill()
        burner.wait()
    gaps: list[float] = []
    for end in range(args.tick, len(samples), args.tick):
        own = busy(samples[end - args.tick], samples[end])
        lag = rng.randrange(args.window)  # the latest stats event came 0..window-1 s before
        xen = busy(samples[end - lag - args.window], samples[end - lag])
        if own is not None and xen is not None:
            gaps.append(xen - own)
    cuts = statistics.quantiles([abs(g) for g in gaps], n=100)
    print(f"{len(gaps)} ticks of {args.tick} s, Xen's window {args.window} s")
    print(
        f"|gap| p50 {cuts[49]:.1f}  p95 {cuts[94]:.1f}  p99 {cuts[98]:.1f}  "
        f"max {max(abs(g) for g in gaps):.1f} points; Xen over self at most {max(gaps):.1f}"
    )
    for threshold in (5, 10, 20, 30):
        run = longest = 0
        for g in gaps:
            run = run + 1 if g > threshold else 0
            longest = max(longest, run)
        print(f"gap > {threshold:>2} points: longest run {longest} ticks ({longest * args.tick} s)")
    print(memory_reserved())


if __name__ == "__main__":
    main()
