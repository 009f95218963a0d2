"""From one tick's poll results to rows and each qube's next state.  Pure.

A row is values keyed by column (:class:`~sysmon.records.Row`), encoded once,
where the daily budget needs its size; the store appends those lines.

The ``vm`` of every row is the name the collector called, never anything a
payload says.  Alerts are filed exactly once: an entry is new when it is
newer than the qube's cursor, or at the cursor's microsecond and not yet
seen there; a qube on another boot starts afresh.
"""

from __future__ import annotations

import hashlib
import math
import operator
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
    Row,
    ScrapeResult,
    Status,
    TickRows,
)
from sysmon.transform.rates import CpuPercent, cpu_percent, ticks_of

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
#: Qubes dom0 no longer lists whose state is kept (for FORGET_AFTER_DAYS):
#: past them the oldest go at once, or a disposable a minute kept ~3,000.
MAX_GONE = 256


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


#: Each daily file's cells from a row's values, in column order, looked up
#: in C (a tick encodes thousands of rows; the budget needs each one's size).
_CELLS = {d.file_name: operator.itemgetter(*d.names) for d in (*schema.DAILY_FILES, schema.VIEWS)}


def encode_row(daily: schema.DailyFile, values: Mapping[str, object]) -> Row:
    """A row of ``daily`` from its values, with its line encoded (once).

    As :meth:`~sysmon.schema.DailyFile.encode`: a column not in ``values``
    is empty, a key that is no column a ValueError.
    """
    try:
        cells = _CELLS[daily.file_name](values)
    except KeyError:  # a column left out: the schema's own, slower way
        return Row(daily.file_name, values, daily.encode(values))
    if len(values) != len(cells):  # a key that is no column: the schema names it
        return Row(daily.file_name, values, daily.encode(values))
    return Row(daily.file_name, values, daily.format_row(cells))


def alert_row(ts: datetime, vm: str, msg: str) -> Row:
    """An ``alerts.csv`` row."""
    return encode_row(schema.ALERTS, {"ts": ts, "vm": vm, "msg": msg})


def _snapshot_values(
    ts: datetime, vm: str, snap: Snapshot, cpu: CpuPercent | None
) -> list[tuple[schema.DailyFile, dict[str, object]]]:
    """A snapshot's rows as values keyed by column, in file order."""
    sys = snap.sys
    assert sys is not None  # noqa: S101 -- the parser guarantees it
    out: list[tuple[schema.DailyFile, dict[str, object]]] = [
        (
            schema.SYSTEM,
            {
                "ts": ts,
                "vm": vm,
                "cpu_user": cpu.user if cpu else None,
                "cpu_system": cpu.system if cpu else None,
                "cpu_idle": cpu.idle if cpu else None,
                "load1": sys.load1,
                "load5": sys.load5,
                "load15": sys.load15,
                "mem_total_kb": sys.mem_total_kb,
                "mem_used_kb": _minus(sys.mem_total_kb, sys.mem_avail_kb),
                "mem_avail_kb": sys.mem_avail_kb,
                "swap_total_kb": sys.swap_total_kb,
                "swap_used_kb": _minus(sys.swap_total_kb, sys.swap_free_kb),
                "procs_running": sys.procs_running,
                "procs_blocked": sys.procs_blocked,
            },
        )
    ]
    out += [
        (
            schema.NETWORK,
            {
                "ts": ts,
                "vm": vm,
                "if": n.interface,
                "rx_bytes": n.rx_bytes,
                "rx_errs": n.rx_errs,
                "rx_drop": n.rx_drop,
                "tx_bytes": n.tx_bytes,
                "tx_errs": n.tx_errs,
                "tx_drop": n.tx_drop,
            },
        )
        for n in snap.net
    ]
    if snap.conn is not None:
        conn = {"tcp_established": snap.conn.tcp_established, "udp_sockets": snap.conn.udp_sockets}
        out.append((schema.CONNECTIONS, {"ts": ts, "vm": vm, **conn}))
    out += [
        (
            schema.DISK,
            {
                "ts": ts,
                "vm": vm,
                "fs": d.fs,
                "mount": d.mount,
                "size_kb": d.size_kb,
                "used_kb": d.used_kb,
                "avail_kb": d.avail_kb,
                "pct_used": _pct_used(d.used_kb, d.avail_kb),
            },
        )
        for d in snap.disk
    ]
    return out


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


