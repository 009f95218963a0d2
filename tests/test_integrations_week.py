"""docs/integrations.md's commands, read from its sh blocks and run as written on the
generator's 30-qube week, into the real engines on 127.0.0.1: VictoriaMetrics,
Prometheus (promtool) and InfluxDB 1.x, each read back series by series.

What the docs say is what runs: each block is taken from the file, and only its
paths and ports are replaced (the vault by the generated folder, ``days/`` by a
temporary one, 8428 by a free port).  Every series' sample count in an engine
must equal the CSVs' non-empty cells for it, and spot cells must read back
exactly.  Heavy by design (about a gigabyte of CSV): marked ``slow`` and
``week``.  Without ``--run-week-files`` (.ci/run's way) the file lines and their
imports run on a whole day of the week; with it on the whole week (some 10 minutes
of CPU more, docs/performance.md has the figures), and the day's versions skip.
The InfluxDB block also runs on a small day, unmarked ``week``, so Debian 12's and
13's influx are tried in every run.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from conftest import ROOT, require_tool
from engines import InfluxDB, Prometheus, VictoriaMetrics

from sysmon import schema
from sysmon.schema import exposition
from sysmon.store.identity import host_identity

pytestmark = pytest.mark.slow

DOC = ROOT / "docs" / "integrations.md"
#: The generator's week (bench/realistic.py's defaults): 30 qubes at 10 s, 7 days.
QUBES = 30
DAYS = 7
#: Every this many rows of each file, a cell is checked exactly in each engine.
SPOT_EVERY = 97_001
#: The vault path and engine address the docs' commands use.
VAULT = "~/QubesIncoming/vault/"
VM_URL = "http://127.0.0.1:8428"

Labels = tuple[tuple[str, str], ...]


@attrs.frozen
class Cell:
    """One CSV cell as the series sample it must become (and the Influx field it is)."""

    name: str
    labels: Labels
    ts: int
    value: float
    measurement: str
    field: str
    raw: str


@attrs.frozen
class Want:
    """What the CSVs hold: per series its cells, per Influx field its cells, spot cells."""

    series: Counter[tuple[str, Labels]]
    fields: Counter[tuple[str, Labels, str]]
    spots: tuple[Cell, ...]
    #: Midnight after the last day, and hours back to before the first.
    at: int
    window: str


def sh_block(heading: str) -> str:
    """The ``sh`` block under ``heading`` in docs/integrations.md, as written."""
    text = DOC.read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def commands(block: str) -> list[str]:
    """A block's commands: continuation lines joined, comment lines left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def substituted(command: str, vault: Path, url: str = VM_URL) -> str:
    """The docs' paths and address, made this test's: the rest is left as written."""
    assert command.startswith(("python -m sysmon ", "curl ", "influx", "(", "promtool ")), command
    command = command.replace(VAULT, f"{vault}/").replace(VM_URL, url)
    return re.sub(r"^python -m sysmon ", f"{shlex.quote(sys.executable)} -m sysmon ", command)


def run(script: str, cwd: Path, timeout: float = 900) -> str:
    """``script`` in bash (errexit, pipefail) in ``cwd``, as a user's shell runs it, with
    a state folder of its own: the docs' export lines are alternatives, and a shared
    ledger would leave the second one nothing to write."""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "XDG_STATE_HOME": tempfile.mkdtemp(prefix="state-", dir=cwd),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{script}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout + done.stderr


