"""Benchmark: ``sysmon report`` over a realistic 30-qube week, beside the report before and its peers.

    python bench/report.py [--qubes 30] [--days 7] [--baseline f149eb9] [--data DIR]
                           [--rounds 3] [--peers-python PYTHON]

Writes the week with bench/realistic.py (random walks, bursty counters, a
restart, an hour halted, timeouts, quoted alerts; kept in --data for the next
run; a folder that already has day folders is read as it is), then runs,
each in a fresh process and interleaved round by round: today's report, the
one of commit --baseline (its ``sysmon/`` taken from git), and the same
series computed by polars and by DuckDB (bench/report_peers.py, in
--peers-python; a peer that is not installed there is skipped with a line).
For each: wall time to read (and, for sysmon, to gather the summary and to
draw), its libraries imported before the clock starts (numpy and pandas;
polars or duckdb: each import's time printed apart), CPU of the process and
its workers (its start and imports included), and peak memory of them
together (PSS sampled every 20 ms); medians over the rounds, with the load
average.
Then it compares the series point by point: today's with the baseline's
and with each peer's.  Budget (#28): faster than the peers, <= 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realistic import ROOT, csv_bytes, week

#: Runs in a fresh interpreter: read, summarise, draw, time each, keep the series.
_RUN = textwrap.dedent(
    """
    import json, pickle, sys, time, resource
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from sysmon.commands.report.read import load, units
    from sysmon.commands.report.render import render
    from sysmon.commands.report.summary import render_summary, summarize
    data_dir, out = Path(sys.argv[2]), Path(sys.argv[3])
    inf = float("inf")

    def cpu():  # of this process and its workers that ended (each phase's pool has)
        own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    # The libraries imported before the clock starts, as bench/report_peers.py
    # imports polars or duckdb: the read is timed, not the import.
    t = time.perf_counter()
    import numpy, pandas
    imported = time.perf_counter() - t
    t = time.perf_counter()
    data = load([data_dir], None, -inf, inf)
    read, read_cpu = time.perf_counter() - t, cpu()
    t = time.perf_counter()
    summary = render_summary(summarize(units([data_dir]), None, -inf, inf))
    gathered, gathered_cpu = time.perf_counter() - t, cpu()
    t = time.perf_counter()
    render(data, out, summary)
    drawn, total_cpu = time.perf_counter() - t, cpu()
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
    print(json.dumps({
        "read": read, "summary": gathered, "draw": drawn, "cpu": total_cpu, "rows": data.rows,
        "import": imported,
        "cpu_read": read_cpu, "cpu_summary": gathered_cpu - read_cpu,
        "cpu_draw": total_cpu - gathered_cpu,
    }))
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


def run(argv: list[str]) -> dict[str, float] | None:
    """One child process: its figures and its peak memory (bytes); None if it cannot run."""
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if child.stdout is None:
        raise SystemExit("no pipe from the child")
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_pss(child.pid))
            time.sleep(0.02)

    started = time.perf_counter()
    sampler = threading.Thread(target=sample)
    sampler.start()
    marker = child.stdout.readline()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    stdout, _ = child.communicate("go\n")
    if marker == "missing\n":
        return None
    if child.returncode != 0 or marker != "measured\n":
        raise SystemExit(f"{argv[:3]} failed ({child.returncode})")
    last = stdout.strip().splitlines()[-1]
    if last.startswith("{"):
        return {**json.loads(last), "peak": peak, "process": wall}
    read, cpu, imported = map(float, last.split())
    return {
        "read": read,
        "cpu": cpu,
        "cpu_read": cpu,
        "peak": peak,
        "process": wall,
        "import": imported,
    }


