"""The daemon on virtual time (autojump_clock, fake qubes, real files)."""

from __future__ import annotations

import gc
import itertools
import sys
from datetime import UTC, datetime, timedelta

import pytest
import trio
from csvcheck import read_day
from fakes import FakeQubes, daemon_on_virtual_time, run_for
from structlog.testing import capture_logs

from sysmon import events
from sysmon.collect.process import ProcessResult
from sysmon.collect.xen import XenFollower
from sysmon.collect.xids import Xids
from sysmon.commands.daemon import MAX_NOTES
from sysmon.protocol.admin import Discovery, DiscoveryError
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import TickOutcome
from sysmon.store.commit import commit_tick
from sysmon.transform.tick import TickPlan

collector = daemon_on_virtual_time


class TestScheduling:
    async def test_ticks_aligned_and_midnight(self, tmp_path, autojump_clock):
        """Rows every 10 s on :00/:10/:20, one ts per tick, split at UTC midnight."""
        start = datetime(2025, 8, 31, 23, 59, 31, 300000, tzinfo=UTC)
        c = collector(tmp_path, FakeQubes({"a": "ok", "b": "ok"}), start)
        await run_for(c, 60)
        day1 = read_day(tmp_path / "2025-08-31")["system.csv"]
        day2 = read_day(tmp_path / "2025-09-01")["system.csv"]
        assert [r["ts"][11:19] for r in day1] == ["23:59:40", "23:59:40", "23:59:50", "23:59:50"]
        assert [r["ts"][11:19] for r in day2][::2] == [
            "00:00:00",
            "00:00:10",
            "00:00:20",
            "00:00:30",
        ]
        assert day1[1]["cpu_user"] == ""  # first contact
        assert day1[3]["cpu_user"] == "10.0"
        assert read_day(tmp_path / "2025-09-01")["qubes.csv"]  # a new day gets qubes.csv too

    async def test_busy_qube_is_skipped_not_polled_twice(self, tmp_path, autojump_clock):
        start = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
        qubes = FakeQubes({"slow": ("slow", 7.5), "fast": "ok"})
        c = collector(tmp_path, qubes, start, interval=5.0, scrape_timeout=4.9, concurrency=1)
        await run_for(c, 31)
        scrapes = read_day(tmp_path / "2025-08-31")["scrapes.csv"]
        statuses = [(r["vm"], r["status"]) for r in scrapes]
        assert ("slow", "timeout") in statuses
        # The slow qube is still in flight at the next ticks: it, not the fast one, is skipped.
        assert {vm for vm, status in statuses if status == "skipped"} == {"slow"}
        ts = [r["ts"] for r in scrapes]
        assert ts == sorted(ts)

    async def test_missed_ticks_are_skipped_not_bunched(self, tmp_path, autojump_clock):
        """A suspend (the wall clock jumps 65 s) costs the ticks, not a burst."""
        jump = {"at": 25.0, "by": 65.0}
        t0 = trio.current_time()
        base = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)

        def wall() -> datetime:
            t = trio.current_time() - t0
            return base + timedelta(seconds=t + (jump["by"] if t >= jump["at"] else 0))

        c = collector(tmp_path, FakeQubes({"a": "ok"}), base, overrides={"wall_now": wall})
        with capture_logs() as logs:
            await run_for(c, 50)
        ts = [r["ts"][11:19] for r in read_day(tmp_path / "2025-08-31")["system.csv"]]
        assert ts == ["12:00:10", "12:00:20", "12:01:30", "12:01:40", "12:01:50"]
        assert [e["count"] for e in logs if e["event"] == events.TICKS_MISSED] == [6]

    async def test_clock_step_back_never_writes_out_of_order(self, tmp_path, autojump_clock):
        t0 = trio.current_time()
        base = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)

        def wall() -> datetime:
            t = trio.current_time() - t0
            return base + timedelta(seconds=t - (25 if t >= 32 else 0))

        c = collector(tmp_path, FakeQubes({"a": "ok"}), base, overrides={"wall_now": wall})
        with capture_logs() as logs:
            await run_for(c, 80)
        ts = [r["ts"] for r in read_day(tmp_path / "2025-08-31")["system.csv"]]
        assert ts == sorted(set(ts))
        # Both happen: the step back is noticed, then the two ticks whose second
        # is already written are left out.
        stepped = [e for e in logs if e["event"] == events.CLOCK_STEPPED]
        assert [(e["direction"], e["seconds"]) for e in stepped] == [("back", 25.0)]
        left_out = [e["ts"] for e in logs if e["event"] == events.TICK_NOT_WRITTEN]
        assert left_out == ["2025-08-31T12:00:20Z", "2025-08-31T12:00:30Z"]


