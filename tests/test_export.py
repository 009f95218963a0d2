"""``sysmon export`` into the real engines: VictoriaMetrics and Prometheus read back every cell."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import ROOT, require_tool, run_on_small_tmpfs
from engines import Prometheus, Samples, VictoriaMetrics, free_port
from hypothesis import example, given
from hypothesis import strategies as st

from sysmon import __version__, schema
from sysmon.commands.export import (
    MAX_LABEL_VALUES,
    MAX_QUBES,
    ExportError,
    Ledger,
    default_ledger,
    export,
    plan,
    push,
)
from sysmon.commands.export import main as export_main
from sysmon.commands.export.series import MAX_CUT_NAMES, OTHERS
from sysmon.schema import exposition
from sysmon.store.archive import build_archive, day_meta, host_identity

START = datetime(2025, 8, 31, 18, 0, tzinfo=UTC)
END = int((START + timedelta(hours=12)).timestamp())
#: Interface and mount names a qube chose: quotes, backslashes, braces, a formula.
ODD_IF = 'we"ird\\if{x}'
ODD_MOUNT = '/mnt/a b",c=d'


def _generate(out: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    realistic.generate(out, qubes=3, start=START, ticks=1440, interval=30.0, seed=11)
    day = out / "2025-09-01"
    late = START + timedelta(hours=11, minutes=59, seconds=50)
    with (day / "network.csv").open("ab") as f:  # hostile names, and one name too many
        f.write(schema.NETWORK.format_row([late, "sys-net", ODD_IF, 10, 0, 0, 20, 0, 0]))
        for i in range(MAX_LABEL_VALUES + 8):
            f.write(schema.NETWORK.format_row([late, "sys-usb", f"vif{i}.0", i, 0, 0, i, 0, 0]))
    with (day / "disk.csv").open("ab") as f:
        f.write(schema.DISK.format_row([late, "sys-net", "=cmd|x", ODD_MOUNT, 100, 40, 60, 40]))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 realistic hours around midnight (a restart, an hour halted, timeouts, quoted
    alerts) of three qubes, plus hostile names, archived with their metadata."""
    out = tmp_path_factory.mktemp("export") / "out"
    _generate(out)
    for day in (date(2025, 8, 31), date(2025, 9, 1)):
        build_archive(out, day, day_meta(out, day, version=__version__, interval=30.0))
    return out


