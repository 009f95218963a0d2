"""A hostile qube's share over time (issue #24, items 5-10).

Each test here reproduces an attack on the code before its fix: it failed
there, and passes only with the bound in place.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import attrs
import trio
from csvcheck import read_day
from fakes import FakeQubes, daemon_on_virtual_time, inline, run_for
from test_archive import FakeVault

from sysmon.collect.process import ProcessResult
from sysmon.commands.archive import NightlyArchive, run_archive
from sysmon.config import Config
from sysmon.protocol.admin import Discovery, QubeInfo, select_targets
from sysmon.protocol.metrics import AlertRecord, NetRecord, Snapshot, SysRecord
from sysmon.protocol.parse import parse_metrics_untrusted
from sysmon.records import (
    AlertCursor,
    Budget,
    PoolState,
    QubeState,
    Row,
    ScrapeResult,
    State,
    TickRows,
)
from sysmon.store.delivery import is_delivered
from sysmon.store.state import from_json, to_json
from sysmon.transform.rows import CURSOR_SEEN_MAX, POOL_TOLD_MAX, build_tick_rows, new_alerts
from sysmon.transform.rules import parse_rules
from sysmon.transform.tick import build_tick

TS = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)
BURST = 50  # the handler's MAX_ALERTS: what one poll can carry


def _lines(rows: Sequence[Row]) -> list[bytes]:
    """The lines the store writes for ``rows``."""
    return [r.line for r in rows]


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


# --- 6, 7. disposables: one shared budget, allowances per qube ------------


def _flood(boot: str, names: int = 40, alerts: tuple[AlertRecord, ...] = ()) -> Snapshot:
    """A reply at the interface cap: about 2.5 KB of rows a poll."""
    net = tuple(NetRecord(f"eth{i}", 1, 0, 0, 1, 0, 0) for i in range(names))
    return attrs.evolve(_snap(boot, alerts), net=net)


def _run(
    polls: list[list[tuple[QubeInfo, Snapshot]]],
    budget: Budget,
    state: State | None = None,
) -> tuple[list[TickRows], State]:
    """Ticks 10 s apart, each the qubes listed and their replies; state carried."""
    state = state or State()
    ticks = []
    for i, poll in enumerate(polls):
        ts = TS + timedelta(seconds=10 * i)
        results = [_result(info.name, snap) for info, snap in poll]
        built = build_tick_rows(
            ts,
            results,
            None,
            state.qubes,
            budget=budget,
            listed=[info for info, _ in poll],
            pools=state.pools,
        )
        qubes = {**state.qubes, **built.states}
        qubes.update({b.vm: b.next_state for b in built.alerts if b.next_state is not None})
        for vm in built.forget:
            qubes.pop(vm, None)
        state = State(qubes=qubes, pools=built.pools)
        ticks.append(built)
    return ticks, state


def _bytes_of(ticks: list[TickRows], prefix: str) -> int:
    """Metric and alert rows of qubes whose name starts with ``prefix`` (not scrapes)."""
    total = 0
    for t in ticks:
        for name, rows in t.rows.items():
            if name != "scrapes.csv":
                total += sum(
                    len(r) for r in _lines(rows) if r.split(b",")[1].startswith(prefix.encode())
                )
        total += sum(len(r) for b in t.alerts for r in _lines(b.rows) if b.vm.startswith(prefix))
    return total


def _uuid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


SEEN = State(qubes={"work": QubeState(boot_id="w", day="2025-08-30")})


def test_disposables_in_a_row_share_one_budget() -> None:
    """Six disposables one after another wrote 5.9x one qube's budget."""
    budget = Budget(bytes_per_day=50_000, dispvm_bytes_per_day=60_000)
    polls = []
    for d in range(6):
        info = QubeInfo(f"disp{d}", "DispVM", "Running", _uuid(d))
        polls += [[(info, _flood(f"b{d}"))] for _ in range(25)]
    ticks, _ = _run(polls, budget, SEEN)
    written = _bytes_of(ticks, "disp")
    assert written <= budget.dispvm_bytes_per_day + 6 * 1000, written  # + each one's notes
    notes = [r for t in ticks for b in t.alerts for r in _lines(b.rows) if b"disposables" in r]
    assert len(notes) == len({r.split(b",")[1] for r in notes})  # each drop said once a qube


def test_names_first_seen_today_share_one_budget() -> None:
    budget = Budget(bytes_per_day=50_000, new_bytes_per_day=60_000)
    polls = []
    for d in range(6):
        info = QubeInfo(f"new{d}", "AppVM", "Running", _uuid(d))
        polls += [[(info, _flood(f"b{d}"))] for _ in range(25)]
    ticks, state = _run(polls, budget, SEEN)
    assert _bytes_of(ticks, "new") <= budget.new_bytes_per_day + 6 * 1000
    # A qube seen on an earlier day keeps a budget of its own.
    work = QubeInfo("work", "AppVM", "Running", _uuid(99))
    more, _ = _run([[(work, _flood("w"))]], budget, state)
    assert more[0].rows["system.csv"]