class TestMisbehavingQubes:
    async def test_refused_qube_backs_off_and_is_reported_once(self, tmp_path, autojump_clock):
        qubes = FakeQubes({"deny": "refused", "ok": "ok"})
        c = collector(tmp_path, qubes, datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC))
        with capture_logs() as logs:
            await run_for(c, 600)
        assert qubes.calls["ok"] == 59  # ticks at :10 ... 9:50
        assert qubes.calls["deny"] < 12
        changes = [
            e for e in logs if e["event"] == events.QUBE_STATUS_CHANGED and e["vm"] == "deny"
        ]
        assert [e["status"] for e in changes] == ["refused"]
        scrapes = read_day(tmp_path / "2025-08-31")["scrapes.csv"]
        assert sum(r["vm"] == "deny" for r in scrapes) == 59  # every tick explained

    async def test_own_name_is_asked_once(self, tmp_path, autojump_clock):
        """QubesDB is read at the first tick only, not on the poll path."""
        qubes = FakeQubes({"a": "ok"})
        await run_for(collector(tmp_path, qubes, datetime(2025, 8, 31, 12, 0, tzinfo=UTC)), 60)
        assert qubes.own_name_asked == 1

    async def test_hung_qube_does_not_stall_others(self, tmp_path, autojump_clock):
        qubes = FakeQubes({"hang": "hang", "a": "ok"})
        c = collector(tmp_path, qubes, datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC))
        await run_for(c, 109)  # ten ticks, the last committed at 108 s
        files = read_day(tmp_path / "2025-08-31")
        assert [r["vm"] for r in files["system.csv"]] == ["a"] * 10
        hang = [r["status"] for r in files["scrapes.csv"] if r["vm"] == "hang"]
        assert len(hang) == 10
        assert set(hang) == {"timeout", "skipped"}


@pytest.mark.slow
async def test_memory_does_not_grow_per_tick(tmp_path, autojump_clock):
    """An hour of 30 qubes to warm up, then 360 more ticks: every row is there and
    the heap grows by less than one block per tick.  (A whole day of ticks is
    bench/collector.py's: its RSS over a simulated day.)"""
    qubes = FakeQubes({f"q{i:02d}": "ok" for i in range(30)})
    start = datetime(2025, 8, 31, 0, 0, 5, tzinfo=UTC)
    c = collector(tmp_path, qubes, start)
    ticks = 360
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.tick_loop, nursery)
        await trio.sleep(3600)
        gc.collect()
        after_hour = sys.getallocatedblocks()
        await trio.sleep(ticks * 10)
        gc.collect()
        after_more = sys.getallocatedblocks()
        nursery.cancel_scope.cancel()
    # Live allocations, not RSS: a leak of one object per tick shows as 360 blocks.
    assert after_more - after_hour < ticks, (after_hour, after_more)
    scrapes = read_day(tmp_path / "2025-08-31")["scrapes.csv"]
    assert len(scrapes) == (3600 + ticks * 10) // 10 * 30
    assert {r["status"] for r in scrapes} == {"ok"}