@pytest.fixture(scope="module")
def engines(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The world's archives exported once, imported into VictoriaMetrics and back-filled
    into Prometheus; both serving until the module's tests are done."""
    tmp = tmp_path_factory.mktemp("engines")
    om = tmp / "days.om"
    om.write_text(exported(archives(world)))
    with (
        VictoriaMetrics.start(tmp / "vm") as vm,
        Prometheus.backfill_and_start(om, tmp / "prom") as prom,
    ):
        vm.import_prometheus(om.read_bytes())
        yield {"vm": vm, "prom": prom, "host": host_identity(world)}


def archives(out: Path) -> list[Path]:
    return sorted((out / "archives").glob("monitor-*.tgz"))


def exported(paths: list[Path], fmt: str = "openmetrics", **kwargs: object) -> str:
    buffer = io.StringIO()
    export(paths, buffer, fmt=fmt, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def csv_rows(out: Path, file_name: str) -> Iterator[dict[str, str]]:
    """The file's rows of both days; past the cap of interfaces a qube names in a day, none."""
    for day in ("2025-08-31", "2025-09-01"):
        named: dict[str, set[str]] = {}
        with (out / day / file_name).open(newline="") as f:
            for row in csv.DictReader(f):
                if "if" in row:
                    names = named.setdefault(row["vm"], set())
                    if row["if"] not in names and len(names) >= MAX_LABEL_VALUES:
                        continue
                    names.add(row["if"])
                yield row


def expected(out: Path, host: str) -> Samples:
    """Every numeric cell of the CSV as the sample it must become (written out plainly)."""
    want: Samples = {}
    for daily in schema.DAILY_FILES:
        extra = exposition.LABELS.get(daily.file_name)
        if extra is None:
            continue
        for row in csv_rows(out, daily.file_name):
            labels = {"host": host, "vm": row["vm"], **{k: row[k] for k in extra}}
            ts = int(datetime.fromisoformat(row["ts"]).timestamp())
            for column in daily.columns:
                cell = row[column.name]
                if column.kind not in {"int", "dec1", "dec2"} or not cell:
                    continue
                name = f"sysmon_{daily.file_name[:-4]}_{column.name}"
                value = float(cell)
                if name.endswith("_kb"):
                    name, value = name[:-3] + "_bytes", value * 1024
                elif name.endswith("_ms"):
                    name, value = name[:-3] + "_seconds", value / 1000
                if daily is schema.NETWORK or column.name == "cpu_time_ms":
                    name += "_total"
                want.setdefault((name, tuple(sorted(labels.items()))), {})[ts] = value
            for one_hot, file_name, column_name, label, choices in exposition.ONE_HOT:
                if file_name == daily.file_name:
                    for choice in choices:
                        key = tuple(sorted({**labels, label: choice}.items()))
                        hot = float(row[column_name] == choice)
                        want.setdefault((one_hot, key), {})[ts] = hot
    return want


def without_cut(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if k[0] != exposition.CUT_FAMILY}


def test_the_archives_host_is_the_label(world):
    text = exported(archives(world))
    host = host_identity(world)
    assert f'host="{host}"' in text
    assert 'host="laptop"' in exported(archives(world), host="laptop")
    with pytest.raises(ExportError, match="--host"):
        exported([world / "2025-08-31"], host="no spaces allowed")


def test_families_are_whole_and_the_file_ends_with_eof(world):
    text = exported(archives(world))
    assert text.endswith("# EOF\n")
    order = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(order) == len(set(order))  # each family once
    seen: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        family = line.split("{", 1)[0].removesuffix("_total")
        if not seen or seen[-1] != family:
            assert family not in seen, f"{family} interleaved"
            seen.append(family)


def test_every_cell_reads_back_from_victoriametrics_and_prometheus(world, engines):
    """Cell for cell, exactly: restarts, an hour halted, timeouts, odd names."""
    host = engines["host"]
    want = expected(world, host)
    got = engines["vm"].samples()
    assert without_cut(got) == want
    cut = {k: v for k, v in got.items() if k[0] == exposition.CUT_FAMILY}
    # sys-usb named 3 + 40 interfaces that day: 11 past the cap, counted in their own series
    assert cut == {
        (exposition.CUT_FAMILY, (("file", "network.csv"), ("host", host), ("vm", "sys-usb"))): {
            END - 10: 11.0
        }
    }
    assert ("if", ODD_IF) in next(k for k in got if ("if", ODD_IF) in k[1])[1]
    from_prometheus = engines["prom"].samples('{__name__=~"sysmon_.*"}', END + 1)
    assert without_cut(from_prometheus) == want


def _increase(points: list[tuple[int, float]]) -> float:
    total = 0.0
    for (_, a), (_, b) in itertools.pairwise(points):
        total += b - a if b >= a else b  # a reset: the counter started again from 0
    return total


def test_rate_over_whole_windows_is_the_csvs_counter_deltas(world, engines):
    """rate() on both engines over 5-minute windows that start and end on a sample, across
    sys-firewall's restart: the CSV's deltas (a reset counts from 0), no negative spike."""
    series = sorted(
        (int(datetime.fromisoformat(r["ts"]).timestamp()), float(r["rx_bytes"]))
        for r in csv_rows(world, "network.csv")
        if r["vm"] == "sys-firewall" and r["if"] == "eth0"
    )
    at = dict(series)
    ends = [t for t, _ in series if t - 300 in at][::7]
    restart = next(t for (t, v), (_, prev) in zip(series[1:], series, strict=False) if v < prev)
    ends.append(next(t for t in sorted(at) if t >= restart and t - 300 in at))
    match = f'sysmon_network_rx_bytes_total{{host="{engines["host"]}",vm="sys-firewall",if="eth0"}}'
    for engine in (engines["vm"], engines["prom"]):
        for t in ends:
            window = [(s, v) for s, v in series if t - 300 <= s <= t]
            result = engine.query(f"rate({match}[5m])", t)
            assert len(result) == 1, (engine, t)
            rate = float(result[0]["value"][1])
            assert rate == pytest.approx(_increase(window) / 300, rel=1e-9), (engine, t)
            assert rate >= 0


def test_a_day_exported_twice_or_its_vault_copy_adds_nothing(world, tmp_path):
    ledger = Ledger(tmp_path / "ledger.tsv")
    first = exported(archives(world), ledger=ledger)
    again = exported(archives(world), ledger=Ledger(tmp_path / "ledger.tsv"))
    copies = tmp_path / "vault"
    copies.mkdir()
    for tgz in archives(world):
        shutil.copy(tgz, copies / tgz.name.replace(".tgz", ".2.tgz"))
    copy = exported([copies], ledger=Ledger(tmp_path / "ledger.tsv"))
    assert again == copy == "# EOF\n"
    with VictoriaMetrics.start(tmp_path / "vm") as vm:
        vm.import_prometheus(first.encode())
        before = vm.samples()
        vm.import_prometheus(again.encode())
        vm.import_prometheus(copy.encode())
        assert vm.samples() == before
    # the same day from its folder and its archive in one run: once
    both = exported([world / "2025-08-31", archives(world)[0]], host="h")
    assert both == exported([world / "2025-08-31"], host="h")


def test_influx_lines_read_back_from_victoriametrics(world, tmp_path):
    """The same cells as Influx line protocol (CSV units), through VictoriaMetrics' /write."""
    host = host_identity(world)
    lines = exported(archives(world), fmt="influx")
    with VictoriaMetrics.start(tmp_path / "vm") as vm:
        vm.write_influx(lines.encode())
        got = vm.samples('{__name__=~"sysmon_system_.*|sysmon_network_.*"}')
    for name, file_name, column, extra in (
        ("sysmon_system_cpu_user", "system.csv", "cpu_user", ()),
        ("sysmon_system_mem_used_kb", "system.csv", "mem_used_kb", ()),
        ("sysmon_network_rx_bytes", "network.csv", "rx_bytes", ("if",)),
    ):
        want: Samples = {}
        for row in csv_rows(world, file_name):
            if row[column]:
                labels = {"host": host, "vm": row["vm"], **{k: row[k] for k in extra}}
                ts = int(datetime.fromisoformat(row["ts"]).timestamp())
                want.setdefault((name, tuple(sorted(labels.items()))), {})[ts] = float(row[column])
        assert {k: v for k, v in got.items() if k[0] == name} == want, name


def test_alerts_are_loki_push_bodies(world):
    host = host_identity(world)
    lines = exported(archives(world), fmt="alerts-jsonl").splitlines()
    rows = list(csv_rows(world, "alerts.csv"))
    assert len(lines) == len(rows) > 0
    for line, row in zip(lines, rows, strict=True):
        (stream,) = json.loads(line)["streams"]
        assert stream["stream"] == {"host": host, "vm": row["vm"], "job": "sysmon"}
        ((ns, message),) = stream["values"]
        assert int(ns) == int(datetime.fromisoformat(row["ts"]).timestamp()) * 10**9
        assert message == row["msg"]  # commas and quotes kept


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append({"n": "\n", "\\": "\\", '"': '"'}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@given(st.text())
def test_a_label_value_is_escaped_reversibly(value):
    escaped = exposition.escape_label(value)
    assert "\n" not in escaped
    assert _unescape(escaped) == value
    unescaped_quotes = escaped.replace("\\\\", "").replace('\\"', "")
    assert '"' not in unescaped_quotes


def test_from_and_to_choose_days(world):
    only_first = exported(archives(world), until=date(2025, 8, 31))
    only_second = exported(archives(world), since=date(2025, 9, 1))
    stamps = {int(line.rsplit(" ", 1)[1]) for line in only_first.splitlines() if line[0] != "#"}
    assert max(stamps) < datetime(2025, 9, 1, tzinfo=UTC).timestamp()
    stamps = {int(line.rsplit(" ", 1)[1]) for line in only_second.splitlines() if line[0] != "#"}
    assert min(stamps) >= datetime(2025, 9, 1, tzinfo=UTC).timestamp()


def test_a_planted_host_in_the_metadata_is_refused(world, tmp_path):
    """A folder whose sysmon-meta.json names a host that is not one cannot become a label."""
    day = tmp_path / "2025-08-31"
    shutil.copytree(world / "2025-08-31", day)
    (day / "sysmon-meta.json").write_text(json.dumps({"host": 'x",vm="dom0'}))
    with pytest.raises(ExportError, match="--host"):
        exported([day])
    assert 'host="mine"' in exported([day], host="mine")


def test_a_line_without_end_is_read_in_bounded_memory(tmp_path):
    """A planted 64 MB line (no newline) in a day's file: skipped and counted, read a
    piece at a time, and the rows after it still exported."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    good = schema.CONNECTIONS.format_row([START, "work", 3, 1])
    with (day / "connections.csv").open("wb") as f:
        f.write(schema.CONNECTIONS.header)
        f.write(b"2025-08-31T18:00:00Z,work," + b"9" * (64 << 20) + b"\n")
        f.write(good)
    tracemalloc.start()
    try:
        out = io.StringIO()
        counts = export([day], out, host="h")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "sysmon_connections_tcp_established" in out.getvalue()
    assert counts.unreadable >= 1
    assert peak < 16 << 20, peak  # the line is 64 MB


def test_units_become_base_units_without_an_engine(tmp_path):
    """_kb cells are bytes (x1024), _ms ones seconds (/1000), read off the export text
    itself: CI's run without the engines skips every engine test."""
    out = tmp_path / "out"
    day = out / "2025-09-01"
    day.mkdir(parents=True)
    at = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
    (day / "disk.csv").write_bytes(
        schema.DISK.header + schema.DISK.format_row([at, "work", "/dev/xvdb", "/rw", 3, 1, 2, 33])
    )
    xen_row: dict[str, object] = {c.name: None for c in schema.XEN.columns}
    xen_row.update(ts=at, vm="work", cpu_time_ms=1500, memory_kb=5)
    (day / "xen.csv").write_bytes(
        schema.XEN.header + schema.XEN.format_row([xen_row[c.name] for c in schema.XEN.columns])
    )
    samples = {
        line.split("{", 1)[0]: line.rsplit(" ", 2)[1]
        for line in exported([day], host="laptop").splitlines()
        if not line.startswith("#")
    }
    assert samples["sysmon_disk_size_bytes"] == "3072"
    assert samples["sysmon_disk_used_bytes"] == "1024"
    assert samples["sysmon_xen_memory_bytes"] == "5120"
    assert float(samples["sysmon_xen_cpu_time_seconds_total"]) == 1.5


def _main(paths: list[Path], **kwargs: object) -> int:
    options: dict[str, object] = {
        "fmt": "openmetrics",
        "host": None,
        "start": None,
        "end": None,
        "output": None,
        "ledger": None,
        "use_ledger": False,
    }
    options.update(kwargs)
    return export_main(paths, **options)  # type: ignore[arg-type]


def test_push_streams_every_cell_into_victoriametrics_as_json_lines(world, tmp_path, capsys):
    """--push: a POST per day of JSON lines; the engine holds every cell exactly, the cut
    rows' count, and the ledger notes both days only after the engine took them."""
    host = host_identity(world)
    ledger = tmp_path / "ledger.tsv"
    with VictoriaMetrics.start(tmp_path / "vm") as vm:
        assert _main(archives(world), push=vm.url, ledger=ledger, use_ledger=True) == 0
        vm.flush()
        got = vm.samples()
        assert without_cut(got) == expected(world, host)
        cut = {k: v for k, v in got.items() if k[0] == exposition.CUT_FAMILY}
        assert list(cut.values()) == [{END - 10: 11.0}]
        assert len(ledger.read_text().splitlines()) == 2
        assert "2 days into http://127.0.0.1:" in capsys.readouterr().err
        # Exported before: nothing sent, exit 1, the engine as it was.
        assert _main(archives(world), push=vm.url, ledger=ledger, use_ledger=True) == 1
        assert "exported before" in capsys.readouterr().err
        # A path the engine does not serve: its answer, one line, no ledger entry.
        other = tmp_path / "other.tsv"
        code = _main(archives(world), push=f"{vm.url}/nope", ledger=other, use_ledger=True)
        err = capsys.readouterr().err
        assert code == 1
        assert err.startswith("sysmon export: --push: 2025-08-31: ")
        assert "HTTP 4" in err
        assert err.count("\n") == 1
        assert not other.exists()


def test_a_day_written_to_a_file_is_still_pushed(world, tmp_path, capsys, monkeypatch):
    """The default ledgers are per destination: files in one, each engine in its own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    assert _main(archives(world), output=tmp_path / "all.om", use_ledger=True) == 0
    assert _main(archives(world), output=tmp_path / "again.om", use_ledger=True) == 1
    capsys.readouterr()
    url = f"http://127.0.0.1:{free_port()}"
    assert _main(archives(world), push=url, use_ledger=True) == 1  # tried: nothing listens
    err = capsys.readouterr().err
    assert "exported before" not in err
    assert f"({push.TRIES} attempts)" in err
    assert default_ledger("127.0.0.1-8428") != default_ledger()
    assert default_ledger("a/../b c").name == "export-ledger-a-..-b-c.tsv"


def test_each_file_format_keeps_its_own_ledger(world, tmp_path, capsys, monkeypatch):
    """docs/integrations.md's export lines are alternatives a user may well run one
    after another: the same days as JSON lines after OpenMetrics are written, not
    refused as "exported before"; the same format twice still writes nothing."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert _main(archives(world), output=tmp_path / "all.om", use_ledger=True) == 0
    for fmt in ("victoriametrics", "influx"):
        out = tmp_path / f"all.{fmt}"
        assert _main(archives(world), fmt=fmt, output=out, use_ledger=True) == 0, fmt
        assert out.stat().st_size > 0
        assert _main(archives(world), fmt=fmt, output=tmp_path / "again", use_ledger=True) == 1
    assert "exported before" in capsys.readouterr().err
    assert default_ledger(fmt="influx") != default_ledger()
    assert default_ledger(fmt="openmetrics") == default_ledger()  # the ledger kept before


def test_push_to_nothing_or_a_bad_url_is_one_line_and_a_status(
    world, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    ledger = tmp_path / "ledger.tsv"
    code = _main(archives(world), push=f"http://127.0.0.1:{free_port()}", ledger=ledger)
    err = capsys.readouterr().err
    assert code == 1
    assert f"({push.TRIES} attempts)" in err
    assert err.count("\n") == 1
    assert not ledger.exists()
    for url in ("ftp://x/", "http://", "http://h:99999/", "localhost:8428", "http://u@h/"):
        assert _main(archives(world), push=url) == 2, url
        err = capsys.readouterr().err
        assert err.startswith("sysmon export: --push"), err
        assert err.count("\n") == 1, err
    assert _main(archives(world), push="http://h", output=tmp_path / "x") == 2


def test_a_folder_as_output_gets_a_whole_file_per_day(world, tmp_path):
    """-o DIR: HOST-DAY.om per day, each with its families and # EOF; together the
    single file's samples."""
    host = host_identity(world)
    assert _main(archives(world), output=tmp_path) == 0
    files = sorted(tmp_path.glob("*.om"))
    assert [f.name for f in files] == [f"{host}-2025-08-31.om", f"{host}-2025-09-01.om"]
    texts = [f.read_text() for f in files]
    assert all(t.endswith("# EOF\n") for t in texts)
    whole = exported(archives(world))

    def samples(text: str) -> list[str]:
        return sorted(line for line in text.splitlines() if not line.startswith("#"))

    assert samples(texts[0] + texts[1]) == samples(whole)


def test_the_json_lines_and_openmetrics_hold_the_same_samples(world):
    """The two formats, sample for sample, with a planted cell: JSON has no leading zeros."""
    om: Samples = {}
    for line in exported(archives(world)).splitlines():
        if not line.startswith("#"):
            series, value, ts = line.rsplit(" ", 2)
            om.setdefault((series, ()), {})[int(ts)] = float(value)
    js: Samples = {}
    for line in exported(archives(world), fmt="victoriametrics").splitlines():
        item = json.loads(line)
        metric = item["metric"]
        name = metric.pop("__name__")
        series = name + exposition.labels(metric)
        for ts, value in zip(item["timestamps"], item["values"], strict=True):
            assert ts % 1000 == 0, (series, ts)
            js.setdefault((series, ()), {})[ts // 1000] = float(value)
    assert js == om


def test_a_leading_zero_is_a_json_number(tmp_path):
    day = tmp_path / "2025-08-31"
    day.mkdir()
    (day / "connections.csv").write_bytes(
        schema.CONNECTIONS.header + b"2025-08-31T18:00:00Z,work,007,-0\n"
    )
    (line,) = exported([day], fmt="victoriametrics", host="h").splitlines()[:1]
    item = json.loads(line)
    assert item["values"] == [7]
    assert item["timestamps"] == [int(START.timestamp()) * 1000]


def test_a_huge_ms_cell_beside_a_gap_is_a_json_number(tmp_path):
    """A planted 19-digit ms cell in a column with an empty cell (the per-value
    path) is 1e+16 seconds: the export wrote it, not a traceback."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    (day / "xen.csv").write_bytes(
        schema.XEN.header
        + b"2025-08-31T18:00:00Z,work,1,1,9999999999999999999,1,1,1,1,1,1\n"
        + b"2025-08-31T18:00:05Z,work,1,1,,1,1,1,1,1,1\n"
    )
    lines = exported([day], fmt="victoriametrics", host="h").splitlines()
    (item,) = (json.loads(line) for line in lines if "cpu_time_seconds" in line)
    assert item["values"] == [1e16]


_CELL = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.decimals(-1000, 1000, places=2, allow_nan=False).map(str),
    st.sampled_from(["", "007", "-0", "1e3", "0.1234567", " 1", "x", "9" * 20, "1,2"]),
)
_CELLS = st.one_of(
    st.lists(_CELL, min_size=1, max_size=20),
    # A column of a few values, its first and last alike: each value checked once.
    st.lists(_CELL, min_size=1, max_size=4).flatmap(
        lambda few: st.lists(st.sampled_from(few), min_size=15, max_size=60).map(
            lambda cells: [*cells, cells[0]]
        )
    ),
)
#: A family of each kind of scaling: none, kB to bytes, ms to seconds.
_SCALINGS = [
    next(f for f in exposition.FAMILIES if f.factor == 1),
    next(f for f in exposition.FAMILIES if f.factor > 1),
    next(f for f in exposition.FAMILIES if f.factor < 1),
]


@given(cells=_CELLS, family=st.sampled_from(_SCALINGS))
def test_a_joined_column_is_its_values_comma_joined(cells, family):
    """The JSON path's one string per column says what the per-value list says, and
    refuses the same columns (an empty cell, a leading zero, a word)."""
    values = family.values(cells)
    joined = family.joined(cells)
    assert joined == (",".join(values) if values is not None else None)
    if joined is not None:  # each a JSON number, the cell's own value scaled
        if family.factor == 1:
            want = [float(c) for c in cells]
        elif family.factor > 1:
            want = [int(c) * 1024 for c in cells]
        else:
            want = [int(c) / 1000 for c in cells]
        assert json.loads(f"[{joined}]") == want


@given(
    cell=st.one_of(_CELL, st.integers(-(10**19) + 1, 10**19 - 1).map(str)),
    family=st.sampled_from(_SCALINGS),
)
@example(cell="9999999999999999999", family=_SCALINGS[2])  # 1e+16 seconds
@example(cell="-9999999999999999001", family=_SCALINGS[2])
def test_each_cell_alone_is_a_json_number_or_none(cell, family):
    """The per-value path (a column with a gap) gives each cell as a JSON number: a
    19-digit ms cell is 1e+16 s, which repr writes without a point (it raised)."""
    text = family.json_value(cell)
    value = family.value(cell)
    assert (text is None) == (value is None)
    if text is not None:
        assert float(json.loads(text)) == float(value)
        assert family.joined([cell, ""]) is None  # the column with a gap takes this path


@pytest.mark.parametrize(
    "cells",
    [["1", ""], ["-0", ""], ["", "1"], ["1", "", "2"], ["1,"], ["1,2"], ["1", "2,3"], ["1,2"] * 16],
)
@pytest.mark.parametrize("family", _SCALINGS, ids=["same", "kB", "ms"])
def test_a_column_with_an_empty_cell_is_not_joined(cells, family):
    """An empty cell is no JSON number: the column takes the per-value path.  Debian
    12's Python (3.11.2) fullmatched "1," with possessive quantifiers (CI's Debian 12
    run found it), so a column with a gap would have been written as bad JSON.  Nor is
    a cell with a comma (quoted, in a planted file): it would be two values."""
    assert family.joined(cells) is None


def test_the_collector_is_as_it_was_after_a_day(small_day):
    """The export pauses Python's cyclic collector while it reads a day; after the day,
    or a consumer that stops early, it is back as the caller had it."""
    import gc  # noqa: PLC0415 -- only here

    from sysmon.commands.export.series import Counts, day_pieces  # noqa: PLC0415

    (day,), _ = plan(
        [small_day], fmt="victoriametrics", host="h", since=None, until=None, ledger=None
    )
    assert gc.isenabled()
    pieces = day_pieces(day, "victoriametrics", Counts())
    next(pieces)
    assert not gc.isenabled()  # paused while the day is read
    pieces.close()
    assert gc.isenabled()
    assert list(day_pieces(day, "victoriametrics", Counts()))
    assert gc.isenabled()
    gc.disable()
    try:
        list(day_pieces(day, "victoriametrics", Counts()))
        assert not gc.isenabled()  # not turned on for a caller that had it off
    finally:
        gc.enable()


@pytest.mark.slow
def test_the_documented_curl_imports_stream_each_days_file(world, tmp_path):
    """docs/integrations.md's `curl -T` lines, run as written on per-day files of both
    formats: VictoriaMetrics holds every cell."""
    curl = require_tool("curl")
    text = (ROOT / "docs" / "integrations.md").read_text()
    block = text.split("### VictoriaMetrics", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("curl -T")]
    assert [c[2].rsplit(".", 1)[1] for c in commands] == ["jsonl", "om"]
    host = host_identity(world)
    for fmt in ("victoriametrics", "openmetrics"):
        assert _main(archives(world), fmt=fmt, output=tmp_path) == 0
    with VictoriaMetrics.start(tmp_path / "vm") as vm:
        for command in commands:
            suffix = command[2].rsplit(".", 1)[1]
            for day in ("2025-08-31", "2025-09-01"):
                path = tmp_path / f"{host}-{day}.{suffix}"
                url = command[3].replace("http://127.0.0.1:8428", vm.url)
                done = subprocess.run(
                    [curl, "-sS", "--fail", "-T", str(path), url], capture_output=True, check=False
                )
                assert done.returncode == 0, done.stderr
        vm.flush()
        assert without_cut(vm.samples()) == expected(world, host)


@contextlib.contextmanager
def hostile_engine(
    answer: Callable[[socket.socket], None], *, until: bytes = b"\r\n0\r\n\r\n"
) -> Iterator[str]:
    """An HTTP server on loopback that reads each request (to ``until``), then ``answer``s it."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(30)
            with conn:
                request = b""
                while until not in request:
                    if not (data := conn.recv(1 << 16)):
                        break
                    request += data
                with contextlib.suppress(OSError):
                    answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(30)
        server.close()


@pytest.fixture(name="small_day")
def _small_day(tmp_path):
    day = tmp_path / "2025-08-31"
    day.mkdir()
    (day / "connections.csv").write_bytes(
        schema.CONNECTIONS.header + b"2025-08-31T18:00:00Z,work,7,0\n"
    )
    return day


def test_an_engines_words_reach_the_terminal_clean_and_short(small_day, capsys, monkeypatch):
    """A hostile engine's reason phrase or protocol name: no escape sequence, one short line."""
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    evil = "\x1b]0;owned\x07\x1b[2J" + "A" * 60_000
    for status_line in (f"HTTP/1.1 418 {evil}", f"HTTP/9{evil} 200 OK"):

        def answer(conn: socket.socket, line: str = status_line) -> None:
            conn.sendall(line.encode("latin-1") + b"\r\nContent-Length: 0\r\n\r\n")

        with hostile_engine(answer) as url:
            assert _main([small_day], push=url, host="h") == 1
        err = capsys.readouterr().err
        assert "\x1b" not in err
        assert "\x07" not in err
        assert err.count("\n") == 1
        assert len(err) < 1000, len(err)


@pytest.mark.slow
def test_an_engine_that_never_finishes_its_answer_is_left(small_day, capsys, monkeypatch):
    """Each read has its timeout; the answer as a whole has one too: an engine sending
    "100 Continue" a line at a time, forever, does not hold the export."""
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    monkeypatch.setattr(push, "TIMEOUT", 1.0)

    def answer(conn: socket.socket) -> None:
        for _ in range(200):  # a byte well within each read's timeout, for 4 s
            for byte in b"HTTP/1.1 100 Continue\r\n\r\n":
                conn.sendall(bytes([byte]))
            time.sleep(0.02)
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    ledger = small_day.parent / "ledger.tsv"
    with hostile_engine(answer) as url:
        assert _main([small_day], push=url, host="h", ledger=ledger, use_ledger=True) == 1
    err = capsys.readouterr().err
    assert "no whole answer within 1 s" in err
    assert not ledger.exists()


def test_a_2xx_for_a_day_not_sent_whole_is_no_acceptance(tmp_path, capsys, monkeypatch):
    """An engine that answers 204 after the headers and hangs up: the day never reached
    it whole, so the ledger does not note it."""
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    monkeypatch.setattr(push, "CHUNK", 1024)  # many sends: one comes after the hang-up
    day = tmp_path / "2025-08-31"
    day.mkdir()
    rows = (
        f"2025-08-31T{h:02d}:{m:02d}:{s:02d}Z,work,{h * m + s},0\n"
        for h in range(24)
        for m in range(60)
        for s in range(0, 60, 2)
    )
    (day / "connections.csv").write_bytes(schema.CONNECTIONS.header + "".join(rows).encode())

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    ledger = tmp_path / "ledger.tsv"
    with hostile_engine(answer, until=b"\r\n\r\n") as url:
        code = _main([day], push=url, host="h", ledger=ledger, use_ledger=True)
    assert code == 1, capsys.readouterr().err
    assert "before the day was sent whole" in capsys.readouterr().err
    assert not ledger.exists()


def _influx_reference(kind: str, cell: str) -> str | None:
    """A cell's Influx field value as the export wrote it row by row (before #28)."""
    if not cell or kind == "pct":
        return None
    if kind == "int":
        # within int64: InfluxDB 1.x refuses a line past it (the row-by-row code wrote it)
        in_range = re.fullmatch(r"-?[0-9]{1,19}", cell) and -(2**63) <= int(cell) < 2**63
        return f"{cell}i" if in_range else None
    if kind in {"dec1", "dec2"}:
        return cell if re.fullmatch(r"-?[0-9]{1,19}(\.[0-9]{1,6})?", cell) else None
    if "\n" in cell:  # line protocol has no escape for it
        return None
    return '"' + cell.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _escaped(text: str, specials: str) -> str:
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


@given(
    cells=st.one_of(
        _CELLS,
        st.lists(st.sampled_from(["", "ok", 'a "b"', "c\\,d", "{x}", "ok\nx"])),
        # 19 digits: within int64 or past it (InfluxDB 1.x refuses those)
        st.lists(st.sampled_from(["9" * 19, "1" + "0" * 18, str(2**63 - 1), str(2**63)])),
        st.lists(st.sampled_from([str(-(2**63)), str(-(2**63) - 1), "0" * 18 + "1", "7"])),
    ),
    kind=st.sampled_from(["int", "dec1", "dec2", "pct", "text"]),
    key=st.sampled_from(["rx_bytes", "a b", "{k}", "x=y,z"]),
)
def test_influx_fields_are_each_cells_field(cells, kind, key):
    """A column checked in one pass gives each cell's field as a cell alone would."""
    got = exposition.influx_fields(kind, key, cells)
    key_text = _escaped(key, ",= ")
    want = [None if (v := _influx_reference(kind, c)) is None else f"{key_text}={v}" for c in cells]
    assert list(got) == want


@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.none(), st.sampled_from(["a=1i", 'b=2.5,c="x"'])), st.integers(-5, 2**33)
        ),
        max_size=10,
    ),
    tags=st.dictionaries(
        st.sampled_from(["host", "vm", "if", "a b"]), st.text(max_size=5), max_size=4
    ),
)
def test_influx_lines_are_a_line_per_row_with_fields(rows, tags):
    """A series' lines: each row with fields as one line, in order, its time in ns."""
    fields = [f for f, _ in rows]
    ts = [t for _, t in rows]
    head = _escaped("sysmon_network", ", ") + "".join(
        f",{_escaped(k, ',= ')}={_escaped(v, ',= ')}" for k, v in tags.items() if v
    )
    want = "".join(f"{head} {f} {t * 1_000_000_000}\n" for f, t in rows if f is not None)
    assert exposition.influx_lines("sysmon_network", tags, fields, ts) == want


