"""Benchmark: ``sysmon report`` over a realistic 30-qube week, beside the reader it replaced.

    python bench/report.py [--qubes 30] [--days 7] [--baseline 687db29] [--data DIR]

Writes the week with bench/realistic.py (random walks, bursty counters, a
restart, an hour halted, timeouts, quoted alerts; kept in --data for the next
run), then runs, each in a fresh process, today's report and the one of
commit --baseline (the csv-module reader, taken from git): wall time to read
and to draw, CPU, and peak memory of the process and its workers together
(PSS sampled every 20 ms).  Then it compares the two readers' series point by
point.  Budget (#18): read and drawn in <= 10 s on 2 cores, peak <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realistic import ROOT, csv_bytes, week

#: Runs in a fresh interpreter: read, draw, time both, keep the series for the comparison.
_RUN = textwrap.dedent(
    """
    import json, pickle, sys, time, resource
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    if sys.argv[3] == "new":
        from sysmon.commands.report.read import load
        from sysmon.commands.report.render import render
    else:
        from baseline_report import load, render
    data_dir, out = Path(sys.argv[4]), Path(sys.argv[5])
    t = time.perf_counter()
    data = load([data_dir], None, float("-inf"), float("inf"))
    read = time.perf_counter() - t
    t = time.perf_counter()
    render(data, out)
    drawn = time.perf_counter() - t
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    print("measured", flush=True)  # the peak is taken up to here, not the dump below
    sys.stdin.readline()
    import numpy as np
    names = ("cpu", "mem", "rx", "tx", "tcp", "disk", "xen_cpu", "xen_mem", "failures")
    series = {
        n: {k: (np.asarray(s.t), np.asarray(s.v)) for k, s in getattr(data, n).items()}
        for n in names
    }
    series["rows"] = data.rows
    (out / "series.pickle").write_bytes(pickle.dumps(series))
    print(json.dumps({"read": read, "draw": drawn, "cpu": cpu, "rows": data.rows}))
    """
)


def _tree_pss(root: int) -> int:
    """Proportional resident bytes of ``root`` and every process under it: pages
    the workers share with their parent (forked) are counted once, not per process."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(
            int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")
        )
    return total * 1024


def run(kind: str, baseline_dir: Path, data: Path, out: Path) -> dict[str, float]:
    """One report in a fresh process: its figures and its peak memory (bytes)."""
    child = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(ROOT), str(baseline_dir), kind, str(data), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    if child.stdout is None:
        raise SystemExit("no pipe from the report")
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss(child.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    marker = child.stdout.readline()
    done.set()
    sampler.join()
    stdout, _ = child.communicate("go\n")
    if child.returncode != 0 or marker != "measured\n":
        raise SystemExit(f"{kind} report failed ({child.returncode})")
    return {**json.loads(stdout.strip().splitlines()[-1]), "peak": peak}


def compare(old: Path, new: Path) -> str:
    """The two readers' series, point by point."""
    import numpy as np  # noqa: PLC0415

    a, b = pickle.loads(old.read_bytes()), pickle.loads(new.read_bytes())
    points = differ = 0
    worst = 0.0
    for name, series in a.items():
        if name == "rows":
            continue
        if set(series) != set(b[name]):
            return f"{name}: different qubes ({len(series)} vs {len(b[name])})"
        for key, (t, v) in series.items():
            t2, v2 = b[name][key]
            if not np.array_equal(t, t2):
                return f"{name} {key}: different times"
            points += len(v)
            off = v != v2
            differ += int(off.sum())
            if off.any():
                worst = max(worst, float(np.max(np.abs(v[off] - v2[off]) / np.abs(v[off]))))
    rows = "same rows" if a["rows"] == b["rows"] else f"rows {a['rows']} vs {b['rows']}"
    return f"{points:,} points compared, {differ:,} differ (worst relative {worst:.1e}); {rows}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--baseline", default="687db29", help="commit of the reader to beat")
    parser.add_argument("--data", type=Path, help="keep the generated week here (reused)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "week"
        if not (data / "done").exists():
            t = time.perf_counter()
            week(data, qubes=args.qubes, days=args.days)
            (data / "done").touch()
            print(f"wrote the week in {time.perf_counter() - t:.0f} s")
        size = sum(csv_bytes(data))
        print(f"{args.days} days x {args.qubes} qubes, realistic: {size / 1e6:,.0f} MB of CSV")
        old_dir = Path(tmp) / "baseline"
        old_dir.mkdir()
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{args.baseline}:sysmon/commands/report.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (old_dir / "baseline_report.py").write_text(source)
        results = {}
        for kind in ("baseline", "new"):
            out = Path(tmp) / kind
            results[kind] = run(kind, old_dir, data, out)
        print(f"{'':<26}{'read':>8}{'draw':>8}{'total':>8}{'cpu':>8}{'peak':>10}")
        for kind, label in (
            ("baseline", f"csv module ({args.baseline})"),
            ("new", "pandas C reader"),
        ):
            r = results[kind]
            print(
                f"{label:<26}{r['read']:>7.1f}s{r['draw']:>7.1f}s{r['read'] + r['draw']:>7.1f}s"
                f"{r['cpu']:>7.1f}s{r['peak'] / 2**20:>7,.0f} MiB"
            )
        old, new = results["baseline"], results["new"]
        ratio = (new["read"] + new["draw"]) / (old["read"] + old["draw"])
        print(f"new / baseline wall: {ratio:.2f}x; rows read: {new['rows']:,}")
        print(
            "series: "
            + compare(Path(tmp) / "baseline" / "series.pickle", Path(tmp) / "new" / "series.pickle")
        )
        print(f"budget: <= 10 s and <= 1 GiB peak (machine: {os.cpu_count()} cpus)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
