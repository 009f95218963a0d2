"""Daily files and state: append-only, whole rows, recovery after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import ROOT, run_on_small_tmpfs
from csvcheck import read_day
from fakes import write_tick

from sysmon import schema
from sysmon.protocol.metrics import AlertRecord, Snapshot, SysRecord
from sysmon.records import QubeView, ScrapeResult, State, ViewsState
from sysmon.store import commit
from sysmon.store.commit import MAX_STEP_BACK
from sysmon.store.state import load_state, save_state

TS = datetime(2025, 8, 31, 23, 59, 59, tzinfo=UTC)


def _alert_result(vm: str, n: int, boot: str = "b") -> ScrapeResult:
    alerts = tuple(AlertRecord(1_700_000_000_000_000 + i, "k", f"{vm} {i}") for i in range(n))
    snap = Snapshot(SysRecord(boot_id=boot), (), None, (), alerts, 0, 1 + n, 1 + n, 0)
    return ScrapeResult(vm=vm, status="ok", duration_ms=1, snapshot=snap)


class TestCommitTick:
    def test_midnight_moves_rows_to_the_new_day(self, tmp_path):
        """23:59:59.9 and 00:00:00.1 land in their own UTC day folders."""
        before = datetime(2025, 8, 31, 23, 59, 59, 900000, tzinfo=UTC).replace(microsecond=0)
        after = datetime(2025, 9, 1, 0, 0, 0, 100000, tzinfo=UTC).replace(microsecond=0)
        write_tick(tmp_path, before, [_alert_result("a", 0)], None)
        write_tick(tmp_path, after, [_alert_result("a", 0)], None)
        day1 = read_day(tmp_path / "2025-08-31")["system.csv"]
        day2 = read_day(tmp_path / "2025-09-01")["system.csv"]
        assert [r["ts"] for r in day1] == ["2025-08-31T23:59:59Z"]
        assert [r["ts"] for r in day2] == ["2025-09-01T00:00:00Z"]

    def test_same_or_earlier_second_is_not_written_twice(self, tmp_path):
        assert write_tick(tmp_path, TS, [_alert_result("a", 0)], None).skipped is None
        again = write_tick(tmp_path, TS, [_alert_result("a", 0)], None)
        assert again.skipped is not None
        assert len(read_day(tmp_path / "2025-08-31")["system.csv"]) == 1

    def test_alerts_once_across_polls(self, tmp_path):
        write_tick(tmp_path, TS, [_alert_result("a", 3)], None)
        later = TS.replace(second=58, minute=58, hour=23, day=31)
        write_tick(tmp_path, later.replace(day=31, hour=23, minute=59, second=59), [], None)
        write_tick(tmp_path, datetime(2025, 9, 1, tzinfo=UTC), [_alert_result("a", 4)], None)
        msgs = [r["msg"] for r in read_day(tmp_path / "2025-08-31")["alerts.csv"]]
        msgs += [r["msg"] for r in read_day(tmp_path / "2025-09-01")["alerts.csv"]]
        assert [m.split(" ", 1)[1] for m in msgs] == [f"k: a {i}" for i in range(4)]

    @pytest.mark.parametrize("killed_after", ["system.csv", "scrapes.csv", "alerts.csv"])
    def test_a_kill_during_a_commit_rolls_the_whole_tick_back(self, tmp_path, killed_after):
        """A tick is in every file or in none: a kill mid-commit is rolled back whole,
        and the qubes' cursors stay where they were, so its alerts are filed later, once."""
        first = write_tick(tmp_path, TS - timedelta(seconds=10), [_alert_result("a", 0)], None)
        assert first.errors == ()
        folder = tmp_path / "2025-08-31"
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        state_before = load_state(tmp_path)

        class Killed(BaseException):
            pass

        real_append = commit.append_rows  # type: ignore[attr-defined]

        def append_then_die(path, daily, rows, *, sync=True):
            real_append(path, daily, rows, sync=sync)
            if path.name == killed_after:
                raise Killed  # as kill -9 would leave it: nothing after this ran

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(commit, "append_rows", append_then_die)
            with pytest.raises(Killed):
                write_tick(tmp_path, TS, [_alert_result("a", 1)], None)
        write_tick(tmp_path, TS + timedelta(seconds=10), [], None)  # recovers first
        after = {p.name: p.read_bytes() for p in folder.iterdir()}
        for name, data in before.items():
            assert after[name].startswith(data)
            assert schema.format_ts(TS).encode() not in after[name][len(data) :], name
        assert load_state(tmp_path).qubes == state_before.qubes
        assert load_state(tmp_path).pending is None