def test_a_planted_newline_is_no_influx_line_of_its_own(tmp_path):
    """Line protocol has no escape for a newline in a tag value or a string field, so a
    planted cell holding one would be a line of its own choosing: a point forged under
    any host and qube.  Its rows are left out and counted unreadable instead."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    forged = "\nsysmon_network,host=h,vm=forged rx_bytes=1i 0\n"
    (day / "network.csv").write_bytes(
        schema.NETWORK.header
        + f'2025-08-31T18:00:00Z,"work{forged}",eth0,1,0,0,2,0,0\n'.encode()
        + f'2025-08-31T18:00:00Z,work,"eth0{forged}",1,0,0,2,0,0\n'.encode()
        + b"2025-08-31T18:00:00Z,work,eth1,1,0,0,2,0,0\n"
    )
    (day / "scrapes.csv").write_bytes(
        schema.SCRAPES.header
        + f'2025-08-31T18:00:00Z,work,"ok{forged}",1,1,1,0\n'.encode()
        + b"2025-08-31T18:00:00Z,work,ok,1,1,1,0\n"
    )
    buffer = io.StringIO()
    counts = export([day], buffer, fmt="influx", host="h")
    lines = buffer.getvalue().splitlines()
    assert not any("forged" in line for line in lines)
    # eth1's row; the status word's row without its status field, and the other row whole
    assert [line.split(" ")[0] for line in lines] == [
        "sysmon_network,host=h,vm=work,if=eth1",
        "sysmon_scrapes,host=h,vm=work",
        "sysmon_scrapes,host=h,vm=work",
    ]
    assert [line.count("status=") for line in lines] == [0, 0, 1]
    assert counts.unreadable == 2  # the rows whose qube or interface held one


def test_an_influx_integer_past_int64_is_no_field(tmp_path):
    """InfluxDB 1.x refuses a line whose integer field is past int64 (strconv.ParseInt:
    ``unable to parse integer 9999999999999999999``; measured with 1.6.7), and
    ``influx -import`` then fails its whole batch and exits 1.  A planted cell of 19
    digits past the range is no field, as a number not in the writer's form; the
    range's own ends (and a leading zero) stay fields."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    cells = ["9223372036854775807", "-9223372036854775808", "0000000000000000001"]
    past = ["9223372036854775808", "-9223372036854775809", "9999999999999999999"]
    (day / "network.csv").write_bytes(
        schema.NETWORK.header
        + b"".join(
            f"2025-08-31T18:00:0{i}Z,work,eth0,{cell},0,0,{i},0,0\n".encode()
            for i, cell in enumerate(cells + past)
        )
    )
    lines = exported([day], fmt="influx", host="h").splitlines()
    fields = [dict(f.split("=") for f in line.split(" ")[1].split(",")) for line in lines]
    rx = [f.get("rx_bytes") for f in fields]
    assert rx == [f"{cell}i" for cell in cells] + [None] * len(past)


