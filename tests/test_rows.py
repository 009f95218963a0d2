"""Pure maths and bookkeeping: CPU percentages, alert cursors, rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.protocol.admin import QubeInfo
from sysmon.protocol.metrics import (
    AlertRecord,
    ConnRecord,
    DiskRecord,
    NetRecord,
    Snapshot,
    SysRecord,
)
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import AlertCursor, Budget, QubeState, ScrapeResult, TickRows
from sysmon.transform.rows import MAX_GONE, alert_key, build_tick_rows, new_alerts

TS = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)


def _snap(
    boot: str, ticks: tuple[int, ...] = (1,) * 8, alerts: tuple[AlertRecord, ...] = ()
) -> Snapshot:
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    sys = SysRecord(
        boot_id=boot, **{f"cpu_ticks_{n}": t for n, t in zip(names, ticks, strict=True)}
    )
    return Snapshot(sys, (), None, (), alerts, 0, 1, 1, 0)


def _result(vm: str, snap: Snapshot) -> ScrapeResult:
    return ScrapeResult(vm=vm, status="ok", duration_ms=1, snapshot=snap)


class TestTickRows:
    def test_restart_gets_an_alert_and_empty_cpu(self):
        prev = {"work": QubeState(boot_id="old", cpu_ticks=(0,) * 8)}
        built = build_tick_rows(TS, [_result("work", _snap("new", (9,) * 8))], None, prev)
        (system_row,) = built.rows["system.csv"]
        assert system_row.values["ts"] == TS
        assert system_row.values["vm"] == "work"
        assert [system_row.values[c] for c in ("cpu_user", "cpu_system", "cpu_idle")] == [None] * 3
        (batch,) = built.alerts
        assert [r.values for r in batch.rows] == [
            {"ts": TS, "vm": "work", "msg": "sysmon: work restarted"}
        ]
        assert built.restarted == ("work",)

    def test_same_boot_fills_cpu(self):
        prev = {"work": QubeState(boot_id="b", cpu_ticks=(0,) * 8)}
        built = build_tick_rows(
            TS, [_result("work", _snap("b", (1, 0, 1, 8, 0, 0, 0, 0)))], None, prev
        )
        values = built.rows["system.csv"][0].values
        assert (values["cpu_user"], values["cpu_system"], values["cpu_idle"]) == (10.0, 10.0, 80.0)

    def test_every_column_gets_its_value(self):
        """Each value lands in its own column: two swapped columns fail here."""
        sys = SysRecord(boot_id="b", load1=0.5, load5=0.25, load15=0.125, mem_total_kb=1000,
                        mem_avail_kb=300, swap_total_kb=50, swap_free_kb=20, procs_running=3,
                        procs_blocked=1)  # fmt: skip
        snap = Snapshot(
            sys,
            (NetRecord("eth0", 1, 2, 3, 4, 5, 6),),
            ConnRecord(7, 8),
            (DiskRecord("/dev/xvda", "/", 100, 30, 70),),
            (),
            0,
            1,
            1,
            0,
        )
        built = build_tick_rows(TS, [_result("work", snap)], None, {})
        head = {"ts": TS, "vm": "work"}
        assert built.rows["system.csv"][0].values == {
            **head,
            "cpu_user": None,
            "cpu_system": None,
            "cpu_idle": None,
            "load1": 0.5,
            "load5": 0.25,
            "load15": 0.125,
            "mem_total_kb": 1000,
            "mem_used_kb": 700,
            "mem_avail_kb": 300,
            "swap_total_kb": 50,
            "swap_used_kb": 30,
            "procs_running": 3,
            "procs_blocked": 1,
        }
        assert [r.values for r in built.rows["network.csv"]] == [
            {
                **head,
                "if": "eth0",
                "rx_bytes": 1,
                "rx_errs": 2,
                "rx_drop": 3,
                "tx_bytes": 4,
                "tx_errs": 5,
                "tx_drop": 6,
            }
        ]
        assert [r.values for r in built.rows["connections.csv"]] == [
            {**head, "tcp_established": 7, "udp_sockets": 8}
        ]
        assert [r.values for r in built.rows["disk.csv"]] == [
            {
                **head,
                "fs": "/dev/xvda",
                "mount": "/",
                "size_kb": 100,
                "used_kb": 30,
                "avail_kb": 70,
                "pct_used": 30,
            }
        ]

    def test_dom0s_rows_get_their_values(self):
        """xen.csv and qubes.csv: each figure in its own column, the qube as dom0 named it."""
        xen = [DomainStats("work", 12, 48, 9000, 400_000)]
        qubes = [QubeInfo("work", "AppVM", "Running"), QubeInfo("vault", "AppVM", "Halted")]
        built = build_tick_rows(TS, [], qubes, {}, xen)
        assert [r.values for r in built.rows["xen.csv"]] == [
            {
                "ts": TS,
                "vm": "work",
                "cpu_usage": 12,
                "cpu_usage_raw": 48,
                "cpu_time_ms": 9000,
                "memory_kb": 400_000,
                # Qubes 4.4's keys, which 4.2 and 4.3 do not send.
                "memory_assigned_usable": None,
                "memory_assigned_total": None,
                "memory_with_swap_used": None,
                "swap_used": None,
                "online_vcpus": None,
            }
        ]
        assert [r.values for r in built.rows["qubes.csv"]] == [
            {"ts": TS, "vm": "work", "state": "Running"},
            {"ts": TS, "vm": "vault", "state": "Halted"},
        ]

    def test_a_line_is_its_values_encoded(self):
        """What the store appends is the schema's encoding of the row's values."""
        built = build_tick_rows(TS, [_result("work", _snap("b"))], None, {})
        for rows in built.rows.values():
            for row in rows:
                assert row.line == schema.by_name(row.file).encode(row.values)

    def test_failed_scrape_only_gets_a_scrapes_row(self):
        failed = ScrapeResult(vm="x", status="timeout", duration_ms=8000)
        built = build_tick_rows(TS, [failed], None, {})
        assert [r.values for r in built.rows["scrapes.csv"]] == [
            {
                "ts": TS,
                "vm": "x",
                "status": "timeout",
                "duration_ms": 8000,
                "bytes": 0,
                "lines_ok": 0,
                "lines_rejected": 0,
            }
        ]
        assert built.rows["scrapes.csv"][0].line == b"2025-08-31T12:00:10Z,x,timeout,8000,0,0,0\n"
        assert all(not rows for name, rows in built.rows.items() if name != "scrapes.csv")
        assert built.states == {}


# --- Exactly-once alerts against a model of the handler -----------------

CAP = 50


def handler_model(journal: list[AlertRecord], argument: AlertCursor | None) -> list[AlertRecord]:
    """What the handler sends for a cursor: entries from its microsecond on,
    less the ones it says were filed there, at most CAP (journal order)."""
    if argument is None:
        out = journal
    else:
        skip = argument.filed  # the count of entries filed there, as the handler reads it
        out = []
        for entry in journal:
            if entry.ts_us < argument.ts_us:
                continue
            if entry.ts_us == argument.ts_us and skip > 0:
                skip -= 1
                continue
            out.append(entry)
    return out[:CAP]


@given(
    st.lists(st.integers(0, 30), min_size=0, max_size=400),
    st.integers(1, 400),
)
def test_every_entry_filed_exactly_once(times, batch):
    """Polling a growing journal files each entry once, bursts of ties included."""
    journal = [AlertRecord(t, "k", f"entry {i}") for i, t in enumerate(sorted(times))]
    filed: list[AlertRecord] = []
    cursor = None
    seen_count = 0
    # The journal grows by `batch` entries between polls; keep polling after.
    for _ in range(len(journal) // CAP + len(journal) // batch + 5):
        seen_count = min(len(journal), seen_count + batch)
        sent = handler_model(journal[:seen_count], cursor)
        fresh, cursor = new_alerts(sent, cursor, "boot")
        filed.extend(fresh)
    assert filed == journal


def test_new_boot_starts_afresh():
    old = AlertCursor("boot-a", 1000, frozenset({"x"}))
    alert = AlertRecord(5, "k", "early in the new boot")
    fresh, cursor = new_alerts([alert], old, "boot-b")
    assert fresh == [alert]
    assert cursor == AlertCursor("boot-b", 5, frozenset({alert_key(alert)}))


def test_nothing_new_keeps_the_cursor():
    old = AlertCursor("b", 10, frozenset())
    assert new_alerts([AlertRecord(9, "k", "old")], old, "b") == ([], old)


def _wide(boot: str, names: list[str]) -> Snapshot:
    """A snapshot with an interface per name and a long alert: a big reply."""
    net = tuple(NetRecord(n, 1, 0, 0, 1, 0, 0) for n in names)
    alerts = (AlertRecord(1_700_000_000_000_000, "kernel", "x" * 900),)
    return attrs.evolve(_snap(boot, alerts=alerts), net=net)


def _run_day(
    polls: int, budget: Budget, snaps: dict[str, Callable[[int], Snapshot]]
) -> tuple[list[TickRows], dict[str, QubeState]]:
    """``polls`` ticks 10 s apart, each qube answering ``snaps[vm](i)``, state carried over."""
    state: dict[str, QubeState] = {}
    ticks = []
    for i in range(polls):
        ts = TS + timedelta(seconds=10 * i)
        built = build_tick_rows(
            ts, [_result(vm, make(i)) for vm, make in snaps.items()], None, state, budget=budget
        )
        state = {**state, **built.states}
        state.update({b.vm: b.next_state for b in built.alerts if b.next_state is not None})
        ticks.append(built)
    return ticks, state


class TestDailyBudget:
    """A qube inside every per-poll cap still gets only its share of the day."""

    def test_past_its_bytes_a_qube_stops_and_no_other_loses_anything(self):
        budget = Budget(bytes_per_day=20_000, names_per_day=1024)
        big = [f"eth{i}" for i in range(40)]
        ticks, state = _run_day(
            30, budget, {"hog": lambda _i: _wide("b", big), "work": lambda _i: _snap("w")}
        )
        statuses = [
            row.values["status"]
            for t in ticks
            for row in t.rows["scrapes.csv"]
            if row.values["vm"] == "hog"
        ]
        assert statuses[0] == "ok"
        assert statuses[-1] == "over-budget"
        hog_bytes = sum(
            len(r.line)
            for t in ticks
            for rows in t.rows.values()
            for r in rows
            if r.values["vm"] == "hog"
        )
        assert hog_bytes <= budget.bytes_per_day + 30 * 100  # its rows, plus scrapes rows
        work_rows = [r for t in ticks for r in t.rows["system.csv"] if r.values["vm"] == "work"]
        assert len(work_rows) == 30
        notes = [
            r for t in ticks for b in t.alerts for r in b.rows if "budget" in str(r.values["msg"])
        ]
        assert len(notes) == 1  # said once
        assert state["hog"].over_budget

    def test_the_budget_starts_afresh_each_utc_day(self):
        budget = Budget(bytes_per_day=5_000, names_per_day=1024)
        prev = {"hog": QubeState(boot_id="b", day="2025-08-30", day_bytes=10**9, over_budget=True)}
        built = build_tick_rows(TS, [_result("hog", _snap("b"))], None, prev, budget=budget)
        assert built.rows["system.csv"]
        assert built.states["hog"].day == "2025-08-31"
        assert not built.states["hog"].over_budget

    def test_an_over_budget_qube_keeps_its_alert_cursor(self):
        """Its journal entries are not filed today, so they are filed tomorrow, not lost."""
        cursor = AlertCursor("b", 5)
        prev = {"hog": QubeState(boot_id="b", cursor=cursor, day="2025-08-31", over_budget=True)}
        snap = _snap("b", alerts=(AlertRecord(9, "k", "m"),))
        built = build_tick_rows(TS, [_result("hog", snap)], None, prev, budget=Budget())
        assert built.states["hog"].cursor == cursor
        assert not built.alerts

    def test_new_names_past_the_cap_are_dropped_and_said_once(self):
        budget = Budget(bytes_per_day=10**9, names_per_day=5)
        ticks, _ = _run_day(
            3, budget, {"inventor": lambda i: _wide("b", [f"n{i}-{j}" for j in range(4)])}
        )
        names = {r.values["if"] for t in ticks for r in t.rows["network.csv"]}
        assert len(names) == 5
        notes = [
            r for t in ticks for b in t.alerts for r in b.rows if "names" in str(r.values["msg"])
        ]
        assert len(notes) == 1


def test_qubes_gone_for_days_are_forgotten():
    """A DispVM's state does not stay in the state file forever."""
    prev = {
        "disp1234": QubeState(boot_id="b", day="2025-08-28"),
        "work": QubeState(boot_id="w", day="2025-08-30"),
    }
    built = build_tick_rows(TS, [_result("work", _snap("w"))], None, prev)
    assert built.forget == ("disp1234",)


def test_a_churn_of_gone_disposables_keeps_the_state_bounded():
    """A gone qube's state was kept for two days: a qube starting a disposable a
    minute kept ~3,000 of them (13 MB of state, 0.4 s a tick to save).  Past
    MAX_GONE qubes no longer listed, the oldest are forgotten; a listed qube,
    polled or not, never is, nor is any when dom0's list is not known."""
    prev = {f"disp{i}": QubeState(boot_id=f"b{i}", day="2025-08-31") for i in range(MAX_GONE + 40)}
    prev |= {f"disp{i}": QubeState(boot_id=f"b{i}", day="2025-08-30") for i in range(5000, 5010)}
    prev["vault"] = QubeState(day="2025-08-31")
    work = QubeInfo("work", "AppVM", "Running")
    listed = [work, QubeInfo("vault", "AppVM", "Halted")]
    results = [_result("work", _snap("w"))]
    built = build_tick_rows(TS, results, None, prev, listed=listed)
    assert len(built.forget) == 50
    assert {f"disp{i}" for i in range(5000, 5010)} <= set(built.forget)  # the oldest day first
    assert "vault" not in built.forget
    assert build_tick_rows(TS, results, None, prev).forget == ()