FULL_DISK_SCRIPT = """
import functools, sys
from datetime import UTC, datetime
from pathlib import Path
from sysmon.records import ScrapeResult
from sysmon.protocol.metrics import AlertRecord, Snapshot, SysRecord
from sysmon.store.commit import commit_tick
from sysmon.transform.tick import build_tick
out = Path(sys.argv[1]) / "out"
filler = out.parent / "filler"
filler.write_bytes(b"x" * 64 * 1024)
freed = False
for second in range(1, 60):
    base = 1_700_000_000_000_000 + second * 1000
    big = tuple(AlertRecord(base + i, "k", "x" * 900) for i in range(20))
    snap = Snapshot(SysRecord(boot_id="b"), (), None, (), big, 0, 1, 1, 0)
    ts = datetime(2025, 8, 31, 12, 0, second, tzinfo=UTC)
    results = [ScrapeResult("a", "ok", 1, snapshot=snap)]
    plan = functools.partial(build_tick, ts=ts, results=results, qubes=None)
    outcome = commit_tick(out, ts, plan)
    print(second, outcome.rows_dropped, len(outcome.errors), int(freed))
    if outcome.rows_dropped and not freed:
        filler.unlink()  # space comes back
        freed = True
"""


def test_full_disk_drops_rows_whole_and_keeps_files_clean(tmp_path):
    """On a tiny real filesystem: rows that do not fit are dropped whole, logged,
    and what was written stays strictly parseable; alerts are retried later."""
    done = run_on_small_tmpfs(
        FULL_DISK_SCRIPT, "256k", tmp_path, then=f'cp -r "$1/out" {tmp_path}/copy'
    )
    assert done.returncode == 0, done.stderr
    # (structlog's default output shares stdout: keep the script's own lines)
    lines = [
        tuple(map(int, line.split()))
        for line in done.stdout.splitlines()
        if line.replace(" ", "").isdigit()
    ]
    assert any(dropped > 0 for _, dropped, _, _ in lines), "the disk never filled"
    first_drop = next(i for i, (_, dropped, _, _) in enumerate(lines) if dropped)
    # With the space back, the very next tick is written whole.
    assert lines[first_drop + 1][1:3] == (0, 0)
    files = read_day(tmp_path / "copy" / "2025-08-31")
    msgs = [r["msg"] for r in files["alerts.csv"]]
    assert len(msgs) == len(set(msgs)), "an alert was filed twice"


class TestClockAheadOnce:
    """One tick taken with the wall clock far ahead must not stop recording."""

    def test_a_large_step_back_resumes_at_the_next_tick_and_says_so(self, tmp_path):
        ahead = TS.replace(year=2031)
        write_tick(tmp_path, ahead, [_alert_result("a", 0)], None, me="sys-monitor")
        back = write_tick(tmp_path, TS, [_alert_result("a", 1)], None, me="sys-monitor")
        assert back.skipped is None
        assert back.stepped_back == (ahead - TS).total_seconds()
        day = read_day(tmp_path / "2025-08-31")
        assert [r["ts"] for r in day["system.csv"]] == [schema.format_ts(TS)]
        stepped = [r for r in day["alerts.csv"] if r["msg"].startswith("sysmon: clock")]
        step = int((ahead - TS).total_seconds())
        assert [(r["vm"], r["msg"]) for r in stepped] == [
            ("sys-monitor", f"sysmon: clock stepped back {step} s; rows resume at this tick")
        ]

    def test_a_small_step_back_waits_to_keep_rows_in_order(self, tmp_path):
        write_tick(tmp_path, TS, [_alert_result("a", 0)], None)
        earlier = write_tick(
            tmp_path, TS - timedelta(seconds=MAX_STEP_BACK), [_alert_result("a", 1)], None
        )
        assert earlier.skipped is not None
        assert len(read_day(tmp_path / "2025-08-31")["system.csv"]) == 1


