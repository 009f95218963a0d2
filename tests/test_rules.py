"""Threshold rules: parsed strictly, firing and resolving once, surviving restarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from csvcheck import read_day
from fakes import write_tick

from sysmon import schema
from sysmon.config import ConfigError, config_from_mapping
from sysmon.protocol.metrics import Snapshot, SysRecord
from sysmon.records import Row, RuleState, ScrapeResult
from sysmon.store.state import load_state
from sysmon.transform.rows import encode_row
from sysmon.transform.rules import GRACE, MAX_INSTANCES, RuleError, evaluate, parse_rules

EXAMPLES = [
    {
        "name": "cpu-busy",
        "file": "system",
        "expr": "cpu_user + cpu_system",
        "op": ">",
        "value": 90,
        "for": "5m",
    },
    {
        "name": "mem-low",
        "file": "system",
        "expr": "mem_avail_kb",
        "op": "<",
        "value": 200000,
        "for": "2m",
    },
    {"name": "disk-full", "file": "disk", "expr": "pct_used", "op": ">=", "value": 90},
    {
        "name": "polls-failing",
        "file": "scrapes",
        "expr": "failed",
        "op": "==",
        "value": 1,
        "for": "3 polls",
    },
]
TS = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)


def system_row(t: float, vm: str, user: float, system: float) -> Row:
    ts = datetime.fromtimestamp(t, tz=UTC)
    values = {"ts": ts, "vm": vm, "cpu_user": user, "cpu_system": system}
    return encode_row(schema.SYSTEM, {**values, "cpu_idle": 100 - user - system})


def disk_row(ts: datetime, vm: str, fs: str, mount: str, used: int) -> Row:
    sizes = {"size_kb": 100, "used_kb": used, "avail_kb": 100 - used, "pct_used": used}
    return encode_row(schema.DISK, {"ts": ts, "vm": vm, "fs": fs, "mount": mount, **sizes})


class TestParse:
    def test_the_seed_examples(self):
        rules = parse_rules(EXAMPLES, "sysmon.toml")
        assert [r.describe() for r in rules] == [
            "cpu_user+cpu_system > 90 for 300s",
            "mem_avail_kb < 200000 for 120s",
            "pct_used >= 90",
            "failed == 1 for 3 polls",
        ]

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"file": "nope"}, "file must be one of"),
            ({"expr": "cpu_usr"}, "'cpu_usr' is not a numeric column of system.csv"),
            ({"expr": "vm"}, "'vm' is not a numeric column"),
            ({"op": "=>"}, "op must be one of"),
            ({"value": "90"}, "value must be a number"),
            ({"for": "5 minutes"}, "for must be like"),
            # No float holds these: a line naming the rule, not a traceback.
            ({"value": 10**400}, "value must be a number"),
            ({"for": "1" + "0" * 400 + "s"}, "for must be like"),
            ({"for": "1" + "0" * 5000 + " polls"}, "for must be like"),
            ({"vm": "../x"}, "vm must be a qube name"),
            ({"colour": "red"}, "unknown key 'colour'"),
        ],
    )
    def test_a_bad_rule_is_named(self, change, message):
        bad = {**EXAMPLES[0], **change}
        with pytest.raises(RuleError, match=f"sysmon.toml: rule 'cpu-busy'.*{message}"):
            parse_rules([bad], "sysmon.toml")

    def test_duplicate_names_and_config_errors(self):
        with pytest.raises(RuleError, match="defined twice"):
            parse_rules([EXAMPLES[0], EXAMPLES[0]], "f")
        with pytest.raises(ConfigError, match=r"f\.toml: rule 'disk-full'"):
            config_from_mapping({"rules": [{**EXAMPLES[2], "op": "~"}]}, "f.toml")
        assert len(config_from_mapping({"rules": EXAMPLES}, "f.toml").rules) == 4


class TestEvaluate:
    def test_five_minutes_at_ten_seconds(self):
        """Busy from poll 10: fires at poll 40 (300 s on), resolves at 45; idle never fires."""
        (rule,) = parse_rules([EXAMPLES[0]], "t")
        state: dict[str, RuleState] = {}
        said = []
        for i in range(50):
            cpu = (60.0, 35.0) if 10 <= i < 45 else (5.0, 5.0)
            t = 1000 + 10 * i
            rows = {"system.csv": [system_row(t, "work", *cpu), system_row(t, "idle", 1, 1)]}
            notes, state = evaluate([rule], t, rows, state)
            said += [(i, vm, msg.split(" ")[3]) for vm, msg in notes]
        assert said == [(40, "work", "firing"), (45, "work", "resolved")]

    def test_firing_then_resolved_exactly(self):
        (rule,) = parse_rules([{**EXAMPLES[0], "for": "30s"}], "t")
        state: dict[str, RuleState] = {}
        events = []
        pattern = [False] * 2 + [True] * 6 + [False] * 3
        for i, busy in enumerate(pattern):
            cpu = (60.0, 35.0) if busy else (5.0, 5.0)
            notes, state = evaluate(
                [rule], 10.0 * i, {"system.csv": [system_row(10 * i, "work", *cpu)]}, state
            )
            events += [(i, msg.split(" ")[3]) for _, msg in notes]
        assert events == [(5, "firing"), (8, "resolved")]  # holds from i=2: 30 s later is i=5

    def test_a_clock_that_ran_a_year_ahead_does_not_hold_a_rule_for_a_year(self):
        """A condition first seen at a tick stamped a year ahead (the clock put
        back after; the commit writes such a tick) is timed from the next tick:
        it fires 5 minutes on, not a year on."""
        (rule,) = parse_rules([EXAMPLES[0]], "t")
        state: dict[str, RuleState] = {}
        said = []
        for i in range(50):
            t = 1000 + 10 * i + (365 * 86400 if i == 10 else 0)
            rows = {"system.csv": [system_row(t, "work", 60.0, 35.0)]} if i >= 10 else {}
            notes, state = evaluate([rule], t, rows, state)
            said += [(i, msg.split(" ")[3]) for _, msg in notes]
        assert said == [(41, "firing")]

    def test_a_missing_row_is_unknown_not_resolved(self):
        (rule,) = parse_rules([{**EXAMPLES[0], "for": "0s"}], "t")
        notes, state = evaluate([rule], 0, {"system.csv": [system_row(0, "work", 95, 1)]}, {})
        assert len(notes) == 1
        notes, state = evaluate([rule], 10, {"system.csv": []}, state)
        assert notes == []
        notes, state = evaluate([rule], 20, {"system.csv": [system_row(20, "work", 95, 1)]}, state)
        assert notes == []

    def test_three_failed_polls_in_a_row(self):
        (rule,) = parse_rules([EXAMPLES[3]], "t")
        state: dict[str, RuleState] = {}
        fired = []
        for i, status in enumerate(
            ["timeout", "timeout", "ok", "timeout", "refused", "no-service", "error"]
        ):
            ts = datetime.fromtimestamp(10 * i, tz=UTC)
            row = encode_row(schema.SCRAPES, {"ts": ts, "vm": "flaky", "status": status})
            notes, state = evaluate([rule], 10.0 * i, {"scrapes.csv": [row]}, state)
            fired += [i for _ in notes]
        assert fired == [5]

    def test_a_rule_sees_the_row_as_the_file_holds_it(self):
        """The value as written (rounded to its column), the name as written (neutralised)."""
        (rule,) = parse_rules([{**EXAMPLES[0], "expr": "cpu_user", "value": 90}], "t")
        notes, _ = evaluate([rule], 0, {"system.csv": [system_row(0, "work", 90.04, 0)]}, {})
        assert notes == []  # the file says 90.0
        (disk,) = parse_rules([EXAMPLES[2]], "t")
        row = disk_row(datetime.fromtimestamp(0, tz=UTC), "work", "/dev/x", "=cmd|x", 95)
        notes, _ = evaluate([disk], 0, {"disk.csv": [row]}, {})
        assert [msg for _, msg in notes] == [
            "sysmon: rule disk-full firing on work '=cmd|x: pct_used >= 90 (now 95)"
        ]

    def test_disk_rules_are_per_mount(self):
        (rule,) = parse_rules([EXAMPLES[2]], "t")
        ts = datetime.fromtimestamp(0, tz=UTC)
        rows = {
            "disk.csv": [
                disk_row(ts, "work", "/dev/xvda", "/", 95),
                disk_row(ts, "work", "/dev/xvdb", "/rw", 10),
            ]
        }
        notes, _ = evaluate([rule], 0, rows, {})
        assert [msg for _, msg in notes] == [
            "sysmon: rule disk-full firing on work /: pct_used >= 90 (now 95)"
        ]


def test_rule_state_survives_a_restart(tmp_path):
    """Each commit is a new start (state from the file): one firing row, one resolved row."""
    rules = parse_rules([EXAMPLES[1]], "t")
    for i, avail in enumerate([500_000] + [100_000] * 20 + [900_000] * 2):
        snap = Snapshot(
            SysRecord(boot_id="b", mem_total_kb=1_000_000, mem_avail_kb=avail),
            (),
            None,
            (),
            (),
            0,
            1,
            1,
            0,
        )
        result = ScrapeResult("work", "ok", 1, snapshot=snap)
        write_tick(
            tmp_path, TS + timedelta(seconds=10 * i), [result], None, rules=rules, sync=False
        )
        if i == 15:
            assert any(s.firing for s in load_state(tmp_path).rules.values())
    msgs = [r["msg"] for r in read_day(tmp_path / "2025-08-31")["alerts.csv"]]
    assert msgs == [
        "sysmon: rule mem-low firing on work: mem_avail_kb < 200000 for 120s (now 100000)",
        "sysmon: rule mem-low resolved on work: mem_avail_kb < 200000 for 120s (now 900000)",
    ]
    assert load_state(tmp_path).rules == {}


class TestBoundedState:
    """A qube inventing names cannot grow the rule state without bound."""

    @staticmethod
    def disk_rows(t: float, vm: str, mounts: list[str]) -> dict[str, list[Row]]:
        ts = datetime.fromtimestamp(t, tz=UTC)
        return {"disk.csv": [disk_row(ts, vm, "/dev/x", m, 95) for m in mounts]}

    def test_instances_per_rule_and_qube_are_capped(self):
        (rule,) = parse_rules([EXAMPLES[2]], "t")
        state: dict[str, RuleState] = {}
        for poll in range(50):
            mounts = [f"/m{poll}-{i}" for i in range(10)]
            _, state = evaluate(
                [rule], 10.0 * poll, self.disk_rows(10.0 * poll, "evil", mounts), state
            )
        assert len(state) <= MAX_INSTANCES

    def test_instances_of_vanished_names_and_gone_qubes_are_dropped_after_the_grace(self):
        (rule,) = parse_rules([EXAMPLES[2]], "t")
        _, state = evaluate([rule], 0.0, self.disk_rows(0, "disp1234", ["/"]), {})
        assert len(state) == 1
        _, state = evaluate([rule], GRACE - 1, {}, state)
        assert len(state) == 1  # a failed poll is unknown, not resolved
        _, state = evaluate([rule], GRACE + 1, {}, state)
        assert state == {}