def _generate(out: Path, days: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    realistic.week(out, qubes=QUBES, days=days)
    host_identity(out)  # as the daemon's first tick makes it


def wanted(out: Path, host: str, every: int = SPOT_EVERY) -> Want:
    """Count every CSV's non-empty cells per series and per Influx field, in one pass;
    a spot cell from every ``every``-th row of each file."""
    series: Counter[tuple[str, Labels]] = Counter()
    fields: Counter[tuple[str, Labels, str]] = Counter()
    spots: list[Cell] = []
    families = {(f.file, f.column.name): f for f in exposition.FAMILIES}
    one_hots = {(o.file, o.column.name): o for o in exposition.ONE_HOTS}
    named = {schema.Role.TIME, schema.Role.KEY, schema.Role.LABEL}
    for daily in schema.DAILY_FILES:
        extra = exposition.LABELS.get(daily.file_name)
        if extra is None:
            continue
        values = [
            (i, c) for i, c in enumerate(daily.columns) if c.role not in named and c.kind != "pct"
        ]
        label_at = [daily.names.index(name) for name in extra]
        rows: Counter[tuple[str, ...]] = Counter()
        empty: Counter[tuple[tuple[str, ...], int]] = Counter()
        number = 0
        for path in sorted(out.glob(f"*/{daily.file_name}")):
            with path.open(newline="") as f:
                reader = csv.reader(f)
                next(reader)
                for cells in reader:
                    key = (cells[1], *(cells[i] for i in label_at))
                    rows[key] += 1
                    if "" in cells:
                        for i, _ in values:
                            if not cells[i]:
                                empty[key, i] += 1
                    number += 1
                    if number % every == 0:
                        spots.extend(_spots(daily, cells, _labels(host, extra, key), families))
        for key, n in rows.items():
            labels = _labels(host, extra, key)
            for i, column in values:
                filled = n - empty[key, i]
                family = families.get((daily.file_name, column.name))
                if filled:
                    fields[f"sysmon_{daily.stem}", labels, column.name] = filled
                if family is not None and filled:
                    series[family.sample_name, labels] = filled
                hot = one_hots.get((daily.file_name, column.name))
                for choice in hot.choices if hot is not None else ():
                    series[hot.name, tuple(sorted({**dict(labels), hot.label: choice}.items()))] = n  # type: ignore[union-attr]
    days = sorted(p.name for p in out.iterdir() if p.is_dir())
    at = _epoch(days[-1] + "T00:00:00Z") + 86_400
    return Want(series, fields, tuple(spots), at, f"{24 * len(days) + 1}h")


def _labels(host: str, extra: tuple[str, ...], key: tuple[str, ...]) -> Labels:
    """A series' labels; an empty label is no label, as in the engines."""
    vm, *values = key
    pairs = {"host": host, "vm": vm, **dict(zip(extra, values, strict=True))}
    return tuple(sorted((k, v) for k, v in pairs.items() if v))


def _spots(
    daily: schema.DailyFile,
    cells: list[str],
    labels: Labels,
    families: dict[tuple[str, str], exposition.Family],
) -> Iterator[Cell]:
    for i, column in enumerate(daily.columns):
        family = families.get((daily.file_name, column.name))
        if family is None or not cells[i]:
            continue
        yield Cell(
            name=family.sample_name,
            labels=labels,
            ts=_epoch(cells[0]),
            value=_scaled(cells[i], column.unit),
            measurement=f"sysmon_{daily.stem}",
            field=column.name,
            raw=cells[i],
        )


def _scaled(cell: str, unit: str) -> float:
    """The cell in base units, from the CSV's own unit, not from the export's factors (a
    wrong kB-to-bytes factor there must fail here): kB are 1024 bytes, ms a thousandth."""
    if unit == "kB":
        return float(cell) * 1024
    if unit == "ms":
        return float(cell) / 1000
    return float(cell)


def _epoch(ts: str) -> int:
    return int(datetime.fromisoformat(ts).astimezone(UTC).timestamp())


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's week, as a day folder per UTC day under an out_dir with its host-id."""
    out = tmp_path_factory.mktemp("week") / "out"
    _generate(out, DAYS)
    return out


@pytest.fixture(scope="module")
def want(week: Path) -> Want:
    return wanted(week, host_identity(week))


def _selector(name: str, labels: Labels) -> str:
    pairs = ",".join(f"{k}={json.dumps(v)}" for k, v in labels)
    return f"{name}{{{pairs}}}"


def engine_counts(engine: VictoriaMetrics | Prometheus, want: Want) -> Counter[tuple[str, Labels]]:
    """Per series, the samples the engine holds: count_over_time per family, so the
    names stay apart."""
    got: Counter[tuple[str, Labels]] = Counter()
    for name in sorted({name for name, _ in want.series}):
        for item in engine.query(f"count_over_time({name}[{want.window}])", want.at):
            labels = tuple(sorted(item["metric"].items()))
            got[name, labels] = int(float(item["value"][1]))
    return got


def engine_value(engine: VictoriaMetrics | Prometheus, cell: Cell) -> list[float]:
    """The raw samples of the cell's series at exactly its second."""
    result = engine.query(f"{_selector(cell.name, cell.labels)}[1s]", cell.ts)
    return [float(v) for item in result for t, v in item["values"] if int(float(t)) == cell.ts]


def assert_holds(engine: VictoriaMetrics | Prometheus, want: Want) -> None:
    """Every series with exactly the CSVs' count of cells, spot cells exact."""
    got = engine_counts(engine, want)
    missing = {k: (v, got.get(k)) for k, v in want.series.items() if got.get(k) != v}
    extra = set(got) - set(want.series)
    assert not missing, (len(missing), sorted(missing.items())[:5])
    assert not extra, sorted(extra)[:5]
    assert want.spots
    for cell in want.spots:
        assert engine_value(engine, cell) == [cell.value], cell


EXPORT = "## `sysmon export`: archives into VictoriaMetrics or Prometheus"
#: The week's day whose files go through the file imports (a whole realistic day).
FILE_DAY = "2025-08-28"


@pytest.mark.week
def test_the_week_is_what_the_issue_asks():
    """The generator's week (30 qubes, 7 days at 10 s) and one whole day of it: nothing
    smaller passes for them."""
    assert (QUBES, DAYS) == (30, 7)


@pytest.mark.week
def test_push_a_week_into_victoriametrics_as_documented(week, want, tmp_path):
    """### VictoriaMetrics: the engine started with the docs' flags, the week pushed with the
    docs' command (the export block's, too); every series holds the CSVs' cells."""
    start, push = commands(sh_block("### VictoriaMetrics"))[:2]
    assert shlex.split(push) in [shlex.split(c, comments=True) for c in commands(sh_block(EXPORT))]
    argv = shlex.split(start)
    assert argv[0] == "victoria-metrics"
    assert "-retentionPeriod=100y" in argv
    with VictoriaMetrics.run(argv, tmp_path / "vm") as vm:
        out = run(substituted(push, week, vm.url), tmp_path)
        assert f"{DAYS} days into {vm.url}" in out, out
        vm.flush()
        assert_holds(vm, want)


@pytest.fixture(scope="module")
def day(week: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One whole day of the week in an out_dir of its own (hard links, the same host-id)."""
    out = tmp_path_factory.mktemp("day") / "out"
    out.mkdir()
    shutil.copytree(week / FILE_DAY, out / FILE_DAY, copy_function=os.link)
    shutil.copy(week / "host-id", out / "host-id")
    return out


@pytest.fixture(scope="module")
def day_want(day: Path) -> Want:
    return wanted(day, host_identity(day))


@pytest.fixture(scope="module")
def files(
    day: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """The export block's file lines, each run as written (each an alternative, its own
    ledger) in one folder: days/, week.om, week.lp, alerts.jsonl."""
    if request.config.getoption("--run-week-files"):
        pytest.skip("--run-week-files: the same lines and imports run on the whole week")
    cwd = tmp_path_factory.mktemp("files")
    (cwd / "days").mkdir()
    lines = [c for c in commands(sh_block(EXPORT)) if " --push " not in c]
    assert len(lines) == 5, lines
    for line in lines:
        run(substituted(line, day), cwd)
    return cwd


@pytest.mark.week
def test_the_documented_curl_imports(day, files, day_want, tmp_path):
    """### VictoriaMetrics: its ``curl -T`` lines on the day's file of each format."""
    block = commands(sh_block("### VictoriaMetrics"))
    start = shlex.split(block[0])
    curls = [c for c in block if c.startswith("curl -T")]
    assert [c.split()[2].rsplit(".", 1)[1] for c in curls] == ["jsonl", "om"]
    for curl in curls:
        suffix = curl.split()[2].rsplit(".", 1)[1]
        with VictoriaMetrics.run(start, tmp_path / f"vm-{suffix}") as vm:
            line = curl.replace("HOST", host_identity(day)).replace("2025-08-26", FILE_DAY)
            run(substituted(line, day, vm.url), files)
            vm.flush()
            assert_holds(vm, day_want)


@pytest.mark.week
def test_promtool_and_prometheus_as_documented(files, day_want, tmp_path):
    """### Prometheus: promtool's backfill with the docs' flags, then Prometheus started on
    the blocks with the docs' flags; every series holds the CSVs' cells."""
    promtool, serve = commands(sh_block("### Prometheus (backfill with promtool)"))
    require_tool("promtool")
    assert promtool.startswith("for f in days/*.om; do promtool tsdb create-blocks-from")
    blocks = tmp_path / "prometheus"
    run(promtool.replace("/srv/prometheus", str(blocks)), files)
    argv = [a.replace("/srv/prometheus", str(blocks)) for a in shlex.split(serve)]
    assert argv[-1] == "..."  # the user's own flags: a config, a listen address
    with Prometheus.serve(argv[:-1]) as prometheus:
        assert_holds(prometheus, day_want)


@pytest.mark.week
def test_influx_import_as_documented(day, files, day_want, tmp_path):
    """### InfluxDB 1.x: the docs' lines into a real influxd; every field of every series
    holds the CSVs' cells, spot cells exact in the CSV's own units."""
    assert_influx_block(day, day_want, files, tmp_path)


def test_influx_import_as_documented_on_a_small_day(tmp_path):
    """The same on three qubes' day: cheap enough for every run, Debian 13's influx too."""
    out = tmp_path / "out"
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    realistic.week(out, qubes=3, days=1, seed=5)
    # A USB disk mounted at a path with a space, as the qube's handler escapes it
    # (\040): a backslash line protocol keeps as it is, which it must be written as.
    (disk,) = out.glob("*/disk.csv")
    with disk.open("a") as f:
        ts = disk.read_text().splitlines()[-1].split(",")[0]
        f.write(f"{ts},work,/dev/xvdi1,/media/user/My\\040Disk,1000,500,500,50%\n")
    host = host_identity(out)
    (line,) = (c for c in commands(sh_block(EXPORT)) if " -o week.lp" in c)
    files = tmp_path / "files"
    files.mkdir()
    run(substituted(line, out), files)
    assert_influx_block(out, wanted(out, host, every=997), files, tmp_path)


def assert_influx_block(out: Path, want: Want, files: Path, tmp_path: Path) -> None:
    """The InfluxDB block run in ``files`` (week.lp there); every cell read back."""
    require_tool("influx")
    lines = commands(sh_block("### InfluxDB 1.x"))
    with InfluxDB.start(tmp_path / "influx") as influx:
        # the docs' influx talks to the default port; this one listens on a free one
        prelude = f'influx() {{ command influx -host=127.0.0.1 -port={influx.port} "$@"; }}\n'
        run(prelude + "\n".join(substituted(c, out) for c in lines), files)
        got: Counter[tuple[str, Labels, str]] = Counter()
        for item in influx.query("sysmon", "SELECT count(*) FROM /^sysmon_/ GROUP BY *"):
            tagset = tuple(sorted((k, v) for k, v in item["tags"].items() if v))
            for column, count in zip(item["columns"][1:], item["values"][0][1:], strict=True):
                if count:
                    got[item["name"], tagset, column.removeprefix("count_")] = int(count)
        missing = {k: (v, got.get(k)) for k, v in want.fields.items() if got.get(k) != v}
        assert not missing, (len(missing), sorted(missing.items())[:5])
        assert set(got) == set(want.fields)
        assert want.spots
        for cell in want.spots:
            tags = [f"{k}='{_influx_quoted(v)}'" for k, v in cell.labels]
            where = " AND ".join([*tags, f"time = {cell.ts}s"])
            # InfluxQL of the test's own CSV cells, quoted: no user input
            select = f'SELECT "{cell.field}" FROM {cell.measurement} WHERE {where}'  # noqa: S608
            (item,) = influx.query("sysmon", select)
            assert item["values"] == [[cell.ts, _influx_value(cell.raw)]], cell


def _influx_quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _influx_value(raw: str) -> float | int:
    return float(raw) if "." in raw else int(raw)


@pytest.mark.week
def test_the_one_file_lines_hold_the_day(day, files):
    """The export block's one-file lines: week.om is the day's OpenMetrics, alerts.jsonl
    one Loki push body per alert row, none lost."""
    host = host_identity(day)
    # one day's out_dir: the one-file OpenMetrics is the day's file, byte for byte
    assert filecmp.cmp(files / "week.om", files / "days" / f"{host}-{FILE_DAY}.om", shallow=False)
    with (day / FILE_DAY / "alerts.csv").open(newline="") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    bodies = (files / "alerts.jsonl").read_text().splitlines()
    assert rows > 0
    assert len(bodies) == rows
    assert all(json.loads(b)["streams"][0]["stream"]["job"] == "sysmon" for b in bodies)


# ---------------------------------------------------------------- the file lines on the week

#: Why the week's file lines skip without --run-week-files (docs/performance.md: their cost).
WEEK_FILES = (
    "the file lines on the whole week: about 10 minutes of CPU and 28 GB of disk; "
    "run with --run-week-files"
)


@pytest.fixture(scope="module")
def week_files(
    week: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """The export block's file lines as written, on the whole week (see :func:`files`)."""
    if not request.config.getoption("--run-week-files"):
        pytest.skip(WEEK_FILES)
    cwd = tmp_path_factory.mktemp("week-files")
    (cwd / "days").mkdir()
    lines = [c for c in commands(sh_block(EXPORT)) if " --push " not in c]
    assert len(lines) == 5, lines
    for line in lines:
        run(substituted(line, week), cwd, timeout=3600)
    return cwd


@pytest.mark.week
def test_the_documented_curl_imports_on_the_week(week, want, week_files, tmp_path):
    """### VictoriaMetrics: its ``curl -T`` lines, on each of the week's day files in turn;
    every series holds the week's cells."""
    block = commands(sh_block("### VictoriaMetrics"))
    start = shlex.split(block[0])
    host = host_identity(week)
    for curl in (c for c in block if c.startswith("curl -T")):
        suffix = curl.split()[2].rsplit(".", 1)[1]
        days = sorted((week_files / "days").glob(f"{host}-*.{suffix}"))
        assert len(days) == DAYS, days
        with VictoriaMetrics.run(start, tmp_path / f"vm-{suffix}") as vm:
            for day in days:
                line = curl.replace(f"HOST-2025-08-26.{suffix}", day.name)
                run(substituted(line, week, vm.url), week_files, timeout=3600)
            vm.flush()
            assert_holds(vm, want)


@pytest.mark.week
def test_promtool_and_prometheus_on_the_week(want, week_files, tmp_path):
    """### Prometheus: the documented loop over the week's seven day files, then
    Prometheus on the blocks; every series holds the week's cells."""
    promtool, serve = commands(sh_block("### Prometheus (backfill with promtool)"))
    require_tool("promtool")
    blocks = tmp_path / "prometheus"
    run(promtool.replace("/srv/prometheus", str(blocks)), week_files, timeout=3600)
    argv = [a.replace("/srv/prometheus", str(blocks)) for a in shlex.split(serve)]
    with Prometheus.serve(argv[:-1]) as prometheus:
        assert_holds(prometheus, want)


@pytest.mark.week
def test_influx_import_on_the_week(week, want, week_files, tmp_path):
    """### InfluxDB 1.x: the docs' lines with the week's week.lp; every field of every
    series holds the week's cells."""
    assert_influx_block(week, want, week_files, tmp_path)


@pytest.mark.week
def test_the_one_file_lines_hold_the_week(week, week_files):
    """week.om has every sample of the seven day files, alerts.jsonl a body per alert row."""

    def samples(path: Path) -> int:
        # grep: seven gigabytes in seconds; a sample line is any but a # line
        done = subprocess.run(
            ["grep", "-c", "-v", "^#", str(path)], capture_output=True, text=True, check=False
        )
        return int(done.stdout)

    days = sorted((week_files / "days").glob("*.om"))
    assert len(days) == DAYS
    assert samples(week_files / "week.om") == sum(samples(day) for day in days) > 0
    rows = 0
    for path in sorted(week.glob("*/alerts.csv")):
        with path.open(newline="") as f:
            rows += sum(1 for _ in csv.reader(f)) - 1
    with (week_files / "alerts.jsonl").open() as f:
        bodies = sum(1 for _ in f)
    assert bodies == rows > 0