VIEWS_ALERT_CUT_SCRIPT = """
import functools, resource, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from sysmon.protocol.metrics import CPU_TICK_KEYS, Snapshot, SysRecord
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import ScrapeResult
from sysmon.store.commit import commit_tick
from sysmon.transform.tick import build_tick
from sysmon.transform.views import ViewsLimits
out = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
for i in range(6):
    ticks = dict.fromkeys(CPU_TICK_KEYS, 0) | dict(
        cpu_ticks_user=10 * i, cpu_ticks_system=5 * i, cpu_ticks_idle=85 * i
    )
    sys_record = SysRecord(boot_id="b", mem_total_kb=1000, **ticks)
    snap = Snapshot(sys_record, (), None, (), (), 0, 1, 1, 0)
    ts = datetime(2025, 8, 31, 12, 0, 10 * i, tzinfo=UTC)
    # The first tick fills alerts.csv past every other file; at the fourth,
    # when the views' alert is due, alerts.csv alone cannot grow.
    notes = [("sys-monitor", "sysmon: " + "x" * 900)] * 12 if i == 0 else []
    if i == 3:
        limit = (out / "2025-08-31" / "alerts.csv").stat().st_size + 50
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    plan = functools.partial(
        build_tick, ts=ts, results=[ScrapeResult("work", "ok", 1, snapshot=snap)], qubes=None,
        xen=[DomainStats("work", 90, None, 1000 * i, 1000)], notes=notes,
        views=ViewsLimits(sustain=20),
    )
    outcome = commit_tick(out, ts, plan, sync=False)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    print(i, outcome.dropped.get("alerts.csv", 0), len(outcome.errors))
"""


def test_a_views_alert_a_write_failure_cut_is_told_at_the_next_tick(tmp_path):
    """alerts.csv refuses the views' alert (EFBIG, a real limit): the qube's views
    stay where they were, so the alert comes with the next tick, once."""
    done = subprocess.run(
        [sys.executable, "-c", VIEWS_ALERT_CUT_SCRIPT, str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert [(tick, dropped) for tick, dropped, _ in lines if dropped != "0"] == [("3", "1")]
    told = [r["ts"] for r in read_day(tmp_path / "2025-08-31")["alerts.csv"] if "views" in r["msg"]]
    assert told == ["2025-08-31T12:00:40Z"]


def test_a_tick_without_views_leaves_the_daemon_s_views_as_they_were(tmp_path):
    """``once`` (no stats stream) commits between the daemon's ticks: where the
    views stand, sustain clocks included, is saved again unchanged."""
    view = QubeView(cpu_ticks=(1,) * 8, boot_id="b", sampled=5.0, disagree_since=5.0)
    standing = ViewsState({"work": view}, {("sys-net", "vif5.0", "work"): (7, 5.0)})
    save_state(tmp_path, State(views=standing), sync=False)
    outcome = write_tick(tmp_path, TS, [_alert_result("work", 1)], None, sync=False)
    assert outcome.written["alerts.csv"] == 1
    assert load_state(tmp_path).views == standing


def test_a_state_restored_from_mid_commit_cuts_no_later_tick(tmp_path):
    """A file-by-file backup copied the state while a tick was pending, the day's
    files later; restored, the next commit took the old pending record as a crash
    and cut every file back to its sizes then: the 30 ticks written since were lost."""
    state_file = tmp_path / "sysmon-state.json"
    copied: list[bytes] = []
    real_append = commit.append_rows  # type: ignore[attr-defined]

    def append_while_backed_up(path, daily, rows, *, sync=True):
        if not copied:
            copied.append(state_file.read_bytes())  # the backup reads the state now
        real_append(path, daily, rows, sync=sync)

    write_tick(tmp_path, TS.replace(hour=12, second=0), [_alert_result("a", 0)], None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(commit, "append_rows", append_while_backed_up)
        write_tick(tmp_path, TS.replace(hour=12, second=10), [_alert_result("a", 0)], None)
    assert load_state(tmp_path).pending is None
    for i in range(30):
        write_tick(tmp_path, TS.replace(hour=13, minute=i, second=0), [_alert_result("a", 0)], None)
    state_file.write_bytes(copied[0])  # restored
    assert load_state(tmp_path).pending is not None
    write_tick(tmp_path, TS.replace(hour=14, second=0), [_alert_result("a", 0)], None)
    day = read_day(tmp_path / "2025-08-31")
    assert len(day["system.csv"]) == 33
    assert len(day["scrapes.csv"]) == 33
