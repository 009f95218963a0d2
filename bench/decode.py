"""Benchmark: the decoder on files whose lines the csv module must read, against earlier trees.

    python bench/decode.py [--mb 16] [--rounds 5] [--tree NAME=PATH ...]

sysmon writes plain lines (no quote, CR or NUL), which the batch decoder splits
many at a time; any other line goes through the csv module.  These files are
the other kind, each ``--mb`` MB:

- ``quoted alerts``: alerts.csv rows of a qube whose journal messages hold a
  quote (each cell quoted by the writer): what a qube can put in the files;
- ``planted quotes``: disk.csv rows with a quoted qube name (only a planted
  file has them);
- ``planted lone CRs``: alerts.csv rows whose quoted message is 900 CRs: a
  line per character to the csv module (only a planted file has them);
- ``planted CRs only``: rows that end in CR, each followed by 60 empty CR lines:
  no "\\n" at all.

Each is decoded by the batch decoder (``decode_batches_untrusted``, the
export's) and the row decoder (``decode_untrusted``), in a child process per
tree (this checkout, and each ``--tree``), rounds interleaved; printed: the
median CPU seconds and each tree's ratio to this checkout's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run in the child: the CPU seconds of one decoder over one file.
CHILD = r"""
import sys, time
from sysmon import schema
from sysmon.schema.decode import Skipped, decode_batches_untrusted, decode_untrusted
path, file_name, how = sys.argv[1:]
daily = schema.by_name(file_name)
with open(path, "rb") as raw:
    start = time.process_time()
    if how == "batches":
        rows = sum(len(b.rows) for b in decode_batches_untrusted(raw, daily, Skipped()))
    else:
        rows = sum(1 for _ in decode_untrusted(raw, daily, Skipped()))
    print(time.process_time() - start, rows)
"""


def files(folder: Path, size: int) -> dict[str, tuple[Path, str]]:
    """The three files, about ``size`` bytes each."""
    made: dict[str, tuple[Path, str]] = {}
    kinds = {
        "quoted alerts": ("alerts.csv", b"ts,vm,msg\n", _alert),
        "planted quotes": (
            "disk.csv",
            b"ts,vm,fs,mount,size_kb,used_kb,avail_kb,pct_used\n",
            _disk,
        ),
        "planted lone CRs": ("alerts.csv", b"ts,vm,msg\n", _crs),
        "planted CRs only": ("alerts.csv", b"ts,vm,msg\r", _cr_rows),
    }
    for name, (file_name, header, line) in kinds.items():
        path = folder / (name.replace(" ", "-") + ".csv")
        with path.open("wb") as out:
            out.write(header)
            written, n = 0, 0
            while written < size:
                text = line(n)
                out.write(text)
                written += len(text)
                n += 1
        made[name] = (path, file_name)
    return made


def _ts(n: int) -> bytes:
    return b"2025-08-26T%02d:%02d:%02dZ" % (n // 3600 % 24, n // 60 % 60, n % 60)


def _alert(n: int) -> bytes:
    return _ts(n) + b',work,"sudo: pam_unix(sudo:auth): conversation failed, user=""user"""\n'


def _disk(n: int) -> bytes:
    return _ts(n) + b',"work",/dev/xvdb,/rw,%d,500,500,50%%\n' % (1000 + n % 7)


def _crs(n: int) -> bytes:
    return _ts(n) + b',work,"' + b"\r" * 900 + b'"\n'


def _cr_rows(n: int) -> bytes:
    return _ts(n) + b",work,x\r" + b"\r" * 60


def measure(tree: Path, path: Path, file_name: str, how: str) -> tuple[float, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), file_name, how],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    cpu, rows = done.stdout.split()
    return float(cpu), int(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout")
    args = parser.parse_args()
    trees = {"now": ROOT} | {
        name: Path(path) for name, _, path in (t.partition("=") for t in args.tree)
    }
    with tempfile.TemporaryDirectory() as tmp:
        made = files(Path(tmp), int(args.mb * 1e6))
        cases = [(kind, how) for kind in made for how in ("batches", "rows")]
        cpu: dict[tuple[str, str, str], list[float]] = {}
        rows: dict[tuple[str, str], set[int]] = {}
        for _ in range(args.rounds):
            for kind, how in cases:
                path, file_name = made[kind]
                for name, tree in trees.items():
                    seconds, n = measure(tree, path, file_name, how)
                    cpu.setdefault((kind, how, name), []).append(seconds)
                    rows.setdefault((kind, how), set()).add(n)
        differ = {case: n for case, n in rows.items() if len(n) > 1}
        if differ:
            raise SystemExit(f"the trees decoded different numbers of rows: {differ}")
        print(f"{args.mb:g} MB a file, median CPU of {args.rounds} interleaved rounds:")
        for kind, how in cases:
            now = statistics.median(cpu[kind, how, "now"])
            line = f"{kind:<17} {how:<8} now {now:6.2f} s"
            for name in trees:
                if name != "now":
                    then = statistics.median(cpu[kind, how, name])
                    line += f"   {name} {then:6.2f} s ({then / now:.2f}x now)"
            print(line)
    print(f"(machine: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