def _scrape_row(ts: datetime, result: ScrapeResult, status: Status) -> Row:
    values = {
        "ts": ts,
        "vm": result.vm,
        "status": status,
        "duration_ms": result.duration_ms,
        "bytes": result.n_bytes,
        "lines_ok": result.lines_ok,
        "lines_rejected": result.lines_rejected,
    }
    return encode_row(schema.SCRAPES, values)


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


@attrs.frozen
class _Polled:
    """One qube's part of a tick: its scrapes row, what it may file today, its next state.

    ``alerts`` are what is said of it (sysmon's notes on its names and
    budgets first, then its restart and its journal); ``state`` is None for
    a failed poll (its state stands);
    ``pool`` is its shared budget as this poll left it, if it has one.
    """

    scrape: Row
    rows: tuple[Row, ...] = ()
    alerts: tuple[Row, ...] = ()
    state: QubeState | None = None
    restarted: bool = False
    pool: tuple[str, PoolState] | None = None


def _journal_share(
    ts: datetime,
    vm: str,
    fresh: Sequence[AlertRecord],
    prev: QubeState,
    state: QubeState,
    budget: Budget,
) -> tuple[list[Row], list[Row], QubeState]:
    """Journal rows to file, notes, and the state: alerts take at most their share.

    Past it they are not filed today (the cursor waits: nothing is lost), and
    metric rows keep the rest of the day's bytes.
    """
    rows = [
        alert_row(ts, vm, f"{format_entry_time(a.ts_us)} {a.identifier}: {a.message}")
        for a in fresh
    ]
    if not rows:
        return [], [], state
    size = sum(len(r.line) for r in rows)
    by = _tally(
        prev.alert_by, ((a.identifier, len(r.line)) for a, r in zip(fresh, rows, strict=True))
    )
    if prev.alerts_over or prev.alert_bytes + size > budget.alert_bytes_per_day:
        said = [] if prev.alerts_over else [alert_row(ts, vm, _alerts_note(vm, budget, by))]
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
    day = ts.astimezone(UTC).date().isoformat()
    info_of = {q.name: q for q in listed}
    shared = {name: p if p.day == day else PoolState(day=day) for name, p in (pools or {}).items()}
    polled: list[tuple[str, _Polled]] = []
    for result in results:  # one qube after another: the shared budgets carry over
        step = _poll(ts, result, previous, info_of.get(result.vm), budget, shared)
        if step.pool is not None:
            shared[step.pool[0]] = step.pool[1]
        polled.append((result.vm, step))
    rows: dict[str, list[Row]] = {
        d.file_name: [] for d in schema.DAILY_FILES if d is not schema.ALERTS
    }
    for _vm, step in polled:
        rows[schema.SCRAPES.file_name].append(step.scrape)
        for row in step.rows:
            rows[row.file].append(row)
    rows[schema.XEN.file_name] += [_xen_row(ts, s) for s in xen]
    if qubes is not None:
        rows[schema.QUBES.file_name] += [
            encode_row(schema.QUBES, {"ts": ts, "vm": q.name, "state": q.state}) for q in qubes
        ]
    forget, kept = _forget(ts, previous, {vm for vm, p in polled if p.state is not None}, listed)
    if not previous:
        # A fresh start: every qube dom0 lists now, running or not, is one
        # seen before -- only qubes created from here on are new.
        kept |= {
            q.name: QubeState(day=day, uuid=q.uuid)
            for q in listed
            if q.klass != DISPVM_CLASS and q.name != "dom0"
        }
    said = [AlertBatch(vm, (alert_row(ts, vm, msg),), None) for vm, msg in notes]
    return TickRows(
        forget=forget,
        rows={name: tuple(file_rows) for name, file_rows in rows.items()},
        alerts=(*said, *(AlertBatch(vm, p.alerts, p.state) for vm, p in polled if p.alerts)),
        states={
            **kept,
            **{vm: p.state for vm, p in polled if p.state is not None and not p.alerts},
        },
        restarted=tuple(vm for vm, p in polled if p.restarted),
        pools={name: p for name, p in shared.items() if p.day_bytes or p.over},
    )