async def test_a_planted_file_is_said_in_alerts_csv(tmp_path, autojump_clock):
    """The daemon moves a planted symlink aside and files an alert row about it."""
    start = datetime(2025, 8, 31, 12, 0, 5, tzinfo=UTC)
    folder = tmp_path / "2025-08-31"
    folder.mkdir()
    (folder / "network.csv").symlink_to(tmp_path / "elsewhere")
    c = collector(tmp_path, FakeQubes({"a": "ok"}), start)
    await run_for(c, 21)
    (alert,) = read_day(folder)["alerts.csv"]
    assert alert["vm"] == "sys-monitor"
    assert "network.csv.bad-" in alert["msg"]
    assert not (tmp_path / "elsewhere").exists()


async def test_a_qube_flooding_within_its_caps_gets_its_share_and_no_more(tmp_path, autojump_clock):
    """The largest reply the caps allow, every poll: that qube's rows stop at its budget."""
    start = datetime(2025, 8, 31, 12, 0, 5, tzinfo=UTC)
    c = collector(
        tmp_path,
        FakeQubes({"hog": "huge", "work": "ok"}),
        start,
        qube_mb_per_day=1,
    )
    await run_for(c, 600)
    day = tmp_path / "2025-08-31"
    files = read_day(day)
    hog_status = [r["status"] for r in files["scrapes.csv"] if r["vm"] == "hog"]
    assert hog_status[0] == "ok"
    assert hog_status[-1] == "over-budget"
    assert sum(r["vm"] == "work" for r in files["system.csv"]) == 60  # nothing lost
    hog_bytes = sum(
        len(line)
        for path in day.iterdir()
        if path.name != "scrapes.csv"
        for line in path.read_bytes().splitlines(keepends=True)
        if b",hog," in line
    )
    assert hog_bytes <= 1024 * 1024 + 2000  # its budget, and the alert saying so
    said = [r for r in files["alerts.csv"] if "daily budget" in r["msg"]]
    assert len(said) == 1


async def test_a_state_that_cannot_be_saved_rolls_the_tick_back_and_says_so(
    tmp_path, autojump_clock, monkeypatch
):
    """No tick stays half-committed: rolled back at the next tick, and alerts.csv says why."""
    from sysmon.store import commit  # noqa: PLC0415

    real_save = commit.save_state  # type: ignore[attr-defined]
    saves = 0

    def flaky_save(out_dir, state, *, sync=True):
        nonlocal saves
        saves += 1
        if saves == 4:  # the final save of the second tick
            raise OSError(28, "No space left on device")
        real_save(out_dir, state, sync=sync)

    monkeypatch.setattr(commit, "save_state", flaky_save)
    c = collector(tmp_path, FakeQubes({"a": "ok"}), datetime(2025, 8, 31, 12, 0, 5, tzinfo=UTC))
    await run_for(c, 31)
    files = read_day(tmp_path / "2025-08-31")
    assert [r["ts"][11:19] for r in files["system.csv"]] == ["12:00:10", "12:00:30"]
    (said,) = [r for r in files["alerts.csv"] if "state" in r["msg"]]
    assert "could not be saved" in said["msg"]
    assert "12:00:20" in said["msg"]


async def test_the_slow_parts_are_asked_for_every_nth_poll(tmp_path, autojump_clock):
    """Disk and alerts every 6th poll, once a minute (the defaults), the rest fast."""
    qubes = FakeQubes({"a": "ok"})
    c = collector(tmp_path, qubes, datetime(2025, 8, 31, 12, 0, 5, tzinfo=UTC))
    await run_for(c, 70)
    flags = [a.split(".")[0] if a.startswith("no") else "full" for a in qubes.arguments["a"]]
    kinds = [
        ("disk" if not a.startswith("nodisk.") else "") + ("alerts" if "noalerts." not in a else "")
        for a in qubes.arguments["a"]
    ]
    assert kinds == ["diskalerts", "", "", "", "", "", "diskalerts"]
    assert flags[0] == "full"
    disk = read_day(tmp_path / "2025-08-31")["disk.csv"]
    assert [r["ts"][11:19] for r in disk] == ["12:00:10", "12:01:10"]


