"""From one tick's poll results to CSV rows and each qube's next state.  Pure.

The ``vm`` of every row is the name the collector called, never anything a
payload says.  Alerts are filed exactly once: an entry is new when it is
newer than the qube's cursor, or at the cursor's microsecond and not yet
seen there; a qube on another boot starts afresh.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import attrs

from sysmon import schema
from sysmon.protocol.admin import QubeInfo
from sysmon.protocol.metrics import AlertRecord, Snapshot
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import (
    AlertBatch,
    AlertCursor,
    Budget,
    PoolState,
    QubeState,
    ScrapeResult,
    Status,
    TickRows,
)
from sysmon.transform.rates import cpu_percent, ticks_of

UNKNOWN_BOOT = "unknown"
#: dom0's class for disposables (core-admin ``qubes/vm/dispvm.py``).
DISPVM_CLASS = "DispVM"
DISPVM_POOL = "disposables"
NEW_POOL = "new-names"
POOL_WORDS = {DISPVM_POOL: "all disposables", NEW_POOL: "qubes first seen today"}
POOL_LIMITS: dict[str, Callable[[Budget], int]] = {
    DISPVM_POOL: lambda b: b.dispvm_bytes_per_day,
    NEW_POOL: lambda b: b.new_bytes_per_day,
}
#: Members of a shared budget named, each once, when it stops them; a day's
#: flood of new disposables past it gets one line more (64 x ~200 B).
POOL_TOLD_MAX = 64
#: Who is named for a share spent: the four largest, names cut short.
TALLY_KEEP = 4
TALLY_NAME_MAX = 32
DEFAULT_BUDGET = Budget()
#: Digests an alert cursor keeps of the entries at its microsecond.
CURSOR_SEEN_MAX = DEFAULT_BUDGET.cursor_seen
#: Days without a sample after which a qube's state (cursor, budget) is dropped.
FORGET_AFTER_DAYS = 2


def alert_key(alert: AlertRecord) -> str:
    """A short digest telling entries of the same microsecond apart."""
    text = f"{alert.ts_us}\0{alert.identifier}\0{alert.message}".encode()
    return hashlib.sha256(text).hexdigest()[:16]


def new_alerts(
    alerts: Iterable[AlertRecord],
    cursor: AlertCursor | None,
    boot_id: str,
    seen_max: int = CURSOR_SEEN_MAX,
) -> tuple[list[AlertRecord], AlertCursor | None]:
    """The alerts not yet filed, and the cursor after filing them.

    The cursor counts every entry filed at its microsecond but keeps the
    digests of the first ``seen_max`` only: a qube stamping all its lines
    with one microsecond cannot grow the state file (the handler skips by
    the count; the digests are for a handler that ignored the cursor).
    """
    same_boot = cursor is not None and cursor.boot_id == boot_id
    fresh: list[AlertRecord] = []
    for alert in alerts:
        if same_boot and cursor is not None:
            if alert.ts_us < cursor.ts_us:
                continue
            if alert.ts_us == cursor.ts_us and alert_key(alert) in cursor.seen:
                continue
        fresh.append(alert)
    if not fresh:
        return [], cursor
    base_ts = cursor.ts_us if same_boot and cursor is not None else -1
    top = max(base_ts, *(a.ts_us for a in fresh))
    at_top = [alert_key(a) for a in fresh if a.ts_us == top]
    seen: frozenset[str] = frozenset()
    filed = 0
    if top == base_ts and cursor is not None:
        seen, filed = cursor.seen, cursor.filed
    room = max(0, seen_max - len(seen))
    seen |= frozenset(at_top[:room])
    cursor = AlertCursor(boot_id=boot_id, ts_us=top, seen=seen, filed=filed + len(at_top))
    return fresh, cursor


def format_entry_time(ts_us: int) -> str:
    """An entry's own time, UTC to the microsecond; out-of-range shown raw."""
    try:
        moment = datetime.fromtimestamp(ts_us / 1_000_000, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return f"@{ts_us}us"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pct_used(used: int, avail: int) -> int | None:
    # As df: used / (used + avail), rounded up.
    total = used + avail
    return math.ceil(used * 100 / total) if total > 0 else None


def _minus(a: int | None, b: int | None) -> int | None:
    return a - b if a is not None and b is not None else None


def _snapshot_rows(
    ts: datetime, vm: str, snap: Snapshot, prev: QubeState | None, budget: Budget
) -> tuple[dict[str, list[bytes]], list[AlertRecord], QubeState, bool]:
    rows: dict[str, list[bytes]] = {}
    sys = snap.sys
    assert sys is not None  # noqa: S101 -- the parser guarantees it
    boot_id = sys.boot_id or UNKNOWN_BOOT
    restarted = prev is not None and prev.boot_id is not None and prev.boot_id != boot_id
    ticks = ticks_of(sys)
    same_boot = prev is not None and prev.boot_id == boot_id
    cpu = cpu_percent(prev.cpu_ticks if same_boot and prev else None, ticks)
    rows[schema.SYSTEM.file_name] = [
        schema.SYSTEM.format_row(
            [
                ts,
                vm,
                cpu.user if cpu else None,
                cpu.system if cpu else None,
                cpu.idle if cpu else None,
                sys.load1,
                sys.load5,
                sys.load15,
                sys.mem_total_kb,
                _minus(sys.mem_total_kb, sys.mem_avail_kb),
                sys.mem_avail_kb,
                sys.swap_total_kb,
                _minus(sys.swap_total_kb, sys.swap_free_kb),
                sys.procs_running,
                sys.procs_blocked,
            ]
        )
    ]
    rows[schema.NETWORK.file_name] = [
        schema.NETWORK.format_row(
            [
                ts,
                vm,
                n.interface,
                n.rx_bytes,
                n.rx_errs,
                n.rx_drop,
                n.tx_bytes,
                n.tx_errs,
                n.tx_drop,
            ]
        )
        for n in snap.net
    ]
    if snap.conn is not None:
        rows[schema.CONNECTIONS.file_name] = [
            schema.CONNECTIONS.format_row(
                [ts, vm, snap.conn.tcp_established, snap.conn.udp_sockets]
            )
        ]
    rows[schema.DISK.file_name] = [
        schema.DISK.format_row(
            [
                ts,
                vm,
                d.fs,
                d.mount,
                d.size_kb,
                d.used_kb,
                d.avail_kb,
                _pct_used(d.used_kb, d.avail_kb),
            ]
        )
        for d in snap.disk
    ]
    fresh, cursor = new_alerts(
        snap.alerts, prev.cursor if prev else None, boot_id, budget.cursor_seen
    )
    state = QubeState(boot_id=boot_id, cpu_ticks=ticks, cursor=cursor)
    return rows, fresh, state, restarted


def name_digest(name: str) -> str:
    """How a name a qube used today is remembered: 32 bits tell a day's names apart."""
    return hashlib.blake2b(name.encode(), digest_size=4).hexdigest()


def _admit_names(
    snap: Snapshot, names: frozenset[str], cap: int
) -> tuple[Snapshot, frozenset[str], int]:
    """The snapshot without records of new names past ``cap``; the names; how many dropped."""
    known = set(names)
    dropped = 0

    def admit(key: str) -> bool:
        nonlocal dropped
        if key in known or len(known) < cap:
            known.add(key)
            return True
        dropped += 1
        return False

    net = tuple(n for n in snap.net if admit(name_digest(f"if:{n.interface}")))
    disk = tuple(d for d in snap.disk if admit(name_digest(f"fs:{d.mount}")))
    return attrs.evolve(snap, net=net, disk=disk), frozenset(known), dropped


def _names_note(vm: str, budget: Budget) -> str:
    return (
        f"sysmon: {vm} used more than {budget.names_per_day} interface and filesystem "
        "names today: rows for new names are dropped until midnight UTC"
    )


def _budget_note(vm: str, budget: Budget) -> str:
    return (
        f"sysmon: {vm} is over its daily budget of {budget.bytes_per_day:,} bytes: "
        "its metric rows stop until midnight UTC"
    )


def _who(tally: Sequence[tuple[str, int]], *, quoted: bool = False) -> str:
    # A qube's own words (journal identifiers) quoted, so none reads as sysmon's.
    return ", ".join(
        f"{who!r} ({n:,} bytes)" if quoted else f"{who} ({n:,} bytes)" for who, n in tally
    )


def _pool_note(vm: str, pool: str, limit: int, state: PoolState) -> str:
    return (
        f"sysmon: {vm} is over the shared budget of {POOL_WORDS[pool]} ({limit:,} bytes "
        f"today, most spent by {_who(state.by) or 'none'}): its metric rows stop until "
        "midnight UTC"
    )


def _alerts_note(vm: str, budget: Budget, by: Sequence[tuple[str, int]]) -> str:
    return (
        f"sysmon: {vm}'s journal alerts reached their share of its day "
        f"({budget.alert_bytes_per_day:,} bytes), most from {_who(by, quoted=True)}: its journal "
        "alerts wait until midnight UTC, its metric rows go on"
    )


def _tally(
    tally: Sequence[tuple[str, int]], more: Iterable[tuple[str, int]]
) -> tuple[tuple[str, int], ...]:
    """The four largest of ``tally`` plus ``more`` (names cut to 32 characters)."""
    counts = dict(tally)
    for who, n in more:
        counts[who[:TALLY_NAME_MAX]] = counts.get(who[:TALLY_NAME_MAX], 0) + n
    return tuple(sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:TALLY_KEEP])