def spend_alerts(
    built: TickRows, batches: Sequence[AlertBatch], listed: Sequence[QubeInfo] = ()
) -> TickRows:
    """``built`` with the bytes of ``batches`` spent from each qube's day and its pool's.

    Its rules' alerts are sysmon's words, but of the qube's making: a qube
    flapping 64 mounts across a rule each poll wrote twice its budget again
    in them.  They are kept (the row is the record), and spent after the
    fact: past the budget, the qube's next poll is over it.
    """
    spent: dict[str, int] = {}
    for batch in batches:
        spent[batch.vm] = spent.get(batch.vm, 0) + sum(len(r.line) for r in batch.rows)
    states, alerts, pools = dict(built.states), list(built.alerts), dict(built.pools)
    info_of = {q.name: q for q in listed}
    for vm, size in spent.items():
        # A qube polled now: its state is in its own alert batch, else in states.
        at = next((i for i, b in enumerate(alerts) if b.vm == vm and b.next_state), None)
        q = alerts[at].next_state if at is not None else states.get(vm)
        if q is None or not q.day:
            continue
        after = attrs.evolve(q, day_bytes=q.day_bytes + size)
        if at is not None:
            alerts[at] = attrs.evolve(alerts[at], next_state=after)
        else:
            states[vm] = after
        pool = _pool_of(info_of.get(vm), q, q.day)
        if pool is not None:
            p = pools.get(pool)
            p = p if p is not None and p.day == q.day else PoolState(day=q.day)
            pools[pool] = attrs.evolve(
                p, day_bytes=p.day_bytes + size, by=_tally(p.by, [(vm, size)])
            )
    return attrs.evolve(built, states=states, alerts=tuple(alerts), pools=pools)


def _xen_row(ts: datetime, s: DomainStats) -> Row:
    # Every column Xen's stats may carry: 4.2/4.3's, and 4.4's where sent.
    values = {"ts": ts, "vm": s.vm, **{c: getattr(s, c) for c in schema.XEN.names[2:]}}
    return encode_row(schema.XEN, values)


def _poll(
    ts: datetime,
    result: ScrapeResult,
    previous: Mapping[str, QubeState],
    info: QubeInfo | None,
    budget: Budget,
    shared: Mapping[str, PoolState],
) -> _Polled:
    """One qube's part of the tick: its rows, within its share and its pool's."""
    vm, day = result.vm, ts.astimezone(UTC).date().isoformat()
    snap = result.snapshot
    if snap is None:
        return _Polled(_scrape_row(ts, result, result.status))
    prev = previous.get(vm)
    if prev is not None and prev.day != day:  # a new UTC day: a fresh share
        prev = _new_day(prev, day)
    sys = snap.sys
    assert sys is not None  # noqa: S101 -- the parser guarantees it
    boot_id = sys.boot_id or UNKNOWN_BOOT
    first_day = day if previous else ""
    if prev is not None and _another_qube(prev, info, boot_id):
        # Its allowances went with it; a re-created named qube is new today.
        first_day = prev.first_day if info and info.klass == DISPVM_CLASS else day
        prev = attrs.evolve(_new_day(prev, day), first_day=first_day)
    base = prev or QubeState(day=day, first_day=first_day)
    snap, names, dropped = _admit_names(snap, base.day_names, budget.names_per_day)
    restarted = prev is not None and prev.boot_id is not None and prev.boot_id != boot_id
    ticks = ticks_of(sys)
    same_boot = prev is not None and prev.boot_id == boot_id
    cpu = cpu_percent(prev.cpu_ticks if same_boot and prev else None, ticks)
    # The budget needs each row's size: each is encoded here, once.
    rows = [encode_row(daily, values) for daily, values in _snapshot_values(ts, vm, snap, cpu)]
    fresh, cursor = new_alerts(
        snap.alerts, base.cursor if prev else None, boot_id, budget.cursor_seen
    )
    state = QubeState(
        boot_id=boot_id,
        cpu_ticks=ticks,
        cursor=cursor,
        uuid=info.uuid if info is not None and info.uuid is not None else base.uuid,
        first_day=base.first_day,
        day=day,
    )
    said: list[Row] = []
    if dropped and len(names) >= budget.names_per_day > len(base.day_names):
        said.append(alert_row(ts, vm, _names_note(vm, budget)))
    alerts = [alert_row(ts, vm, f"sysmon: {vm} restarted")] if restarted else []
    journal, journal_said, state = _journal_share(ts, vm, fresh, base, state, budget)
    said += journal_said
    alerts += journal
    size = sum(len(r.line) for r in rows) + sum(len(r.line) for r in alerts)
    pool = _pool_of(info, base, day)
    verdict = _spend(ts, vm, base, size, budget, pool, shared)
    if verdict.over:
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
        said += verdict.said
        return _Polled(
            _scrape_row(ts, result, Status.OVER_BUDGET),
            alerts=tuple(said),
            state=state,
            restarted=restarted,
            pool=verdict.pool,
        )
    state = attrs.evolve(state, day_bytes=base.day_bytes + size, day_names=names)
    return _Polled(
        _scrape_row(ts, result, result.status),
        rows=tuple(rows),
        alerts=(*said, *alerts),
        state=state,
        restarted=restarted,
        pool=verdict.pool,
    )