class _FailingList:
    """dom0's list failing (qrexec refused, dom0 busy) until ``failing`` is cleared."""

    def __init__(self, qubes: FakeQubes) -> None:
        self.qubes = qubes
        self.failing = True
        self.lists = 0

    async def list_qubes(self) -> Discovery:
        self.lists += 1
        if self.failing:
            raise DiscoveryError("admin.vm.List: qrexec-client-vm exited 1 (Request refused)")
        return await self.qubes.list_qubes()

    async def own_name(self) -> str | None:
        return await self.qubes.own_name()


async def test_a_failing_list_is_a_state_the_daemon_lives_in(tmp_path, autojump_clock):
    """While dom0's list fails the daemon still pings systemd's watchdog (it stopped,
    so systemd killed it every minute, and each restart filed the alert again),
    says it once, and asks dom0 again with backoff, not every tick; then resumes."""
    qubes = FakeQubes({"a": "ok"})
    source = _FailingList(qubes)
    pings: list[tuple[float, str]] = []
    start = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
    c = collector(
        tmp_path,
        qubes,
        start,
        overrides={"notify": lambda message: pings.append((trio.current_time(), message))},
    )
    c.source = source
    t0 = trio.current_time()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.tick_loop, nursery)
            await trio.sleep(1200)  # 20 minutes of a failing list
            failing_lists = source.lists
            source.failing = False
            await trio.sleep(600)
            nursery.cancel_scope.cancel()
    t_end = trio.current_time()
    # Pinged all along: READY=1 once, then WATCHDOG=1 well within WatchdogSec=60.
    assert [m for _, m in pings][:1] == ["READY=1"]
    assert {m for _, m in pings[1:]} == {"WATCHDOG=1"}
    times = [t0, *(t for t, _ in pings), t_end]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 30
    # Said once, in the log and in alerts.csv; asked again with backoff (not 120 times).
    assert [e["event"] for e in logs].count(events.DISCOVERY_FAILED) == 1
    assert [e["event"] for e in logs].count(events.DISCOVERY_RECOVERED) == 1
    assert failing_lists <= 12
    alerts = read_day(tmp_path / "2025-08-31")["alerts.csv"]
    assert sum("discovery failed" in r["msg"] for r in alerts) == 1
    # Back within the longest backoff (5 minutes): rows again.
    rows = read_day(tmp_path / "2025-08-31")["system.csv"]
    assert rows
    assert min(r["ts"] for r in rows) <= "2025-08-31T12:25:10"


async def test_serve_stops_when_its_trigger_fires(tmp_path, autojump_clock):
    """No signal wired in: the trigger it is handed ends the run, systemd is told STOPPING."""
    said: list[str] = []
    stop = trio.Event()

    async def trigger(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await stop.wait()

    c = collector(
        tmp_path,
        FakeQubes({"a": "ok"}),
        datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC),
        overrides={"notify": said.append},
    )
    with capture_logs() as logs, trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(c.serve, trigger)
            await trio.sleep(35)
            stop.set()
    assert c.ticks_done == 3
    assert said == ["READY=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]
    assert [e["event"] for e in logs][-1] == events.SYSMON_STOPPED


async def test_the_commit_calls_the_ticks_plan_with_the_state_it_loaded(tmp_path, autojump_clock):
    """The plan is a named value (TickPlan) bound to the tick; the committer calls it."""
    seen: list[object] = []

    def committer(out_dir, ts, plan):
        seen.append(plan)
        return commit_tick(out_dir, ts, plan, sync=False)

    c = collector(
        tmp_path,
        FakeQubes({"a": "ok"}),
        datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC),
        overrides={"committer": committer},
    )
    report = await c.poll(datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC))
    (plan,) = seen
    assert isinstance(plan, TickPlan)
    assert plan.ts == report.ts
    assert [r.vm for r in plan.results] == ["a"]
    assert report.outcome.written["system.csv"] == 1


