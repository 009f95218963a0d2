"""Pure maths and bookkeeping: CPU percentages, alert cursors, rows."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from sysmon.protocol.metrics import AlertRecord, Snapshot, SysRecord
from sysmon.records import AlertCursor, QubeState, ScrapeResult
from sysmon.transform.rows import alert_key, build_tick_rows, new_alerts

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
        assert system_row.startswith(b"2025-08-31T12:00:10Z,work,,,,")
        (batch,) = built.alerts
        assert batch.rows == (b"2025-08-31T12:00:10Z,work,sysmon: work restarted\n",)
        assert built.restarted == ("work",)

    def test_same_boot_fills_cpu(self):
        prev = {"work": QubeState(boot_id="b", cpu_ticks=(0,) * 8)}
        built = build_tick_rows(
            TS, [_result("work", _snap("b", (1, 0, 1, 8, 0, 0, 0, 0)))], None, prev
        )
        assert built.rows["system.csv"][0].startswith(b"2025-08-31T12:00:10Z,work,10.0,10.0,80.0,")

    def test_failed_scrape_only_gets_a_scrapes_row(self):
        failed = ScrapeResult(vm="x", status="timeout", duration_ms=8000)
        built = build_tick_rows(TS, [failed], None, {})
        assert built.rows["scrapes.csv"] == (b"2025-08-31T12:00:10Z,x,timeout,8000,0,0,0\n",)
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
        skip = len(argument.seen)
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
