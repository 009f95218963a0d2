"""contrib/grafana/sysmon.json: how it reads, its types, and every query on both engines."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, require_tool, run_sysmon
from engines import Prometheus, VictoriaMetrics

from sysmon import schema
from sysmon.records import Status

DASHBOARD = ROOT / "contrib" / "grafana" / "sysmon.json"
#: The types the dashboard is checked against, pinned; npm installs them once into the cache.
GRAFANA_SCHEMA = "13.2.3"
TYPESCRIPT = "5.9.3"
CACHE = Path.home() / ".cache" / "sysmon-tests" / f"grafana-schema-{GRAFANA_SCHEMA}"
#: The panel types used, and where @grafana/schema keeps their options' types.
PANEL_TYPES = {
    "timeseries": "timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen",
    "state-timeline": "statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen",
    "stat": "stat/panelcfg/x/StatPanelCfg_types.gen",
}
#: A family's unit from its name (OpenMetrics names carry it), as Grafana names units.
UNIT_OF_SUFFIX = (
    ("_seconds", "s"),
    ("_bytes", "bytes"),
    ("_bytes_total", "Bps"),  # only ever drawn as a rate
)
START = datetime(2025, 8, 31, 18, 0, tzinfo=UTC)
#: The power states dom0 reports, as the export's one-hot qube states name them.
QUBE_STATES = {"Running", "Halted", "Paused", "Suspended", "Transient", "Halting", "Dying"} | {
    "Crashed",
    "NA",
}


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panel(title_start: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        p for p in dashboard()["panels"] if p["title"].startswith(title_start)
    ]
    assert len(found) == 1, title_start
    return found[0]


def metrics_of(expr: str) -> set[str]:
    """The sysmon series an expression selects."""
    return set(re.findall(r"\b(sysmon_[a-z0-9_]+)\{", expr))


def expected_unit(expr: str) -> str:
    """The unit a query's values are in, from the names of the series it reads."""
    if expr.startswith(("count ", "count(")):
        return "short"
    units = set()
    for name in metrics_of(expr):
        if "_cpu_" in name:
            units.add("percent")
            continue
        suffix = max((s for s, _ in UNIT_OF_SUFFIX if name.endswith(s)), key=len, default="")
        units.add(dict(UNIT_OF_SUFFIX).get(suffix, "short"))
    if "100 *" in expr and units == {"bytes"}:  # a share of a size
        return "percent"
    (unit,) = units
    return unit


def target_axis(p: dict[str, Any], ref: str) -> tuple[str, str]:
    """(unit, axis placement) of one query of a panel, its overrides applied."""
    defaults = p["fieldConfig"]["defaults"]
    unit, placement = defaults.get("unit", ""), defaults.get("custom", {}).get("axisPlacement")
    for override in p["fieldConfig"]["overrides"]:
        if override["matcher"] == {"id": "byFrameRefID", "options": ref}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    unit = prop["value"]
                elif prop["id"] == "custom.axisPlacement":
                    placement = prop["value"]
    return unit, placement or "auto"


def test_every_query_is_drawn_in_its_unit_and_units_never_share_an_axis() -> None:
    """Counts and seconds (or percent and bytes) on one axis read as one scale."""
    for p in dashboard()["panels"]:
        if p["type"] != "timeseries":
            continue
        axes: dict[str, str] = {}
        for target in p["targets"]:
            unit, placement = target_axis(p, target["refId"])
            assert unit == expected_unit(target["expr"]), (p["title"], target["expr"])
            assert axes.setdefault(placement, unit) == unit, (p["title"], axes, unit)


def test_poll_health_draws_only_the_statuses_that_are_not_ok() -> None:
    """One-hot status series are 0 at nearly every poll: only a 1 that is not "ok" is drawn,
    so a healthy day draws nothing at all instead of a flat 0 per qube and status."""
    health = panel("Poll health")
    status_queries = [t["expr"] for t in health["targets"] if "sysmon_scrapes_status" in t["expr"]]
    assert status_queries
    for expr in status_queries:
        assert re.search(r'sysmon_scrapes_status\{[^}]*status!="ok"[^}]*\} == 1\b', expr), expr
    assert {s.value for s in Status} >= {"ok", "timeout"}