def test_a_qube_listed_but_unsampled_for_days_is_not_new_again() -> None:
    """A qube used once a week keeps its own budget; only its details are dropped."""
    budget = Budget()
    old = State(qubes={"weekly": QubeState(boot_id="w", day="2025-08-20"), **SEEN.qubes})
    weekly = QubeInfo("weekly", "AppVM", "Halted", _uuid(7))
    built = build_tick_rows(TS, [], None, old.qubes, budget=budget, listed=[weekly])
    assert "weekly" not in built.forget
    assert built.states["weekly"].cursor is None
    assert built.states["weekly"].first_day == ""


def _inventor(boot: str) -> Snapshot:
    return _flood(boot, names=300)


def _honest(boot: str) -> Snapshot:
    """One interface, named as the hostile disposable never did."""
    return attrs.evolve(_snap(boot), net=(NetRecord("honest0", 1, 0, 0, 1, 0, 0),))


def test_a_reused_disposable_name_starts_with_a_fresh_allowance_4_3() -> None:
    """core-admin draws disposable numbers from 10,000: a hostile one that
    spent disp42's names must not leave an honest later disp42 blind."""
    budget = Budget(names_per_day=256)
    hostile = QubeInfo("disp42", "DispVM", "Running", _uuid(1))
    honest = QubeInfo("disp42", "DispVM", "Running", _uuid(2))
    ticks, _ = _run([[(hostile, _inventor("h"))], [(honest, _honest("h"))]], budget, SEEN)
    assert [r for r in ticks[1].rows["network.csv"] if b",disp42," in r.line]


def test_a_reused_disposable_name_starts_with_a_fresh_allowance_4_2() -> None:
    """4.2 lists no UUIDs: a disposable restarted (another boot) is another qube."""
    budget = Budget(names_per_day=256)
    disp = QubeInfo("disp42", "DispVM", "Running")
    ticks, _ = _run([[(disp, _inventor("boot-1"))], [(disp, _honest("boot-2"))]], budget, SEEN)
    assert [r for r in ticks[1].rows["network.csv"] if b",disp42," in r.line]


def test_an_honest_disposable_stopped_by_the_shared_budget_is_told_once() -> None:
    budget = Budget(bytes_per_day=50_000, dispvm_bytes_per_day=30_000)
    hog = QubeInfo("disp1", "DispVM", "Running", _uuid(1))
    honest = QubeInfo("disp2", "DispVM", "Running", _uuid(2))
    polls = [[(hog, _flood("a"))] for _ in range(20)]
    polls += [[(honest, _flood("b", names=1))] for _ in range(5)]
    ticks, _ = _run(polls, budget, SEEN)
    told = [r for t in ticks for b in t.alerts for r in _lines(b.rows) if b.vm == "disp2"]
    assert len(told) == 1
    assert b"disposables" in told[0]
    assert b"disp1" in told[0]  # who spent it


# --- 8. journal alerts cannot starve metric rows ---------------------------


def test_a_user_filling_the_journal_cannot_blind_root() -> None:
    """``logger -p crit`` by any user: 50 x 1,000 B per alert poll."""
    budget = Budget(bytes_per_day=400_000, alert_percent=25)
    info = QubeInfo("work", "AppVM", "Running", _uuid(1))
    polls = []
    for poll in range(200):
        spam = tuple(
            AlertRecord(1_700_000_000_000_000 + poll * 100 + i, "user", "x" * 1000)
            for i in range(BURST)
        )
        polls.append([(info, _flood("b", names=2, alerts=spam))])
    ticks, state = _run(polls, budget, SEEN)
    system = [r for t in ticks for r in t.rows["system.csv"]]
    assert len(system) == 200  # every poll's metric rows
    journal = sum(len(r) for t in ticks for b in t.alerts for r in _lines(b.rows))
    assert journal <= budget.alert_bytes_per_day + 2000
    notes = [r for t in ticks for b in t.alerts for r in _lines(b.rows) if b"journal" in r]
    assert len(notes) == 1
    assert b"user" in notes[0]  # whose lines took the share
    assert not state.qubes["work"].over_budget


def test_a_flood_of_disposables_past_the_shared_budget_is_named_64_times_then_summed() -> None:
    """Every drop is said once, but sysmon's own lines about them are bounded too."""
    budget = Budget(bytes_per_day=50_000, dispvm_bytes_per_day=1_000)
    polls = [
        [(QubeInfo(f"disp{d}", "DispVM", "Running", _uuid(d)), _flood(f"b{d}"))] for d in range(100)
    ]
    ticks, _ = _run(polls, budget, SEEN)
    lines = [r for t in ticks for b in t.alerts for r in _lines(b.rows)]
    assert sum(b"is over the shared budget" in r for r in lines) == POOL_TOLD_MAX
    assert sum(b"not named again" in r for r in lines) == 1
    assert len(lines) == POOL_TOLD_MAX + 1