def test_an_influx_series_key_past_its_limit_leaves_its_rows_out(tmp_path):
    """InfluxDB 1.x refuses a point whose series key and field key pass 65,535 bytes
    (``max key length exceeded: 65540 > 65535``: the key, 4, the field key; measured
    with 1.6.7) and ``influx -import`` exits 1.  A planted qube or label that long
    leaves its rows out, counted unreadable; one just under it is written."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    head = "sysmon_network,host=h,vm=work,if="
    longest = max(len(column.name) for column in schema.NETWORK.columns)  # a field key
    room = 65535 - 4 - longest
    names = ["é" * ((room - len(head)) // 2), "x" * (room - len(head) + 1), "eth0"]
    (day / "network.csv").write_bytes(
        schema.NETWORK.header
        + "".join(
            f"2025-08-31T18:00:0{i}Z,work,{n},1,0,0,2,0,0\n" for i, n in enumerate(names)
        ).encode()
    )
    buffer = io.StringIO()
    counts = export([day], buffer, fmt="influx", host="h")
    lines = buffer.getvalue().splitlines()
    assert [line.split(" ")[0] for line in lines] == [head + names[0], head + "eth0"]
    assert room - 1 <= len(lines[0].split(" ")[0].encode()) <= room
    assert counts.unreadable == 1


def _influx_1x_tag_value(line: str) -> tuple[str, str]:
    """The first tag value of ``m,k=VALUE ...`` as InfluxDB 1.6 reads it (measured:
    a backslash and the character after it are skipped over while scanning, then
    only an escaped comma, space or equals sign is unescaped), and what follows."""
    start = i = line.index("=") + 1
    while i < len(line) and line[i] not in ", ":
        i += 2 if line[i] == "\\" else 1
    raw = line[start:i]
    for char in ",= ":
        raw = raw.replace("\\" + char, char)
    return raw, line[i:]


@given(st.text(alphabet="ab\\,= \n", min_size=1, max_size=8))
@example("/media/user/My\\040Disk")
@example("tail\\")
@example("c\\,d")
def test_a_tag_value_influx_takes_reads_back_as_it_is(value):
    """What influx_tag lets through is read back by InfluxDB 1.x as it was written
    (a mount with a space, \\040, among them); what it refuses is a planted cell."""
    if exposition.influx_tag(value):
        line = exposition.influx_lines("m", {"k": value}, ["f=1i"], [0])
        assert _influx_1x_tag_value(line) == (value, " f=1i 0\n")
    else:
        assert "\n" in value or re.search(r"\\(?:[,= ]|$)", value)


def test_a_tag_influx_cannot_hold_takes_no_label_slot(tmp_path):
    """A planted interface name no tag can hold is left out before the label caps:
    32 of them do not push a qube's real interface past the cap."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    planted = b"".join(
        b'2025-08-31T18:00:00Z,work,"eth%d\\\\",1,0,0,2,0,0\n' % n for n in range(MAX_LABEL_VALUES)
    )
    (day / "network.csv").write_bytes(
        schema.NETWORK.header + planted + b"2025-08-31T18:00:10Z,work,eth0,1,0,0,2,0,0\n"
    )
    buffer = io.StringIO()
    counts = export([day], buffer, fmt="influx", host="h")
    assert [line.split(" ")[0] for line in buffer.getvalue().splitlines()] == [
        "sysmon_network,host=h,vm=work,if=eth0"
    ]
    assert counts.unreadable == MAX_LABEL_VALUES
    assert counts.cut == 0