def _scrape_row(ts: datetime, result: ScrapeResult, status: Status) -> bytes:
    return schema.SCRAPES.format_row(
        [
            ts,
            result.vm,
            status,
            result.duration_ms,
            result.n_bytes,
            result.lines_ok,
            result.lines_rejected,
        ]
    )


def _new_day(q: QubeState, day: str) -> QubeState:
    """``q`` with a fresh share of ``day``."""
    return attrs.evolve(
        q,
        day=day,
        day_bytes=0,
        over_budget=False,
        day_names=frozenset(),
        alert_bytes=0,
        alerts_over=False,
        alert_by=(),
    )


def _another_qube(prev: QubeState, info: QubeInfo | None, boot_id: str) -> bool:
    """Whether the qube polled now is not the one ``prev`` describes.

    Another UUID under the same name (4.3); on 4.2, which lists none, a
    disposable on another boot (disposable names are drawn again and reused).
    """
    if info is None:
        return False
    if info.uuid is not None and prev.uuid is not None:
        return info.uuid != prev.uuid
    return info.klass == DISPVM_CLASS and prev.boot_id not in {None, boot_id}


def _pool_of(info: QubeInfo | None, q: QubeState, day: str) -> str | None:
    if info is not None and info.klass == DISPVM_CLASS:
        return DISPVM_POOL
    return NEW_POOL if q.first_day == day else None


