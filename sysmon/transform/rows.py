"""From one tick's poll results to CSV rows and each qube's next state.  Pure.

The ``vm`` of every row is the name the collector called, never anything a
payload says.  Alerts are filed exactly once: an entry is new when it is
newer than the qube's cursor, or at the cursor's microsecond and not yet
seen there; a qube on another boot starts afresh.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
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
    QubeState,
    ScrapeResult,
    Status,
    TickRows,
)
from sysmon.transform.rates import cpu_percent, ticks_of

UNKNOWN_BOOT = "unknown"
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


def build_tick_rows(
    ts: datetime,
    results: Sequence[ScrapeResult],
    qubes: Sequence[QubeInfo] | None,
    previous: Mapping[str, QubeState],
    xen: Sequence[DomainStats] = (),
    notes: Sequence[tuple[str, str]] = (),
    budget: Budget = DEFAULT_BUDGET,
) -> TickRows:
    """All rows of one tick, in file order, and every polled qube's next state.

    ``notes`` are sysmon's own alerts, (vm, message), filed with the tick.
    Each qube gets its ``budget`` of the UTC day: past its bytes, its metric
    rows and journal alerts stop until midnight (its scrapes row says
    ``over-budget``, an alert row says it once; its cursor waits, so no entry
    is lost); rows for interface and filesystem names past its names cap are
    dropped (said once a day).
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
    for result in results:
        prev = previous.get(result.vm)
        if prev is not None and prev.day != day:  # a new UTC day: a fresh share
            prev = attrs.evolve(
                prev, day=day, day_bytes=0, over_budget=False, day_names=frozenset()
            )
        if result.snapshot is None:
            out[schema.SCRAPES.file_name].append(_scrape_row(ts, result, result.status))
            continue
        names = prev.day_names if prev else frozenset()
        snap, names, dropped = _admit_names(result.snapshot, names, budget.names_per_day)
        rows, fresh, state, was_restarted = _snapshot_rows(ts, result.vm, snap, prev, budget)
        said: list[bytes] = []
        if (
            dropped
            and len(names) >= budget.names_per_day
            and not (prev and len(prev.day_names) >= budget.names_per_day)
        ):
            said.append(schema.ALERTS.format_row([ts, result.vm, _names_note(result.vm, budget)]))
        alert_rows = []
        if was_restarted:
            restarted.append(result.vm)
            alert_rows.append(
                schema.ALERTS.format_row([ts, result.vm, f"sysmon: {result.vm} restarted"])
            )
        alert_rows.extend(
            schema.ALERTS.format_row(
                [ts, result.vm, f"{format_entry_time(a.ts_us)} {a.identifier}: {a.message}"]
            )
            for a in fresh
        )
        used = prev.day_bytes if prev else 0
        size = sum(len(r) for file_rows in rows.values() for r in file_rows)
        size += sum(len(r) for r in alert_rows)
        over = (prev is not None and prev.over_budget) or used + size > budget.bytes_per_day
        status = Status.OVER_BUDGET if over else result.status
        out[schema.SCRAPES.file_name].append(_scrape_row(ts, result, status))
        if over:
            # Nothing of it today: the sample still counts for the next CPU
            # share, but the cursor waits for tomorrow.
            state = attrs.evolve(
                state,
                cursor=prev.cursor if prev else None,
                day=day,
                day_bytes=used,
                over_budget=True,
                day_names=names,
            )
            if not (prev and prev.over_budget):
                note = _budget_note(result.vm, budget)
                said.append(schema.ALERTS.format_row([ts, result.vm, note]))
            alert_rows = []
        else:
            for name, file_rows in rows.items():
                out[name].extend(file_rows)
            state = attrs.evolve(state, day=day, day_bytes=used + size, day_names=names)
        if alert_rows or said:
            batches.append(AlertBatch(vm=result.vm, rows=(*said, *alert_rows), next_state=state))
        else:
            states[result.vm] = state
    out[schema.XEN.file_name].extend(
        schema.XEN.format_row([ts, s.vm, s.cpu_usage, s.cpu_usage_raw, s.cpu_time_ms, s.memory_kb])
        for s in xen
    )
    if qubes is not None:
        out[schema.QUBES.file_name].extend(
            schema.QUBES.format_row([ts, q.name, q.state]) for q in qubes
        )
    cutoff = (ts.astimezone(UTC).date() - timedelta(days=FORGET_AFTER_DAYS)).isoformat()
    forget = tuple(sorted(vm for vm, q in previous.items() if q.day and q.day < cutoff))
    return TickRows(
        forget=forget,
        rows={name: tuple(rows) for name, rows in out.items()},
        alerts=tuple(batches),
        states=states,
        restarted=tuple(restarted),
    )