def test_qube_states_are_a_state_timeline_of_the_exported_states() -> None:
    """One row per qube, coloured by its state: the query codes each state as a number,
    the value mappings name them back, the same order both ways."""
    states = panel("Qube states")
    assert states["type"] == "state-timeline"
    (target,) = states["targets"]
    codes = {
        state: int(code or 1)
        for code, state in re.findall(
            r'(?:(\d+) \* )?sysmon_qubes_state\{[^}]*state="(\w+)"', target["expr"]
        )
    }
    assert set(codes) == set(QUBE_STATES)
    assert sorted(codes.values()) == list(range(1, len(QUBE_STATES) + 1))
    (mapping,) = states["fieldConfig"]["defaults"]["mappings"]
    assert {int(k): v["text"] for k, v in mapping["options"].items()} == {
        code: state for state, code in codes.items()
    }
    assert target["legendFormat"] == "{{vm}}"


def test_the_views_panel_reads_the_series_the_export_names_from_views_csv() -> None:
    """sysmon_<file>_<column>, a _kb column in bytes (docs/integrations.md)."""
    names = {
        f"sysmon_views_{c.name.removesuffix('_kb')}{'_bytes' if c.name.endswith('_kb') else ''}"
        for c in schema.VIEWS.columns
        if c.kind in {"int", "dec1"}
    }
    views = panel("The two views")
    used = set().union(*(metrics_of(t["expr"]) for t in views["targets"]))
    assert used <= names, used - names
    assert "sysmon_views_cpu_gap" in used


