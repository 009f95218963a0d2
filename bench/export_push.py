"""Benchmark: a realistic day out of sysmon and into VictoriaMetrics, against what else a user has.

    python bench/export_push.py [--data DIR] [--before TREE] [--before-push TREE] [--rounds 3]

One realistic 30-qube day (bench/realistic.py; kept in --data), then, in
interleaved rounds (the median of each is printed, with the CPU seconds):

- ``export -o day.om``: sysmon's OpenMetrics file (promtool's input);
- ``export --format victoriametrics -o day.jsonl``: the JSON lines, to a file;
- ``export --format influx -o day.lp``: Influx line protocol (``influx -import``'s input);
- ``export --push``: straight into a fresh VictoriaMetrics, end to end (until
  the engine answered that it took the day; its CPU is not in the CPU column);
- ``curl -T day.jsonl``: the engine alone ingesting the JSON lines written
  above, the floor under ``--push`` (curl's CPU in the column, the engine's below);
- the simple converter below: csv.reader and a line per sample, the same
  OpenMetrics samples (what a user would write instead of sysmon export);
- with ``--before TREE`` (a checkout of an earlier sysmon): its ``export -o`` and
  ``--format influx -o``;
- with ``--before-push TREE``: that sysmon's ``export --push``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export import DAY
from realistic import ROOT, csv_bytes, generate

#: The simple converter: the numeric cells of every file as OpenMetrics samples.
SIMPLE = r"""
import csv, sys
from datetime import datetime
from pathlib import Path
day = Path(sys.argv[1])
out = sys.stdout
labels = {"network.csv": ("if",), "disk.csv": ("fs", "mount")}
skip = {"ts", "vm", "if", "fs", "mount", "pct_used", "state", "status", "msg"}
for path in sorted(day.glob("*.csv")):
    if path.name == "alerts.csv":
        continue
    stem = path.stem
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        at = {name: i for i, name in enumerate(header)}
        columns = [(i, name) for i, name in enumerate(header) if name not in skip]
        extra = [(name, at[name]) for name in labels.get(path.name, ())]
        last = ("", 0)
        for row in reader:
            if row[0] != last[0]:
                last = (row[0], int(datetime.fromisoformat(row[0]).timestamp()))
            ts = last[1]
            lab = f'host="bench",vm="{row[1]}"' + "".join(
                f',{name}="{row[i]}"' for name, i in extra)
            for i, name in columns:
                cell = row[i]
                if cell:
                    out.write(f"sysmon_{stem}_{name}{{{lab}}} {cell} {ts}\n")
out.write("# EOF\n")
"""


#: VictoriaMetrics' CPU seconds in each run, from its start to its stop, by what fed it.
ENGINE_CPU: dict[str, list[float]] = {}


def run(argv: list[str], stdout: Path | None = None, tree: Path = ROOT) -> tuple[float, float]:
    """Wall and CPU seconds of one child (sysmon from ``tree``)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    with Path(stdout or os.devnull).open("wb") as out:
        # cwd too: ``python -m`` puts it first on the path, before PYTHONPATH.
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env, cwd=tree)
        assert child.stderr is not None
        err = child.stderr.read()
        _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv}: {err.decode()[-2000:]}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def vm_push(argv: list[str], data: Path, tree: Path = ROOT) -> tuple[float, float]:
    """``argv`` pushing into a fresh VictoriaMetrics (started before the clock)."""
    return vm_run(lambda url: [*argv, "--push", url], data, f"--push from {tree}", tree)