# --- 9. a clock a day ahead at archive time loses no day -------------------


def _append_rows(out: Path, day: date, first: int, count: int) -> None:
    folder = out / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "system.csv"
    if not path.exists():
        path.write_text("ts,vm\n")
    with path.open("a") as f:
        f.writelines(
            f"{day}T12:{i // 60:02d}:{i % 60:02d}Z,work\n" for i in range(first, first + count)
        )


def _vault_rows(vault: FakeVault, day: date) -> set[str]:
    rows: set[str] = set()
    for name in vault.days():
        with tarfile.open(vault.incoming / name) as tar:
            member = tar.extractfile(f"{day}/system.csv")
            assert member is not None
            rows |= set(member.read().decode().splitlines()[1:])
    return rows


async def test_rows_added_to_a_delivered_day_are_delivered_as_a_later_copy(
    tmp_path: Path,
) -> None:
    """The clock a day ahead delivered the real day; it came back and wrote more."""
    day = date(2025, 8, 31)
    config = Config(out_dir=tmp_path / "out", retention_days=1)
    vault = FakeVault(tmp_path / "vault")
    _append_rows(config.out_dir, day, 0, 60)
    ahead = await run_archive(config, day + timedelta(days=1), copier=vault.copy, offload=inline)
    assert [d.status for d in ahead.days] == ["delivered"]
    _append_rows(config.out_dir, day, 60, 72)  # the clock came back: the rest of the day
    # Retention (1 day) runs with every archive: the grown day must not go unsent.
    later = await run_archive(config, day + timedelta(days=3), copier=vault.copy, offload=inline)
    assert [d.status for d in later.days] == ["delivered"]
    assert vault.days() == [f"monitor-{day}.2.tgz", f"monitor-{day}.tgz"]
    assert len(_vault_rows(vault, day)) == 132
    again = await run_archive(config, day + timedelta(days=3), copier=vault.copy, offload=inline)
    assert again.days == ()  # delivered whole: not sent a third time


async def test_a_wall_clock_a_day_ahead_does_not_complete_the_day(
    tmp_path: Path, autojump_clock: object
) -> None:
    """The nightly task's today is the wall clock's only if the monotonic clock agrees."""
    day = date(2025, 8, 31)
    start = datetime(2025, 8, 31, 2, 0, tzinfo=UTC)
    t0 = trio.current_time()

    def wall() -> datetime:
        t = trio.current_time() - t0
        return start + timedelta(seconds=t, days=1 if t >= 60 else 0)

    config = Config(out_dir=tmp_path / "out")
    _append_rows(config.out_dir, day, 0, 10)
    vault = FakeVault(tmp_path / "vault")
    nightly = NightlyArchive(
        config, note=lambda _m: None, wall_now=wall, copier=vault.copy, offload=inline, zone=UTC
    )
    with trio.move_on_after(3 * 3600):  # past 03:50 by the wall clock and by the monotonic one
        await nightly.run()
    assert vault.days() == []
    assert not is_delivered(config.out_dir, day)


def test_the_shares_survive_a_restart_of_sys_monitor() -> None:
    """Everything a share keeps goes through the state file unchanged."""
    qube = QubeState(
        boot_id="b",
        cursor=AlertCursor("b", 7, frozenset({"ab"}), filed=900),
        day="2025-08-31",
        uuid=WORK_UUID,
        first_day="2025-08-31",
        alert_bytes=5,
        alerts_over=True,
        alert_by=(("user", 5),),
    )
    pool = PoolState(day="2025-08-31", day_bytes=9, over=True, by=(("disp1", 9),), told=3)
    state = State(qubes={"work": qube}, pools={"disposables": pool})
    assert from_json(json.loads(json.dumps(to_json(state)))) == state


async def test_a_wall_clock_ahead_for_a_day_of_steady_time_is_believed(
    tmp_path: Path, autojump_clock: object
) -> None:
    """A suspend of three days the steady clock missed: the steady clock alone
    would hold every later day back three days for ever; after a day it is believed."""
    start = datetime(2025, 8, 31, 2, 0, tzinfo=UTC)
    t0 = trio.current_time()

    def wall() -> datetime:
        t = trio.current_time() - t0
        return start + timedelta(seconds=t, days=3 if t >= 60 else 0)

    config = Config(out_dir=tmp_path / "out")
    after = date(2025, 9, 3)  # written after the suspend, by the wall clock
    _append_rows(config.out_dir, after, 0, 10)
    vault = FakeVault(tmp_path / "vault")
    nightly = NightlyArchive(
        config, note=lambda _m: None, wall_now=wall, copier=vault.copy, offload=inline, zone=UTC
    )
    with trio.move_on_after(2 * 86400 + 3600):
        await nightly.run()
    assert vault.days() == [f"monitor-{after}.tgz"]