@attrs.frozen
class _Verdict:
    """Whether a qube's rows of one poll fit its share and its pool's."""

    over: bool
    said: tuple[Row, ...] = ()
    pool: tuple[str, PoolState] | None = None


def _spend(
    ts: datetime,
    vm: str,
    base: QubeState,
    size: int,
    budget: Budget,
    pool: str | None,
    shared: Mapping[str, PoolState],
) -> _Verdict:
    """``size`` bytes of ``vm`` against its day and its pool's: over, what is said, the pool."""
    day = base.day
    pool_state = shared.get(pool, PoolState(day=day)) if pool else None
    limit = POOL_LIMITS[pool](budget) if pool else 0
    pool_over = pool_state is not None and (pool_state.over or pool_state.day_bytes + size > limit)
    if not (base.over_budget or base.day_bytes + size > budget.bytes_per_day or pool_over):
        if pool is None or pool_state is None:
            return _Verdict(over=False)
        spent = attrs.evolve(
            pool_state,
            day_bytes=pool_state.day_bytes + size,
            by=_tally(pool_state.by, [(vm, size)]),
        )
        return _Verdict(over=False, pool=(pool, spent))
    note: str | None = _budget_note(vm, budget)
    after: tuple[str, PoolState] | None = None
    if pool is not None and pool_state is not None and pool_over:
        note = _pool_note(vm, pool, limit, pool_state)
        if not base.over_budget:  # each member told once, the first POOL_TOLD_MAX by name
            if pool_state.told == POOL_TOLD_MAX:
                note = f"sysmon: more qubes are over the shared budget of {POOL_WORDS[pool]}"
                note += ": they are not named again today (scrapes.csv says over-budget)"
            elif pool_state.told > POOL_TOLD_MAX:
                note = None
            pool_state = attrs.evolve(pool_state, told=pool_state.told + 1)
        after = (pool, attrs.evolve(pool_state, over=True))
    said = (alert_row(ts, vm, note),) if not base.over_budget and note is not None else ()
    return _Verdict(over=True, said=said, pool=after)


def _forget(
    ts: datetime,
    previous: Mapping[str, QubeState],
    sampled: set[str],
    listed: Sequence[QubeInfo],
) -> tuple[tuple[str, ...], dict[str, QubeState]]:
    """Qubes unsampled for days: dropped, or kept as names seen before.

    One still listed and not a disposable is kept, without its cursor, CPU
    sample and names: a qube used once a week is not new again.  Of the
    qubes dom0 no longer lists, the :data:`MAX_GONE` last seen are kept.
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
    if listed:  # dom0's list known: who is gone is known
        names = {q.name for q in listed} | sampled | set(forget)
        gone = sorted((q.day, vm) for vm, q in previous.items() if vm not in names)
        forget += [vm for _, vm in gone[: max(0, len(gone) - MAX_GONE)]]
    return tuple(sorted(forget)), kept