def test_a_flood_of_disposables_does_not_cut_a_qube_started_later(tmp_path):
    """Any qube may start disposables (docs/security.md), and dom0 names each anew
    (``dispNNNN``): one an hour's churn past the day's cap of qubes cut every qube
    started later that day -- its rows in the CSV, none of its series in the engine.
    Disposables have a cap of their own; a qube dom0 names otherwise keeps its series."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    rows = [schema.CONNECTIONS.format_row([START, "personal", 3, 1])]
    for i in range(MAX_QUBES + 5):  # one poll each, ten seconds apart
        rows.append(
            schema.CONNECTIONS.format_row([START + timedelta(seconds=10 * i), f"disp{i + 1}", 1, 1])
        )
    later = START + timedelta(hours=4)
    rows.append(schema.CONNECTIONS.format_row([later, "work", 7, 2]))
    (day / "connections.csv").write_bytes(schema.CONNECTIONS.header + b"".join(rows))
    buffer = io.StringIO()
    counts = export([day], buffer, fmt="openmetrics", host="h")
    text = buffer.getvalue()
    assert 'sysmon_connections_tcp_established{host="h",vm="work"} 7 ' in text
    assert 'sysmon_connections_tcp_established{host="h",vm="personal"} 3 ' in text
    assert counts.cut == 5  # the disposables past their own cap, counted


def test_rows_cut_from_a_churn_of_qubes_are_counted_in_a_bounded_number_of_series(tmp_path):
    """Each cut qube's count was a series of its own: a day of disposables past
    their cap, thousands of ``sysmon_export_cut_rows`` series.  Past 64 names
    the rest are counted together, under ``vm="(others)"``, no row uncounted."""
    day = tmp_path / "2025-08-31"
    day.mkdir()
    extra = MAX_CUT_NAMES + 100
    rows = [
        schema.CONNECTIONS.format_row([START + timedelta(seconds=i), f"disp{i + 1}", 1, 1])
        for i in range(MAX_QUBES + extra)
    ]
    (day / "connections.csv").write_bytes(schema.CONNECTIONS.header + b"".join(rows))
    buffer = io.StringIO()
    counts = export([day], buffer, fmt="openmetrics", host="h")
    lines = buffer.getvalue().splitlines()
    cut = [line for line in lines if line.startswith(exposition.CUT_FAMILY + "{")]
    assert counts.cut == extra
    assert len(cut) == MAX_CUT_NAMES + 1
    assert sum(int(line.split()[1]) for line in cut) == extra
    assert sum(f'vm="{OTHERS}"' in line for line in cut) == 1


def test_a_password_in_the_push_url_is_never_printed(small_day, capsys, monkeypatch):
    """--push refuses a user or password in the URL (it is never sent): the refusal
    does not print them back, nor does any other message, and a password without a
    user (``http://:pw@host``) is refused too, not dropped in silence."""
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    port = free_port()
    for url in (
        f"http://user:s3cret@127.0.0.1:{port}/",
        "http://user:s3cret@h:99999/",
        f"http://:s3cret@127.0.0.1:{port}/",
        f"http://s3cret@127.0.0.1:{port}/",
        "user:s3cret@h:8428",
    ):
        assert _main([small_day], push=url, host="h") == 2, url
        err = capsys.readouterr().err
        assert "s3cret" not in err, err
        assert err.startswith("sysmon export: --push"), err


def test_a_token_in_the_push_urls_query_is_never_printed(small_day, capsys, monkeypatch):
    """A query string may carry a token (vmauth's ``?authKey=``): it is sent, but
    the summary and the errors print ``?...`` in its place."""
    monkeypatch.setattr(push, "BACKOFF", (0.0,))
    url = f"http://127.0.0.1:{free_port()}/api/v1/import?authKey=s3cret"
    assert "s3cret" not in str(push.Target.parse(url))
    assert "s3cret" in push.Target.parse(url).path  # what is sent
    assert _main([small_day], push=url, host="h") == 1  # nobody listens there
    err = capsys.readouterr().err
    assert "s3cret" not in err, err
    assert "/api/v1/import?..." in err, err


def test_each_tenant_of_one_engine_keeps_its_own_ledger():
    """Two tenants of one VictoriaMetrics cluster (``/insert/0/...``,
    ``/insert/1/...`` on one vminsert) shared a ledger named by host and port:
    a day pushed to one was "exported before" for the other, never sent.  A
    path other than the default names its own; the default keeps the name
    ledgers had."""
    base = "http://10.0.0.1:8480/insert/{}/prometheus/api/v1/import"
    zero, one = (push.Target.parse(base.format(n)) for n in (0, 1))
    assert zero.engine != one.engine
    assert default_ledger(zero.engine) != default_ledger(one.engine)
    assert push.Target.parse("http://127.0.0.1:8428").engine == "127.0.0.1-8428"
    labelled = push.Target.parse("http://127.0.0.1:8428/api/v1/import?extra_label=site=b")
    assert labelled.engine != "127.0.0.1-8428"


def test_a_closed_stdout_is_one_line_and_a_status(small_day, tmp_path, capsys, monkeypatch):
    """``sysmon export DAY >&-``: Python has no sys.stdout at all; one line, exit 1,
    nothing in the ledger (it was a traceback after the day was read)."""
    monkeypatch.setattr(sys, "stdout", None)
    ledger = tmp_path / "ledger.tsv"
    assert _main([small_day], host="h", ledger=ledger, use_ledger=True) == 1
    err = capsys.readouterr().err
    assert err.startswith("sysmon export: stdout"), err
    assert err.count("\n") == 1, err
    assert not ledger.exists()


def test_the_same_day_of_two_hosts_is_exported_for_both(tmp_path):
    """Two machines' vault folders each hold monitor-2025-08-31.tgz: both days are
    exported, each under its host (the second was dropped in silence as if it were
    a copy of the first); a folder and its own archive are still one day."""
    day = date(2025, 8, 31)
    tgzs, hosts = [], []
    for name in ("a", "b"):
        out = tmp_path / name
        (out / day.isoformat()).mkdir(parents=True)
        (out / day.isoformat() / "connections.csv").write_bytes(
            schema.CONNECTIONS.header + f"2025-08-31T18:00:00Z,work,{len(name) + 6},0\n".encode()
        )
        tgzs.append(build_archive(out, day, day_meta(out, day, version=__version__, interval=30.0)))
        hosts.append(host_identity(out))
    for paths in (tgzs, [t.parent for t in tgzs], [tmp_path / "a", tmp_path / "b"]):
        text = exported(paths)
        for host in hosts:
            assert f'sysmon_connections_tcp_established{{host="{host}",vm="work"}} 7 ' in text
    once = exported([tmp_path / "a" / day.isoformat(), tgzs[0]])
    assert once.count("sysmon_connections_tcp_established{") == 1


def test_two_exports_at_once_on_one_ledger_send_a_day_once(small_day, tmp_path, capsys):
    """A second export started while the first is still pushing (a timer and a hand
    at once) found the day not in the ledger yet and pushed it again: the engine got
    it twice and the ledger noted it twice.  The second now stops at once, exit 1."""
    got, release = threading.Event(), threading.Event()
    requests: list[int] = []

    def answer(conn: socket.socket) -> None:
        requests.append(1)
        got.set()
        release.wait(30)
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    ledger = tmp_path / "ledger.tsv"
    codes: list[int] = []

    def run(url: str) -> None:
        codes.append(_main([small_day], push=url, host="h", ledger=ledger, use_ledger=True))

    with hostile_engine(answer) as url:
        first = threading.Thread(target=run, args=(url,))
        first.start()
        assert got.wait(30)
        second = threading.Thread(target=run, args=(url,))
        second.start()
        second.join(5)
        release.set()
        first.join(60)
        second.join(60)
    assert sorted(codes) == [0, 1]
    assert len(requests) == 1
    assert len(ledger.read_text().splitlines()) == 1
    assert "another sysmon export" in capsys.readouterr().err


FULL_LEDGER = """
import contextlib, sys
from pathlib import Path
from sysmon import schema
from sysmon.commands.export import main
mnt = Path(sys.argv[1])
work = Path(sys.argv[2])
ledger = mnt / "ledger.tsv"
# 37 lines of another host's days: 63 bytes left in the file's one page.
ledger.write_text("".join(f"{'e' * 32}\\t2024-01-{d:02d}\\t{'0' * 64}\\n" for d in range(1, 38)))
with contextlib.suppress(OSError), (mnt / "filler").open("wb", buffering=0) as f:
    while True:
        f.write(b"x" * 4096)
days = []
for name in ("2025-08-30", "2025-08-31"):
    day = work / name
    day.mkdir()
    (day / "connections.csv").write_bytes(
        schema.CONNECTIONS.header + f"{name}T18:00:00Z,work,7,0\\n".encode()
    )
    days.append(day)
def export(to):
    return main(days, fmt="openmetrics", host="h", start=None, end=None,
                output=work / to, ledger=ledger, use_ledger=True)
print("full:", export("a.om"))
(mnt / "filler").unlink()  # space comes back
print("again:", export("b.om"))
print("third:", export("c.om"))
"""


def test_a_ledger_line_cut_by_a_full_disk_costs_no_later_day(tmp_path):
    """The ledger's disk fills as a day is noted: half its line is written.  The next
    export's first line was appended to that half and never read back, so that day
    was exported a third time.  A line without its end is now ended first."""
    work = tmp_path / "work"
    work.mkdir()
    script = FULL_LEDGER.replace("Path(sys.argv[2])", f"Path({str(work)!r})")
    done = run_on_small_tmpfs(script, "64k", tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["full: 1", "again: 0", "third: 1"], done.stderr
