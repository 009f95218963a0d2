"""Read every file sysmon writes the way Telegraf and Alloy do."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_sysmon
from fakequbes.world import make_world
from fakes import LIAR_PAYLOAD, write_tick

from sysmon import schema
from sysmon.protocol.xen_events import DomainStats
from sysmon.transform.views import ViewsLimits

# Real processes on the real clock: left out of a default run (--run-slow).
pytestmark = pytest.mark.slow

TELEGRAF = ROOT / "contrib" / "telegraf" / "sysmon.conf"
ALLOY = ROOT / "contrib" / "alloy" / "sysmon-alerts.alloy"
INT64 = (-(2**63), 2**63 - 1)


def go_csv_records(text: str) -> list[list[str]]:
    """Go's encoding/csv with LazyQuotes off and FieldsPerRecord 0: a quote in
    an unquoted field, or a record of another length than the first, fails."""
    records: list[list[str]] = []
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        fields: list[str] = []
        i = 0
        while True:
            if line[i : i + 1] == '"':
                i += 1
                value = []
                while True:
                    j = line.find('"', i)
                    assert j >= 0, f"line {number}: unterminated quote"
                    value.append(line[i:j])
                    if line[j + 1 : j + 2] == '"':
                        value.append('"')
                        i = j + 2
                        continue
                    i = j + 1
                    break
                fields.append("".join(value))
                assert i == len(line) or line[i] == ",", (
                    f"line {number}: extraneous text after quote"
                )
            else:
                j = line.find(",", i)
                end = len(line) if j < 0 else j
                assert '"' not in line[i:end], f'line {number}: bare " in non-quoted field'
                fields.append(line[i:end])
                i = end
            if i >= len(line):
                break
            i += 1  # the comma
        if records:
            assert len(fields) == len(records[0]), f"line {number}: wrong number of fields"
        records.append(fields)
    return records


def go_accepts(kind: str, value: str) -> bool:
    """Whether Telegraf's CSV parser takes ``value`` as a ``kind`` (strconv's rules)."""
    if kind == "int":
        return bool(re.fullmatch(r"[+-]?[0-9]+", value)) and INT64[0] <= int(value) <= INT64[1]
    if kind == "float":
        return bool(re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", value))
    return True


def go_parse(kind: str, value: str) -> None:
    assert go_accepts(kind, value), (kind, value)


@pytest.fixture(name="day", scope="module")
def _day(tmp_path_factory):
    """A day folder with every kind of row: healthy qubes, a hostile one, CPU on
    a second poll, xen rows and sysmon's own alert."""
    tmp = tmp_path_factory.mktemp("integ")
    liar = tmp / "liar.txt"
    liar.write_bytes(LIAR_PAYLOAD)
    env = make_world(
        tmp / "world", {"work": "healthy", "liar": f"payload {liar}", "gone": "refused"}
    )
    out = tmp / "out"
    for _ in range(2):
        done = run_sysmon("once", "--out-dir", out, env=env)
        assert done.returncode == 0, done.stderr
        subprocess.run(["sleep", "1.1"], check=True)
    xen = [DomainStats("dom0", 3, 6, 123456, 4_000_000), DomainStats("work", 1, 2, 99, 400_000)]
    now = datetime.now(UTC).replace(microsecond=0)
    write_tick(
        out,
        now,
        [],
        None,
        xen=xen,
        views=ViewsLimits(),
        notes=[("sys-monitor", "sysmon: archive of 2025-08-30 refused: x, y")],
    )
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def telegraf_inputs() -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = tomllib.loads(TELEGRAF.read_text())["inputs"]["tail"]
    return inputs


def test_telegraf_covers_every_file_but_alerts():
    files = {Path(i["files"][0]).name for i in telegraf_inputs()}
    assert files == {s.file_name for s in schema.DAILY_FILES} - {"alerts.csv"}


@pytest.mark.parametrize("tail", telegraf_inputs(), ids=lambda t: Path(t["files"][0]).name)
def test_telegraf_reads_every_row(day, tail):
    """Column names are the header; every cell parses as its declared type; ts
    parses with the configured layout; tags are the identifier columns."""
    assert tail["initial_read_offset"] == "saved-or-beginning"
    assert tail["path_tag"] == ""
    assert tail["csv_skip_values"] == [""]
    path = day / Path(tail["files"][0]).name
    assert fnmatch.fnmatch(f"/home/user/Monitor/{day.name}/{path.name}", tail["files"][0])
    records = go_csv_records(path.read_text())
    assert records[0] == tail["csv_column_names"]
    assert tail["csv_timestamp_format"] == "2006-01-02T15:04:05Z07:00"
    assert set(tail["csv_tag_columns"]) <= {"vm", "if", "fs", "mount"}
    assert len(records) > 1, path.name
    # The header line is read as a row too (csv_header_row_count = 0): its "ts"
    # fails the timestamp layout, so Telegraf logs it and drops it -- never a point.
    header = dict(zip(tail["csv_column_names"], records[0], strict=True))
    with pytest.raises(ValueError):
        datetime.strptime(header["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    for row in records[1:]:
        for value, kind, name in zip(
            row, tail["csv_column_types"], tail["csv_column_names"], strict=True
        ):
            if value == "":
                continue  # csv_skip_values
            if name == "ts":
                datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            go_parse(kind, value)


def test_alloy_reads_alerts(day):
    text = ALLOY.read_text()
    drop = re.search(r'stage\.drop \{\s*expression = "([^"]+)"', text)
    regex = re.search(r'stage\.regex \{\s*expression = "(.+)"\n', text)
    assert drop
    assert regex
    lines = (day / "alerts.csv").read_text().splitlines()
    assert re.search(drop.group(1), lines[0])
    pattern = re.compile(regex.group(1).replace("\\\\", "\\").replace("?P<", "?P<"))
    assert len(lines) > 2
    for line in lines[1:]:
        assert not re.search(drop.group(1), line)
        match = pattern.match(line)
        assert match, line
        datetime.strptime(match["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    go_csv_records((day / "alerts.csv").read_text())


@pytest.mark.parametrize("bad", ['a,b"c\n', "a,b\nc\n", '"a\n', '"a"b,c\n'])
def test_the_go_rules_reject_what_go_rejects(bad):
    with pytest.raises(AssertionError):
        go_csv_records(bad)
