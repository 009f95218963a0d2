"""The state file: written atomically, a damaged one set aside, never a crash."""

from __future__ import annotations

from sysmon.records import State
from sysmon.store.state import load_state


class TestLoad:
    def test_damaged_state_is_set_aside(self, tmp_path):
        (tmp_path / "sysmon-state.json").write_text("{not json")
        assert load_state(tmp_path) == State()
        assert any(p.name.startswith("sysmon-state.json.damaged-") for p in tmp_path.iterdir())
