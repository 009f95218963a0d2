"""A hostile qube's share over time (issue #24, items 5-10).

Each test here reproduces an attack on the code before its fix: it failed
there, and passes only with the bound in place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
from csvcheck import read_day
from fakes import FakeQubes, daemon_on_virtual_time, run_for

from sysmon.collect.process import ProcessResult
from sysmon.protocol.admin import Discovery, QubeInfo, select_targets
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


def test_alerts_at_one_microsecond_keep_the_cursor_bounded() -> None:
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


def test_a_burst_within_the_bound_is_still_deduplicated() -> None:
    """A handler that ignores the cursor (an older one) files nothing twice."""
    burst = [AlertRecord(7, "k", f"line {i}") for i in range(BURST)]
    fresh, cursor = new_alerts(burst, None, "boot")
    assert len(fresh) == BURST
    again, cursor2 = new_alerts(burst, cursor, "boot")
    assert again == []
    assert cursor2 == cursor


def test_a_long_day_of_same_microsecond_alerts_keeps_the_state_small() -> None:
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


# --- 10. sys-monitor never polls itself -----------------------------------

SELF_UUID = "d03cd78b-c6ac-5d48-b6f8-41eabc339e8b"  # sys-monitor's in the 4.3 recordings
WORK_UUID = "969b85a0-bb25-5674-be0f-148151e53f18"


@attrs.define
class UuidQubes(FakeQubes):
    """A 4.3 dom0 (``uuid=`` in the list, polls by ``uuid:U``) and a QubesDB
    that may not answer ``/name``."""

    name: str | None = None
    uuids: dict[str, str] = attrs.field(factory=dict)

    async def list_qubes(self) -> Discovery:
        listed = [QubeInfo("dom0", "AdminVM", "Running", "0" * 8 + "-0000-0000-0000-" + "0" * 12)]
        listed += [QubeInfo(n, "AppVM", "Running", u) for n, u in self.uuids.items()]
        return Discovery(tuple(listed))

    async def own_name(self) -> str | None:
        self.own_name_asked += 1
        return self.name

    async def call(
        self, argv: Sequence[str], *, max_stdout: int, env: Mapping[str, str] | None = None
    ) -> ProcessResult:
        by_uuid = {f"uuid:{u}": n for n, u in self.uuids.items()}
        return await super().call([by_uuid.get(argv[0], argv[0]), *argv[1:]], max_stdout=max_stdout)


async def test_without_its_own_name_sys_monitor_polls_nobody_and_says_so(
    tmp_path: Path, autojump_clock: object
) -> None:
    """QubesDB's /name unreadable: polling everyone would poll itself as root."""
    qubes = UuidQubes(
        {"sys-monitor": "ok", "work": "ok"},
        uuids={"sys-monitor": SELF_UUID, "work": WORK_UUID},
    )
    c = daemon_on_virtual_time(tmp_path, qubes, datetime(2025, 8, 31, 12, 0, tzinfo=UTC))
    await run_for(c, 35)
    assert "sys-monitor" not in qubes.calls
    alerts = read_day(tmp_path / "2025-08-31")["alerts.csv"]
    said = [r["msg"] for r in alerts if "own name" in r["msg"]]
    assert len(said) == 1, alerts  # once, not every tick
    qubes.name = "sys-monitor"  # QubesDB answers again: polling resumes, itself still skipped
    await run_for(c, 20)
    assert qubes.calls.get("work")
    assert "sys-monitor" not in qubes.calls


async def test_sys_monitor_skips_its_uuid_under_another_name(
    tmp_path: Path, autojump_clock: object
) -> None:
    """Its uuid, once learned, is skipped whatever name dom0 lists it under."""
    qubes = UuidQubes(
        {"sys-monitor": "ok", "work": "ok"},
        name="sys-monitor",
        uuids={"sys-monitor": SELF_UUID, "work": WORK_UUID},
    )
    c = daemon_on_virtual_time(tmp_path, qubes, datetime(2025, 8, 31, 12, 0, tzinfo=UTC))
    await run_for(c, 15)
    qubes.behaviours["mon-renamed"] = "ok"
    qubes.uuids = {"mon-renamed": SELF_UUID, "work": WORK_UUID}
    await run_for(c, 30)
    assert qubes.calls.get("work")
    assert "mon-renamed" not in qubes.calls
    assert "sys-monitor" not in qubes.calls


def test_select_targets_skips_its_own_uuid() -> None:
    qubes = [
        QubeInfo("mon", "AppVM", "Running", SELF_UUID),
        QubeInfo("work", "AppVM", "Running", WORK_UUID),
    ]
    assert select_targets(qubes, None, [], self_uuid=SELF_UUID) == ["work"]