@attrs.define
class _Share:
    """One qube's share of the day, worked out for one poll."""

    rows: dict[str, list[bytes]]
    alert_rows: list[bytes]
    said: list[bytes]
    state: QubeState
    over: bool
    restarted: bool


def _journal_share(
    ts: datetime,
    vm: str,
    fresh: Sequence[AlertRecord],
    prev: QubeState,
    state: QubeState,
    budget: Budget,
) -> tuple[list[bytes], list[bytes], QubeState]:
    """Journal rows to file, notes, and the state: alerts take at most their share.

    Past it they are not filed today (the cursor waits: nothing is lost), and
    metric rows keep the rest of the day's bytes.
    """
    rows = [
        schema.ALERTS.format_row(
            [ts, vm, f"{format_entry_time(a.ts_us)} {a.identifier}: {a.message}"]
        )
        for a in fresh
    ]
    if not rows:
        return [], [], state
    size = sum(len(r) for r in rows)
    by = _tally(prev.alert_by, ((a.identifier, len(r)) for a, r in zip(fresh, rows, strict=True)))
    if prev.alerts_over or prev.alert_bytes + size > budget.alert_bytes_per_day:
        said = (
            []
            if prev.alerts_over
            else [schema.ALERTS.format_row([ts, vm, _alerts_note(vm, budget, by)])]
        )
        return [], said, attrs.evolve(state, cursor=prev.cursor, alerts_over=True, alert_by=by)
    return rows, [], attrs.evolve(state, alert_bytes=prev.alert_bytes + size, alert_by=by)


