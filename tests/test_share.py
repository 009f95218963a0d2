"""A hostile qube's share over time (issue #24, items 5-10).

Each test here reproduces an attack on the code before its fix: it failed
there, and passes only with the bound in place.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sysmon.protocol.metrics import AlertRecord, Snapshot, SysRecord
from sysmon.records import AlertCursor, QubeState, ScrapeResult, State
from sysmon.store.state import to_json
from sysmon.transform.rows import CURSOR_SEEN_MAX, build_tick_rows, new_alerts

TS = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)
BURST = 50  # the handler's MAX_ALERTS: what one poll can carry


def _snap(boot: str, alerts: tuple[AlertRecord, ...] = ()) -> Snapshot:
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    sys = SysRecord(boot_id=boot, **{f"cpu_ticks_{n}": 1 for n in names})
    return Snapshot(sys, (), None, (), alerts, 0, 1, 1, 0)


def _result(vm: str, snap: Snapshot) -> ScrapeResult:
    return ScrapeResult(vm=vm, status="ok", duration_ms=1, snapshot=snap)


# --- 5. the alert cursor is bounded ----------------------------------------


def _same_microsecond_handler(cursor: AlertCursor | None, poll: int) -> list[AlertRecord]:
    """A hostile handler: every line at one microsecond, each with new text.

    It honours the cursor's skip count as the real handler does: entries at
    the cursor's microsecond past the first ``skip`` are new.
    """
    del cursor
    return [
        AlertRecord(1_700_000_000_000_000, "evil", f"poll {poll} line {i}") for i in range(BURST)
    ]


def test_alerts_at_one_microsecond_keep_the_cursor_bounded():
    cursor: AlertCursor | None = None
    filed = 0
    for poll in range(200):
        fresh, cursor = new_alerts(_same_microsecond_handler(cursor, poll), cursor, "boot")
        filed += len(fresh)
    assert cursor is not None
    assert filed == 200 * BURST  # every entry filed once: none dropped by the bound
    assert len(cursor.seen) <= CURSOR_SEEN_MAX
    # The handler still skips every entry filed at that microsecond.
    assert cursor.argument().endswith(f".{200 * BURST}")
    state = State(qubes={"evil": QubeState(boot_id="boot", cursor=cursor)})
    assert len(json.dumps(to_json(state))) < 2 * 1024


def test_a_burst_within_the_bound_is_still_deduplicated():
    """A handler that ignores the cursor (an older one) files nothing twice."""
    burst = [AlertRecord(7, "k", f"line {i}") for i in range(BURST)]
    fresh, cursor = new_alerts(burst, None, "boot")
    assert len(fresh) == BURST
    again, cursor2 = new_alerts(burst, cursor, "boot")
    assert again == []
    assert cursor2 == cursor


def test_a_long_day_of_same_microsecond_alerts_keeps_the_state_small():
    """Through build_tick_rows, as the daemon runs it, 500 alert polls."""
    state: dict[str, QubeState] = {}
    for poll in range(500):
        ts = TS + timedelta(seconds=60 * poll)
        snap = _snap("boot", tuple(_same_microsecond_handler(None, poll)))
        built = build_tick_rows(ts, [_result("evil", snap)], None, state)
        state.update(built.states)
        state.update({b.vm: b.next_state for b in built.alerts if b.next_state is not None})
    size = len(json.dumps(to_json(State(qubes=state))))
    assert size < 2 * 1024, size