def test_at_a_fresh_start_every_listed_qube_is_known_and_only_later_ones_are_new() -> None:
    """Install day: a qube halted at the first tick and started later keeps a
    budget of its own; one created after the first tick shares the new names'."""
    budget = Budget(bytes_per_day=50_000, new_bytes_per_day=10_000)
    halted = QubeInfo("halted", "AppVM", "Halted", _uuid(1))
    started = attrs.evolve(halted, state="Running")
    created = QubeInfo("created", "AppVM", "Running", _uuid(2))
    work = QubeInfo("work", "AppVM", "Running", _uuid(3))
    polls: list[list[tuple[QubeInfo, Snapshot]]] = [[(work, _snap("w"))]]
    polls += [[(work, _snap("w")), (started, _flood("h")), (created, _flood("c"))]] * 10
    ticks, state = _run_listed(polls, [halted], budget)
    assert state.qubes["halted"].first_day == ""
    assert _bytes_of(ticks, "halted") > budget.new_bytes_per_day
    assert _bytes_of(ticks, "created") <= budget.new_bytes_per_day


def _run_listed(
    polls: list[list[tuple[QubeInfo, Snapshot]]], also_listed: list[QubeInfo], budget: Budget
) -> tuple[list[TickRows], State]:
    """As _run from an empty state, with qubes dom0 lists but nobody polls on the first tick."""
    state = State()
    ticks = []
    for i, poll in enumerate(polls):
        listed = [info for info, _ in poll]
        if i == 0:
            listed += also_listed
        built = build_tick_rows(
            TS + timedelta(seconds=10 * i),
            [_result(info.name, snap) for info, snap in poll],
            None,
            state.qubes,
            budget=budget,
            listed=listed,
            pools=state.pools,
        )
        qubes = {**state.qubes, **built.states}
        qubes.update({b.vm: b.next_state for b in built.alerts if b.next_state is not None})
        state = State(qubes=qubes, pools=built.pools)
        ticks.append(built)
    return ticks, state


# --- 11. rule alerts a qube provokes are spent from its share --------------


def _flapping_disks(poll: int, mounts: int = 64) -> bytes:
    """A hostile reply: ``mounts`` filesystems full on even polls, empty on odd ones."""
    used = 100 if poll % 2 == 0 else 0
    ticks = " ".join(f"cpu_ticks_{n}={poll}" for n in ("user", "system", "idle"))
    lines = [f"sys: protocol=1 boot_id=b {ticks}"]
    lines += [
        f"disk: fs=a mount=/{i} size_kb=100 used_kb={used} avail_kb={100 - used}"
        for i in range(mounts)
    ]
    return "".join(f"{line}\n" for line in lines).encode()


def test_rule_alerts_a_qube_provokes_are_spent_from_its_budget() -> None:
    """A disk rule without ``for`` (``pct_used >= 90``), 64 mounts flapping each
    poll: its alert rows (sysmon's words, but of the qube's making) were never
    counted, so the qube wrote 3x its daily budget, more with more rules."""
    rules = parse_rules(
        [{"name": "disk-full", "file": "disk", "expr": "pct_used", "op": ">=", "value": 90}], "t"
    )
    budget = Budget(bytes_per_day=200_000)
    evil = QubeInfo("evil", "AppVM", "Running", _uuid(1))
    work = QubeInfo("work", "AppVM", "Running", _uuid(2))
    state = State(qubes={**SEEN.qubes, "evil": QubeState(boot_id="b", day="2025-08-30")})
    ticks = []
    for poll in range(300):
        ts = TS + timedelta(seconds=10 * poll)
        snap = parse_metrics_untrusted(_flapping_disks(poll))
        results = [_result("evil", snap), _result("work", _flood("w", names=1))]
        built = build_tick(
            state, ts=ts, results=results, qubes=None, rules=rules, budget=budget,
            listed=[evil, work],
        )  # fmt: skip
        qubes = {**state.qubes, **built.states}
        qubes.update({b.vm: b.next_state for b in built.alerts if b.next_state is not None})
        state = State(qubes=qubes, pools=built.pools, rules=built.rule_state)
        ticks.append(built)
    one_poll = 64 * 120  # a poll's rule alerts, over before the next is counted
    assert _bytes_of(ticks, "evil") <= budget.bytes_per_day + one_poll, _bytes_of(ticks, "evil")
    assert state.qubes["evil"].over_budget
    assert all(t.rows["system.csv"] for t in ticks)  # work's rows, every poll