def build_tick_rows(
    ts: datetime,
    results: Sequence[ScrapeResult],
    qubes: Sequence[QubeInfo] | None,
    previous: Mapping[str, QubeState],
    xen: Sequence[DomainStats] = (),
    notes: Sequence[tuple[str, str]] = (),
    budget: Budget = DEFAULT_BUDGET,
    *,
    listed: Sequence[QubeInfo] = (),
    pools: Mapping[str, PoolState] | None = None,
) -> TickRows:
    """All rows of one tick, in file order, and every polled qube's next state.

    ``notes`` are sysmon's own alerts, (vm, message), filed with the tick.
    Each qube gets its ``budget`` of the UTC day: past its bytes, its metric
    rows and journal alerts stop until midnight (its scrapes row says
    ``over-budget``, an alert row says it once; its cursor waits, so no entry
    is lost); its journal alerts take at most their share of those bytes;
    rows for interface and filesystem names past its names cap are dropped
    (said once a day).  Disposables (by their class in ``listed``, dom0's
    list) share one budget, and so do names first seen today; another qube
    under a known name (another UUID; a disposable's new boot on 4.2) starts
    with a fresh allowance of its own.
    """
    out: dict[str, list[bytes]] = {
        s.file_name: [] for s in schema.DAILY_FILES if s is not schema.ALERTS
    }
    batches: list[AlertBatch] = [
        AlertBatch(vm=vm, rows=(schema.ALERTS.format_row([ts, vm, msg]),), next_state=None)
        for vm, msg in notes
    ]
    states: dict[str, QubeState] = {}
    restarted: list[str] = []
    day = ts.astimezone(UTC).date().isoformat()
    info_of = {q.name: q for q in listed}
    shared = {name: p if p.day == day else PoolState(day=day) for name, p in (pools or {}).items()}
    for result in results:
        prev = previous.get(result.vm)
        if prev is not None and prev.day != day:  # a new UTC day: a fresh share
            prev = _new_day(prev, day)
        if result.snapshot is None:
            out[schema.SCRAPES.file_name].append(_scrape_row(ts, result, result.status))
            continue
        info = info_of.get(result.vm)
        share = _qube_share(ts, result, prev, info, bool(previous), budget, shared)
        if share.restarted:
            restarted.append(result.vm)
        out[schema.SCRAPES.file_name].append(
            _scrape_row(ts, result, Status.OVER_BUDGET if share.over else result.status)
        )
        for name, file_rows in share.rows.items():
            out[name].extend(file_rows)
        if share.alert_rows or share.said:
            batches.append(
                AlertBatch(
                    vm=result.vm, rows=(*share.said, *share.alert_rows), next_state=share.state
                )
            )
        else:
            states[result.vm] = share.state
    out[schema.XEN.file_name].extend(
        schema.XEN.format_row([ts, s.vm, *(getattr(s, c) for c in schema.XEN.names[2:])])
        for s in xen
    )
    if qubes is not None:
        out[schema.QUBES.file_name].extend(
            schema.QUBES.format_row([ts, q.name, q.state]) for q in qubes
        )
    sampled = {r.vm for r in results if r.snapshot is not None}
    forget, kept = _forget(ts, previous, sampled, listed)
    if not previous:
        # A fresh start: every qube dom0 lists now, running or not, is one
        # seen before -- only qubes created from here on are new.
        kept |= {
            q.name: QubeState(day=day, uuid=q.uuid)
            for q in listed
            if q.klass != DISPVM_CLASS and q.name != "dom0"
        }
    return TickRows(
        forget=forget,
        rows={name: tuple(rows) for name, rows in out.items()},
        alerts=tuple(batches),
        states={**kept, **states},
        restarted=tuple(restarted),
        pools={name: p for name, p in shared.items() if p.day_bytes or p.over},
    )