@pytest.mark.parametrize(
    "lost",
    [
        TickOutcome(skipped="clock behind"),
        TickOutcome(dropped={"alerts.csv": 1}, errors=("day folder: No space left on device",)),
    ],
    ids=["skipped", "dropped"],
)
async def test_sysmons_own_notes_wait_for_a_tick_that_keeps_them(tmp_path, autojump_clock, lost):
    """A note (discovery failed, a file moved aside) handed to a commit that did not
    write it is handed to the next one: said once, never lost."""
    calls: list[datetime] = []

    def committer(out_dir, ts, plan):
        calls.append(ts)
        if len(calls) == 1:
            return lost
        return commit_tick(out_dir, ts, plan, sync=False)

    c = collector(
        tmp_path,
        FakeQubes({"a": "ok"}),
        datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC),
        overrides={"committer": committer},
    )
    c.note("sysmon: a note of the test")
    await c.poll(datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC))
    await c.poll(datetime(2025, 8, 31, 12, 0, 20, tzinfo=UTC))
    await c.poll(datetime(2025, 8, 31, 12, 0, 30, tzinfo=UTC))
    alerts = read_day(tmp_path / "2025-08-31")["alerts.csv"]
    assert [r["msg"] for r in alerts if "of the test" in r["msg"]] == ["sysmon: a note of the test"]
    assert alerts[0]["ts"] == "2025-08-31T12:00:20Z"


async def test_notes_held_back_are_bounded(tmp_path, autojump_clock):
    """A commit that keeps no tick for long (a disk that stays full) does not grow
    the notes without end: the oldest are kept, and one line says how many were not."""
    keep = False

    def committer(out_dir, ts, plan):
        return commit_tick(out_dir, ts, plan, sync=False) if keep else TickOutcome(skipped="no")

    c = collector(
        tmp_path,
        FakeQubes({"a": "ok"}),
        datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC),
        overrides={"committer": committer},
    )
    start = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)
    for i in range(1000):
        c.note(f"sysmon: note {i}")
        await c.poll(start + timedelta(seconds=10 * i))
    assert len(c.notes) == MAX_NOTES
    keep = True
    await c.poll(start + timedelta(seconds=10_000))
    said = [r["msg"] for r in read_day(tmp_path / "2025-08-31")["alerts.csv"]]
    assert said == [
        *(f"sysmon: note {i}" for i in range(MAX_NOTES)),
        f"sysmon: {1000 - MAX_NOTES} more notes of sysmon's were not kept (no tick was written)",
    ]


class XidDom0:
    """dom0's answers to admin.vm.property.Get+xid, as qubesd's (4.3)."""

    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids
        self.asked: list[str] = []

    def service_argv(self, target: str, service: str, argument: str = "") -> list[str]:
        return [target, f"{service}+{argument}"]

    async def call(self, argv, *, max_stdout):
        self.asked.append(argv[0])
        return ProcessResult(0, b"0\x00default=True type=int %d" % self.ids[argv[0]], b"")


class TestViews:
    async def test_a_qube_xen_sees_busier_than_it_says_is_told_once(self, tmp_path, autojump_clock):
        """views.csv each tick; one alert row for the qube after views_sustain,
        in its own name; each id asked once, never the vault's."""
        start = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
        dom0 = XidDom0({"work": 5, "sys-net": 4})
        xen = XenFollower()
        c = collector(
            tmp_path,
            FakeQubes({"work": "ok", "sys-net": "ok", "secrets-vault": "ok"}),
            start,
            overrides={"xen": xen, "xids": Xids(qrexec=dom0, timeout=5)},
            views_sustain=60.0,
        )
        for i in range(12):
            now = trio.current_time()
            xen.latest = {  # Xen sees work at 90 %; it reports 15 % (user 10, system 5)
                vm: (now, DomainStats(vm, 90 if vm == "work" else 15, None, 1000 * i, 1000))
                for vm in ("work", "sys-net")
            }
            await c.poll(start + timedelta(seconds=10 * i))
            await trio.sleep(10)
        day = read_day(tmp_path / "2025-08-31")
        flags = {(r["vm"], r["flag"]) for r in day["views.csv"] if r["ts"] > "2025-08-31T12:00:00Z"}
        assert flags == {("work", "cpu"), ("sys-net", "agree")}
        told = [(r["vm"], r["msg"]) for r in day["alerts.csv"] if "views" in r["msg"]]
        assert len(told) == 1
        assert told[0][0] == "work"
        assert "Xen sees work at 90.0% CPU, work reports 15.0%" in told[0][1]
        assert sorted(dom0.asked) == ["sys-net", "work"]