def test_the_dashboard_has_grafanas_current_schema_version_and_types() -> None:
    """Checked by TypeScript (strict) against @grafana/schema: the dashboard as a
    Dashboard, each panel's options and field config as its panel type's own types
    (enums taken as their string values, which is what a JSON file holds)."""
    tsc = _grafana_schema()
    board = dashboard()
    source = [
        "import type { Dashboard } from '@grafana/schema';",
        (
            "type Json<T> = T extends string ? `${T}`"
            " : T extends number | boolean | null | undefined ? T"
            " : T extends readonly (infer U)[] ? Json<U>[] : { [K in keyof T]: Json<T[K]> };"
        ),
    ]
    for i, (_kind, module) in enumerate(PANEL_TYPES.items()):
        source.append(
            f"import type * as P{i} from '@grafana/schema/dist/esm/raw/composable/{module}';"
        )
    source.append(f"export const dashboard: Json<Dashboard> = {json.dumps(board)};")
    kinds = list(PANEL_TYPES)
    for p in board["panels"]:
        assert p["type"] in PANEL_TYPES, p["type"]
        n = kinds.index(p["type"])
        source.append(
            f"export const options{p['id']}: Json<P{n}.Options> = {json.dumps(p['options'])};"
        )
        custom = p["fieldConfig"]["defaults"].get("custom")
        if p["type"] == "stat":  # a stat panel has no field config of its own
            assert custom is None
            continue
        source.append(
            f"export const custom{p['id']}: Json<P{n}.FieldConfig> = {json.dumps(custom)};"
        )
    checked = CACHE / "check"
    checked.mkdir(exist_ok=True)
    (checked / "dashboard.ts").write_text("\n".join(source) + "\n")
    done = subprocess.run(
        [tsc, "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext",
         "--target", "es2022", "--skipLibCheck", str(checked / "dashboard.ts")],
        cwd=CACHE, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    current = subprocess.run(
        [require_tool("node"), "--input-type=module", "-e",
         ("import {defaultDashboard} from '@grafana/schema';"
         "console.log(defaultDashboard.schemaVersion)")],
        cwd=CACHE, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert board["schemaVersion"] == int(current)


def _grafana_schema() -> str:
    """tsc, with @grafana/schema beside it in the cache (npm installs them once)."""
    npm = require_tool("npm")
    tsc = CACHE / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        fresh = CACHE.with_name(CACHE.name + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", str(fresh),
             f"@grafana/schema@{GRAFANA_SCHEMA}", f"typescript@{TYPESCRIPT}"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"npm install: {done.stderr[-2000:]}")
        shutil.rmtree(CACHE, ignore_errors=True)
        fresh.rename(CACHE)
    return str(tsc)


# ---- on the engines --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 realistic hours of three qubes: an hour halted, a restart, timeouts."""
    out = tmp_path_factory.mktemp("dashboard") / "out"
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    realistic.generate(out, qubes=3, start=START, ticks=1440, interval=30.0, seed=11)
    return out


@pytest.fixture(scope="module")
def engines(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The world exported as a user would, into VictoriaMetrics and Prometheus."""
    tmp = tmp_path_factory.mktemp("dashboard-engines")
    om = tmp / "days.om"
    days = sorted(p for p in world.iterdir() if p.is_dir() and p.name[:2] == "20")
    done = run_sysmon(
        "export", *days, "--host", "h", "--no-ledger", "-o", om,
        env={"XDG_STATE_HOME": str(tmp)}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with (
        VictoriaMetrics.start(tmp / "vm") as vm,
        Prometheus.backfill_and_start(om, tmp / "prom") as prom,
    ):
        vm.import_prometheus(om.read_bytes())
        exported = set(re.findall(r"^# TYPE (sysmon_\w+) ", om.read_text(), flags=re.MULTILINE))
        yield {"vm": vm, "prom": prom, "exported": exported}


def rows(world: Path, file_name: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for day in sorted(p for p in world.iterdir() if p.is_dir() and p.name[:2] == "20"):
        with (day / file_name).open(newline="") as f:
            out.extend(csv.DictReader(f))
    return out


def epoch(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp())


def promql(expr: str) -> str:
    return expr.replace("$host", "h").replace("$vm", ".*").replace("$__rate_interval", "5m")


@pytest.mark.slow
def test_every_query_of_the_dashboard_returns_series_on_both_engines(
    world: Path, engines: dict[str, Any]
) -> None:
    """Every panel's queries and the variables' on VictoriaMetrics and Prometheus; the
    views panel's only once the export writes views.csv's series."""
    board = dashboard()
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]]
    variables = [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    families = {n.removesuffix("_total") for q in queries for n in metrics_of(q)}
    unexported = {n for n in families if n not in engines["exported"]}
    # Only the views' series may be missing, and only while no views.csv is exported.
    assert {n.split("_")[1] for n in unexported} <= {"views"}, unexported
    # A tick with a timeout, an hour in: poll health draws nothing while all is well.
    at = next(
        epoch(r["ts"])
        for r in rows(world, "scrapes.csv")
        if r["status"] == "timeout" and epoch(r["ts"]) > START.timestamp() + 3600
    )
    for engine in (engines["vm"], engines["prom"]):
        for expr in queries:
            if not metrics_of(expr) & unexported:
                assert engine.query(promql(expr), at), (engine, expr)
        for query in variables:  # label_values(metric, label): the label's values exist
            metric, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
            found = engine.query(metric.replace("$host", "h"), at)
            assert {r["metric"][label] for r in found}, (engine, query)


@pytest.mark.slow
def test_the_state_timeline_shows_each_qubes_state_as_qubes_csv_has_it(
    world: Path, engines: dict[str, Any]
) -> None:
    """In the hour a qube is halted and outside it, on both engines."""
    (target,) = panel("Qube states")["targets"]
    (mapping,) = panel("Qube states")["fieldConfig"]["defaults"]["mappings"]
    names = {int(k): v["text"] for k, v in mapping["options"].items()}
    states = rows(world, "qubes.csv")
    halted = [r for r in states if r["state"] == "Halted"]
    assert halted
    for at in (epoch(halted[len(halted) // 2]["ts"]) + 20, epoch(states[-1]["ts"])):
        want = {r["vm"]: r["state"] for r in states if at - 300 < epoch(r["ts"]) <= at}
        assert "Halted" in want.values() or at == epoch(states[-1]["ts"])
        for engine in (engines["vm"], engines["prom"]):
            got = {
                r["metric"]["vm"]: names[int(float(r["value"][1]))]
                for r in engine.query(promql(target["expr"]), at)
            }
            assert got == want, (engine, at)


@pytest.mark.slow
def test_poll_health_counts_the_qubes_whose_poll_timed_out(
    world: Path, engines: dict[str, Any]
) -> None:
    """At a tick with a timeout: that count, under "timeout", and no "ok" ever."""
    (count,) = [t for t in panel("Poll health")["targets"] if "sysmon_scrapes_status" in t["expr"]]
    polls = rows(world, "scrapes.csv")
    tick = next(r["ts"] for r in polls if r["status"] == "timeout")
    at = epoch(tick)
    # A qube's status at ``at`` is its newest poll in the 5 minutes before.
    newest: dict[str, dict[str, str]] = {}
    for r in polls:
        if at - 300 < epoch(r["ts"]) <= at:
            newest[r["vm"]] = r
    want: dict[str, int] = {}
    for r in newest.values():
        if r["status"] != "ok":
            want[r["status"]] = want.get(r["status"], 0) + 1
    assert want.get("timeout")
    for engine in (engines["vm"], engines["prom"]):
        got = {
            r["metric"]["status"]: int(float(r["value"][1]))
            for r in engine.query(promql(count["expr"]), at)
        }
        assert got == want, engine