def _qube_share(
    ts: datetime,
    result: ScrapeResult,
    prev: QubeState | None,
    info: QubeInfo | None,
    known_before: bool,
    budget: Budget,
    shared: dict[str, PoolState],
) -> _Share:
    """One qube's rows of this poll, within its share and its pool's."""
    vm, day = result.vm, ts.astimezone(UTC).date().isoformat()
    snap = result.snapshot
    assert snap is not None  # noqa: S101 -- the caller checked
    assert snap.sys is not None  # noqa: S101 -- the parser guarantees it
    boot_id = snap.sys.boot_id or UNKNOWN_BOOT
    first_day = day if known_before else ""
    if prev is not None and _another_qube(prev, info, boot_id):
        # Its allowances went with it; a re-created named qube is new today.
        first_day = prev.first_day if info and info.klass == DISPVM_CLASS else day
        prev = attrs.evolve(_new_day(prev, day), first_day=first_day)
    base = prev or QubeState(day=day, first_day=first_day)
    snap, names, dropped = _admit_names(snap, base.day_names, budget.names_per_day)
    rows, fresh, state, was_restarted = _snapshot_rows(ts, vm, snap, prev, budget)
    state = attrs.evolve(
        state,
        uuid=info.uuid if info is not None and info.uuid is not None else base.uuid,
        first_day=base.first_day,
        day=day,
    )
    said: list[bytes] = []
    if (
        dropped
        and len(names) >= budget.names_per_day
        and len(base.day_names) < budget.names_per_day
    ):
        said.append(schema.ALERTS.format_row([ts, vm, _names_note(vm, budget)]))
    alert_rows = []
    if was_restarted:
        alert_rows.append(schema.ALERTS.format_row([ts, vm, f"sysmon: {vm} restarted"]))
    journal, journal_said, state = _journal_share(ts, vm, fresh, base, state, budget)
    said += journal_said
    alert_rows += journal
    size = sum(len(r) for file_rows in rows.values() for r in file_rows)
    size += sum(len(r) for r in alert_rows)
    pool = _pool_of(info, base, day)
    pool_state = shared.get(pool, PoolState(day=day)) if pool else None
    limit = POOL_LIMITS[pool](budget) if pool else 0
    pool_over = pool_state is not None and (pool_state.over or pool_state.day_bytes + size > limit)
    over = base.over_budget or base.day_bytes + size > budget.bytes_per_day or pool_over
    if over:
        # Nothing of it today: the sample still counts for the next CPU
        # share, but the cursor waits for tomorrow.
        state = attrs.evolve(
            state,
            cursor=base.cursor,
            day_bytes=base.day_bytes,
            over_budget=True,
            day_names=names,
            alert_bytes=base.alert_bytes,
        )
        note: str | None = _budget_note(vm, budget)
        if pool is not None and pool_state is not None and pool_over:
            note = _pool_note(vm, pool, limit, pool_state)
            if not base.over_budget:  # each member told once, the first POOL_TOLD_MAX by name
                if pool_state.told == POOL_TOLD_MAX:
                    note = f"sysmon: more qubes are over the shared budget of {POOL_WORDS[pool]}"
                    note += ": they are not named again today (scrapes.csv says over-budget)"
                elif pool_state.told > POOL_TOLD_MAX:
                    note = None
                pool_state = attrs.evolve(pool_state, told=pool_state.told + 1)
            shared[pool] = attrs.evolve(pool_state, over=True)
        if not base.over_budget and note is not None:
            said.append(schema.ALERTS.format_row([ts, vm, note]))
        return _Share({}, [], said, state, over=True, restarted=was_restarted)
    if pool is not None and pool_state is not None:
        shared[pool] = attrs.evolve(
            pool_state,
            day_bytes=pool_state.day_bytes + size,
            by=_tally(pool_state.by, [(vm, size)]),
        )
    state = attrs.evolve(state, day_bytes=base.day_bytes + size, day_names=names)
    return _Share(rows, alert_rows, said, state, over=False, restarted=was_restarted)


def _forget(
    ts: datetime,
    previous: Mapping[str, QubeState],
    sampled: set[str],
    listed: Sequence[QubeInfo],
) -> tuple[tuple[str, ...], dict[str, QubeState]]:
    """Qubes unsampled for days: dropped, or kept as names seen before.

    One still listed and not a disposable is kept, without its cursor, CPU
    sample and names: a qube used once a week is not new again.
    """
    cutoff = (ts.astimezone(UTC).date() - timedelta(days=FORGET_AFTER_DAYS)).isoformat()
    still = {q.name for q in listed if q.klass != DISPVM_CLASS}
    forget: list[str] = []
    kept: dict[str, QubeState] = {}
    for vm, q in sorted(previous.items()):
        if vm in sampled or not q.day or q.day >= cutoff:
            continue
        if vm not in still:
            forget.append(vm)
            continue
        trimmed = QubeState(day=q.day, uuid=q.uuid, first_day="")
        if q != trimmed:
            kept[vm] = trimmed
    return tuple(forget), kept