class TestViewsSustain:
    """The sustain state lives in the state file, advanced only by a tick that is kept."""

    START = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)

    def daemon(self, tmp_path, qubes, **overrides):
        """A daemon comparing the views of ``work`` (Xen id 5), told after 60 s."""
        xen = XenFollower()
        xids = Xids(qrexec=XidDom0({"work": 5}), timeout=5)
        uses = {"xen": xen, "xids": xids, **overrides}
        c = collector(tmp_path, qubes, self.START, overrides=uses, views_sustain=60.0)
        return c, xen

    async def ticks(self, c, xen, ticks, busy_from, busy_to):
        """Ticks ``ticks``: Xen sees work at 90 % in [busy_from, busy_to), else at the
        15 % it reports."""
        for i in ticks:
            now = trio.current_time()
            usage = 90 if busy_from <= i < busy_to else 15
            xen.latest = {"work": (now, DomainStats("work", usage, None, 1000 * i, 1000))}
            await c.poll(self.START + timedelta(seconds=10 * i))
            await trio.sleep(10)

    def told(self, tmp_path):
        """(tick, begins or ends) of each views alert row."""
        rows = read_day(tmp_path / "2025-08-31")["alerts.csv"]
        out = []
        for r in rows:
            if "views" not in r["msg"]:
                continue
            tick = (datetime.fromisoformat(r["ts"]) - self.START).seconds // 10
            out.append((tick, "ends" if "agree again" in r["msg"] else "begins"))
        return out

    @pytest.mark.parametrize("restart_at", [4, 10, 22])
    async def test_a_restart_in_a_sustained_gap_neither_tells_it_again_nor_loses_its_end(
        self, tmp_path, autojump_clock, restart_at
    ):
        """Xen sees work busy from tick 1 to 19: told at tick 7 (60 s after the
        first tick with both views), its end at 26, wherever sysmon restarts."""
        qubes = FakeQubes({"work": "ok"})  # the qube runs on while sysmon restarts
        first, xen = self.daemon(tmp_path, qubes)
        await self.ticks(first, xen, range(restart_at), 1, 20)
        second, xen = self.daemon(tmp_path, qubes)
        await self.ticks(second, xen, range(restart_at, 30), 1, 20)
        assert self.told(tmp_path) == [(7, "begins"), (26, "ends")]

    @pytest.mark.parametrize(
        ("dropped", "told_at"),
        [({1}, 8), ({7}, 8), ({1, 8}, 9), (set(), 7)],
        ids=["gap's first tick", "alert's tick", "both", "none"],
    )
    async def test_a_dropped_tick_does_not_advance_the_sustain_clock(
        self, tmp_path, autojump_clock, dropped, told_at
    ):
        """A tick the commit does not keep neither starts the gap nor tells it:
        its alert comes with the next tick kept, never lost."""
        qubes = FakeQubes({"work": "ok"})

        def committer(out_dir, ts, plan):
            if (ts - self.START).seconds // 10 in dropped:  # as commit_tick skips: plan not run
                return TickOutcome(skipped="dropped by the test")
            return commit_tick(out_dir, ts, plan, sync=False)

        c, xen = self.daemon(tmp_path, qubes, committer=committer)
        await self.ticks(c, xen, range(15), 1, 30)
        assert self.told(tmp_path) == [(told_at, "begins")]
