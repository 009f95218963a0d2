"""The state file: written atomically, a damaged one set aside, never a crash."""

from __future__ import annotations

import json
import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sysmon import events
from sysmon.protocol.admin import MAX_QUBES
from sysmon.records import (
    MAX_VIEW_QUBES,
    MAX_VIEW_VIFS,
    AlertCursor,
    PendingTick,
    PoolState,
    QubeState,
    QubeView,
    RuleState,
    State,
    ViewsState,
)
from sysmon.store.state import STATE_NAME, from_json, load_state, save_state, to_json

names = st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True)
moments = st.none() | st.integers(0, 2**40).map(float)
counters = st.integers(0, 2**66)
views = st.builds(
    ViewsState,
    qubes=st.dictionaries(
        names,
        st.builds(
            QubeView,
            cpu_ticks=st.none() | st.tuples(*[counters] * 8),
            boot_id=st.none() | st.from_regex(r"[A-Za-z0-9-]{1,64}", fullmatch=True),
            net_bytes=st.none() | counters,
            sampled=moments,
            disagree_since=moments,
            last_disagree=moments,
            agree_since=moments,
            alerted=st.booleans(),
        ),
        max_size=5,
    ),
    vifs=st.dictionaries(
        st.tuples(names, st.from_regex(r"vif[1-9][0-9]{0,4}\.[0-9]", fullmatch=True), names),
        st.tuples(counters, st.integers(0, 2**40).map(float)),
        max_size=5,
    ),
    served_by=st.dictionaries(names, names, max_size=5),
)


#: A state with something in every section.
SEVERAL = State(
    qubes={
        "work": QubeState(boot_id="b", cursor=AlertCursor("b", 5, frozenset({"x"}))),
        "mail": QubeState(day="2026-12-07", day_bytes=10),
    },
    last_ts=1_700_000_000,
    pending=PendingTick(folder="2026-12-07", sizes=(("system.csv", 100),)),
    rules={"cpu|work": RuleState(since=1.0, polls=2, firing=True, seen=3.0)},
    pools={"new": PoolState(day="2026-12-07", day_bytes=5, over=False)},
)


class TestLoad:
    @pytest.mark.parametrize(
        ("section", "damage", "kept"),
        [
            ("rules", lambda d: d.update(rules={"cpu|work": ["soon"]}), {"rules": {}}),
            ("rules", lambda d: d.update(rules=[1]), {"rules": {}}),
            ("pools", lambda d: d["pools"]["new"].pop("day"), {"pools": {}}),
            # Numbers no float or int holds: int(inf), float(10**400) raise OverflowError.
            ("rules", lambda d: d["rules"]["cpu|work"].__setitem__(1, math.inf), {"rules": {}}),
            ("rules", lambda d: d["rules"]["cpu|work"].__setitem__(0, 10**400), {"rules": {}}),
            ("pools", lambda d: d["pools"]["new"].update(day_bytes=math.inf), {"pools": {}}),
            (
                "qubes:mail",
                lambda d: d["qubes"]["mail"].update(day_bytes=-math.inf),
                {"qubes": {"work": SEVERAL.qubes["work"]}},
            ),
            (
                "qubes:work",
                lambda d: d["qubes"]["work"]["cursor"].update(ts_us="late"),
                {"qubes": {"mail": SEVERAL.qubes["mail"]}},
            ),
        ],
    )
    def test_a_damaged_section_starts_afresh_alone(self, tmp_path, section, damage, kept):
        """A section another version wrote differently (or damage) resets that
        section alone: a qube's alert cursor lost would file its alerts twice."""
        save_state(tmp_path, SEVERAL, sync=False)
        data = json.loads((tmp_path / STATE_NAME).read_text())
        damage(data)
        (tmp_path / STATE_NAME).write_text(json.dumps(data))
        with capture_logs() as logs:
            assert load_state(tmp_path) == attrs.evolve(SEVERAL, **kept)
        assert [(e["event"], e["section"]) for e in logs] == [(events.STATE_SECTION_RESET, section)]

    @pytest.mark.parametrize(
        "damage",
        [
            lambda d: d.update(version=2),
            lambda d: d.update(last_ts="now"),
            lambda d: d.update(qubes=[]),
            lambda d: d["pending_tick"].update(folder="../etc"),
            lambda d: d.update(last_ts=math.inf),
            lambda d: d["pending_tick"].update(sizes=[["system.csv", math.nan]]),
        ],
    )
    def test_what_the_rows_depend_on_damaged_sets_the_whole_file_aside(self, tmp_path, damage):
        save_state(tmp_path, SEVERAL, sync=False)
        data = json.loads((tmp_path / STATE_NAME).read_text())
        damage(data)
        (tmp_path / STATE_NAME).write_text(json.dumps(data))
        with capture_logs() as logs:
            assert load_state(tmp_path) == State()
        assert [e["event"] for e in logs] == [events.STATE_DAMAGED]

    def test_damaged_state_is_set_aside(self, tmp_path):
        (tmp_path / "sysmon-state.json").write_text("{not json")
        assert load_state(tmp_path) == State()
        assert any(p.name.startswith("sysmon-state.json.damaged-") for p in tmp_path.iterdir())

    def test_state_nested_past_the_json_readers_depth_is_set_aside(self, tmp_path):
        """json.loads raises RecursionError on it: it escaped load_state, and each tick."""
        (tmp_path / "sysmon-state.json").write_text("[" * 100_000)
        assert load_state(tmp_path) == State()
        assert any(p.name.startswith("sysmon-state.json.damaged-") for p in tmp_path.iterdir())

    def test_a_state_from_before_the_views_were_kept_loads_without_them(self, tmp_path):
        data = to_json(State(last_ts=5))
        del data["views"]
        (tmp_path / STATE_NAME).write_text(json.dumps(data))
        assert load_state(tmp_path) == State(last_ts=5)