def vm_run(
    argv: Callable[[str], list[str]], data: Path, name: str, tree: Path = ROOT
) -> tuple[float, float]:
    """``argv(url)`` run against a fresh VictoriaMetrics (started before the clock)."""
    binary = shutil.which("victoria-metrics")
    if binary is None:
        raise SystemExit("victoria-metrics is not installed")
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shutil.rmtree(data, ignore_errors=True)
    url = f"http://127.0.0.1:{port}"
    engine = subprocess.Popen(
        [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}",
         "-retentionPeriod=100y", "-loggerLevel=ERROR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        wall, cpu = run(argv(url), tree=tree)
    finally:
        engine.terminate()
        _, _, usage = os.wait4(engine.pid, 0)
    ENGINE_CPU.setdefault(name, []).append(usage.ru_utime + usage.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--data", type=Path, help="keep the generated day here (reused)")
    parser.add_argument("--before", type=Path, help="an earlier sysmon's tree, run as a baseline")
    parser.add_argument("--before-push", type=Path, help="an earlier sysmon's tree: its --push")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = args.data or tmp / "out"
        if not (data / "done").exists():
            generate(data, qubes=args.qubes, start=DAY, ticks=8640)
            (data / "done").touch()
        day = str(data / DAY.date().isoformat())
        print(
            f"one realistic day, {args.qubes} qubes at 10 s: {sum(csv_bytes(data)) / 1e6:,.0f} MB"
        )
        sysmon = [sys.executable, "-m", "sysmon", "export", day, "--host", "bench", "--no-ledger"]
        curl = shutil.which("curl") or "curl"
        simple = tmp / "simple.py"
        simple.write_text(SIMPLE)
        cases = {
            "export -o day.om (OpenMetrics)": lambda: run([*sysmon, "-o", str(tmp / "a.om")]),
            "export --format victoriametrics -o": lambda: run(
                [*sysmon, "--format", "victoriametrics", "-o", str(tmp / "a.jsonl")]
            ),
            "export --format influx -o": lambda: run(
                [*sysmon, "--format", "influx", "-o", str(tmp / "a.lp")]
            ),
            "export --push (end to end)": lambda: vm_push(sysmon, tmp / "vm"),
            "engine alone: curl -T day.jsonl": lambda: vm_run(
                lambda url: [
                    curl,
                    "-sS",
                    "--fail",
                    "-T",
                    str(tmp / "a.jsonl"),
                    f"{url}/api/v1/import",
                ],
                tmp / "vm",
                "curl -T day.jsonl",
            ),
            "simple converter (csv.reader)": lambda: run(
                [sys.executable, str(simple), day], tmp / "s.om"
            ),
        }
        if args.before_push:
            cases["before: export --push"] = lambda: vm_push(
                sysmon, tmp / "vm", tree=args.before_push
            )
        if args.before:
            cases["before: export -o day.om"] = lambda: run(
                [*sysmon, "-o", str(tmp / "b.om")], tree=args.before
            )
            cases["before: export --format influx -o"] = lambda: run(
                [*sysmon, "--format", "influx", "-o", str(tmp / "b.lp")], tree=args.before
            )
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for n in range(args.rounds):
            for name, case in cases.items():
                results[name].append(case())
                wall, cpu = results[name][-1]
                print(f"  round {n + 1}: {name:<38} {wall:6.1f} s wall, {cpu:6.1f} s CPU")
        print(f"median of {args.rounds}, interleaved:")
        for name, runs in results.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"{name:<40} {wall:6.1f} s wall, {cpu:6.1f} s CPU")
        medians = {name: statistics.median(w for w, _ in runs) for name, runs in results.items()}
        pairs = [
            ("export -o day.om (OpenMetrics)", "before: export -o day.om"),
            ("export --format influx -o", "before: export --format influx -o"),
            ("export --push (end to end)", "before: export --push"),
            ("export --push (end to end)", "before: export -o day.om"),
            ("export --format influx -o", "export -o day.om (OpenMetrics)"),
        ]
        for now, then in pairs:
            if then in medians:
                print(f"{now} / {then}: {medians[now] / medians[then]:.2f}x the wall")
        for name, cpus in ENGINE_CPU.items():
            print(f"VictoriaMetrics' own CPU, {name} (start to stop): "
                  f"{statistics.median(cpus):.1f} s, median")  # fmt: skip
        print(
            f"(machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; sysmon from {ROOT})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