def compare(old: Path, new: Path) -> str:
    """The two readers' series, point by point."""
    import numpy as np  # noqa: PLC0415

    a, b = pickle.loads(old.read_bytes()), pickle.loads(new.read_bytes())
    points = differ = 0
    worst = 0.0
    for name, series in a.items():
        if name == "rows":
            continue
        if name not in b:
            return f"{name}: missing"
        if not isinstance(series, dict):
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
    if "rows" not in a or "rows" not in b:
        return f"{points:,} points compared, {differ:,} differ (worst relative {worst:.1e})"
    rows = "same rows" if a["rows"] == b["rows"] else f"rows {a['rows']} vs {b['rows']}"
    return f"{points:,} points compared, {differ:,} differ (worst relative {worst:.1e}); {rows}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--baseline", default="f149eb9", help="commit of the report to beat")
    parser.add_argument("--data", type=Path, help="keep the generated week here (reused)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each")
    parser.add_argument(
        "--peers-python", default=sys.executable, help="a Python with polars and duckdb"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "week"
        if not (data / "done").exists() and not any(data.glob("????-??-??")):
            t = time.perf_counter()
            week(data, qubes=args.qubes, days=args.days)
            (data / "done").touch()
            print(f"wrote the week in {time.perf_counter() - t:.0f} s")
        size = sum(csv_bytes(data))
        days = len(list(data.glob("????-??-??")))
        print(f"{days} days, realistic: {size / 1e6:,.0f} MB of CSV")
        old_tree = Path(tmp) / "baseline-tree"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline, "sysmon"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        peers = str(Path(__file__).resolve().parent / "report_peers.py")
        argv = {
            "baseline": [sys.executable, "-c", _RUN, str(old_tree), str(data)],
            "new": [sys.executable, "-c", _RUN, str(ROOT), str(data)],
            "polars": [args.peers_python, peers, "polars", str(data)],
            "duckdb": [args.peers_python, peers, "duckdb", str(data)],
        }
        labels = {
            "baseline": f"sysmon {args.baseline}",
            "new": "sysmon now",
            "polars": "polars",
            "duckdb": "DuckDB",
        }
        results: dict[str, list[dict[str, float]]] = {kind: [] for kind in argv}
        loads: list[float] = []
        for n in range(args.rounds):
            kinds = list(argv)
            kinds = kinds[n % len(kinds) :] + kinds[: n % len(kinds)]  # each goes first once
            for kind in kinds:
                if n and not results[kind]:
                    continue  # not installed
                out = Path(tmp) / f"{kind}-{n}"
                out.mkdir()
                extra = [str(out)] if kind in ("baseline", "new") else [str(out / "series.pickle")]
                loads.append(os.getloadavg()[0])
                got = run(argv[kind] + extra)
                if got is None:
                    print(f"{labels[kind]}: not installed in {args.peers_python}, skipped")
                    continue
                results[kind].append(got)
                print(f"  round {n + 1}: {labels[kind]} {got['process']:.1f} s", flush=True)
        print(
            f"medians of {args.rounds} interleaved rounds; load average "
            f"{statistics.median(loads):.1f} (from {min(loads):.1f} to {max(loads):.1f}) "
            f"on {os.cpu_count()} cpus"
        )
        print("wall (CPU of the process and its workers, its start and imports included):")
        print(f"{'':<20}{'read':>14}{'summary':>14}{'draw':>14}{'total':>15}{'peak':>10}")
        median: dict[str, dict[str, float]] = {}
        for kind, runs in results.items():
            if not runs:
                continue
            m = median[kind] = {
                key: statistics.median(r.get(key, 0.0) for r in runs)
                for key in (
                    "read",
                    "summary",
                    "draw",
                    "cpu",
                    "peak",
                    "process",
                    "cpu_read",
                    "cpu_summary",
                    "cpu_draw",
                    "import",
                )
            }
            m["total"] = statistics.median(
                r["read"] + r.get("summary", 0.0) + r.get("draw", 0.0) for r in runs
            )
            sysmon = kind in ("baseline", "new")

            def cell(wall: float, cpu: float) -> str:
                return f"{wall:>6.1f} s ({cpu:>4.1f})"

            print(
                f"{labels[kind]:<20}{cell(m['read'], m['cpu_read'])}"
                + (
                    cell(m["summary"], m["cpu_summary"]) + cell(m["draw"], m["cpu_draw"])
                    if sysmon
                    else " " * 28
                )
                + f" {cell(m['total'], m['cpu'])}{m['peak'] / 2**20:>6,.0f} MiB"
            )
        print(
            "imports before the clock (wall): "
            + ", ".join(f"{labels[k]} {m['import']:.2f} s" for k, m in median.items())
        )
        new = median["new"]
        for kind in ("baseline", "polars", "duckdb"):
            if kind not in median:
                continue
            other = median[kind]
            print(
                f"sysmon now / {labels[kind]}: the series {new['read'] / other['read']:.2f}x wall, "
                f"{new['cpu_read'] / other['cpu_read']:.2f}x CPU; "
                f"the whole report {new['total'] / other['total']:.2f}x wall"
            )
            last = len(results[kind]) - 1
            theirs = Path(tmp) / f"{kind}-{last}" / "series.pickle"
            print(
                "  series: "
                + compare(theirs, Path(tmp) / f"new-{args.rounds - 1}" / "series.pickle")
            )
        print(
            f"budget (#28): faster than polars and DuckDB, <= 1 GiB peak; rows read: {results['new'][0]['rows']:,.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