class TestViews:
    @given(views)
    def test_the_views_come_back_as_they_were_saved(self, kept: ViewsState) -> None:
        assert from_json(json.loads(json.dumps(to_json(State(views=kept))))).views == kept

    @pytest.mark.parametrize(
        "damage",
        [
            lambda v: v.update(qubes=[]),
            lambda v: v["qubes"]["work"].update(alerted="yes"),
            lambda v: v["qubes"]["work"].update(cpu_ticks=[1] * 10_000),
            lambda v: v["qubes"]["work"].update(cpu_ticks=[-1] * 8),
            lambda v: v["qubes"]["work"].update(net_bytes=2**200),
            lambda v: v["qubes"]["work"].update(net_bytes=True),
            lambda v: v["qubes"]["work"].update(sampled=math.inf),
            lambda v: v["qubes"]["work"].update(sampled="soon"),
            lambda v: v["qubes"]["work"].update(boot_id="b" * 65),
            lambda v: v["qubes"].update({"": v["qubes"]["work"]}),
            lambda v: v["qubes"].update({f"q{i}": v["qubes"]["work"] for i in range(10_001)}),
            lambda v: v.update(vifs=[["sys-net", "vif5.0", "work", 1]]),
            lambda v: v.update(vifs=[["sys-net", "vif5.0", "work", 1, 2]] * (MAX_VIEW_VIFS + 1)),
            lambda v: v.update(vifs=[["sys-net", 5, "work", 1, 2.0]]),
            lambda v: v.pop("vifs"),
            lambda v: v.update(served_by={"work": 5}),
            lambda v: v.update(served_by=[["work", "sys-net"]]),
            lambda v: v.update(served_by={f"q{i}": "sys-net" for i in range(10_001)}),
        ],
    )
    def test_damaged_views_are_a_clear_reset_never_a_crash(self, tmp_path, damage) -> None:
        """Views the file says are not ones sysmon wrote (a damaged file, or another
        version's): they start afresh with one log line (a disagreement may be told
        again); the alert cursors, rules and pending tick beside them are kept."""
        view = QubeView(cpu_ticks=(1,) * 8, boot_id="b", net_bytes=3, sampled=10.0, alerted=True)
        vifs = {("sys-net", "vif5.0", "work"): (1, 10.0)}
        good = attrs.evolve(SEVERAL, views=ViewsState({"work": view}, vifs, {"work": "sys-net"}))
        save_state(tmp_path, good, sync=False)
        assert load_state(tmp_path) == good
        data = json.loads((tmp_path / STATE_NAME).read_text())
        damage(data["views"])
        (tmp_path / STATE_NAME).write_text(json.dumps(data))
        with capture_logs() as logs:
            assert load_state(tmp_path) == SEVERAL
        assert [(e["event"], e["section"]) for e in logs] == [(events.STATE_SECTION_RESET, "views")]
        assert [p.name for p in tmp_path.iterdir()] == [STATE_NAME]

    def test_the_views_keep_as_many_qubes_as_dom0_may_list(self) -> None:
        assert MAX_VIEW_QUBES == MAX_QUBES
