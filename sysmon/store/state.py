"""The collector's small state file: last raw sample and alert cursor per qube, rules, views.

Written atomically (temporary file, fsync, rename, fsync of the folder), so a
crash leaves the old state or the new one, never a mix.  Read and written
only under the out_dir lock (:func:`sysmon.store.daily.locked`).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import structlog

from sysmon import events
from sysmon.records import (
    MAX_VIEW_QUBES,
    MAX_VIEW_VIFS,
    AlertCursor,
    PendingTick,
    PoolState,
    QubeState,
    QubeView,
    RuleState,
    State,
    ViewsState,
)
from sysmon.schema import DAILY_FILES
from sysmon.store.fs import replace_atomically

_T = TypeVar("_T")

STATE_NAME = "sysmon-state.json"
STATE_VERSION = 1
DAILY_NAMES = frozenset(s.file_name for s in DAILY_FILES)


def _cursor_to_json(cursor: AlertCursor | None) -> Any:
    if cursor is None:
        return None
    return {
        "boot_id": cursor.boot_id,
        "ts_us": cursor.ts_us,
        "seen": sorted(cursor.seen),
        "filed": cursor.filed,
    }


def _cursor_from_json(data: Any) -> AlertCursor | None:
    if data is None:
        return None
    return AlertCursor(
        boot_id=str(data["boot_id"]),
        ts_us=int(data["ts_us"]),
        seen=frozenset(map(str, data["seen"])),
        **({"filed": int(data["filed"])} if "filed" in data else {}),
    )


def _qube_to_json(q: QubeState) -> Any:
    return {
        "boot_id": q.boot_id,
        "cpu_ticks": list(q.cpu_ticks) if q.cpu_ticks is not None else None,
        "cursor": _cursor_to_json(q.cursor),
        "day": q.day,
        "day_bytes": q.day_bytes,
        "over_budget": q.over_budget,
        "day_names": sorted(q.day_names),
        "uuid": q.uuid,
        "first_day": q.first_day,
        "alert_bytes": q.alert_bytes,
        "alerts_over": q.alerts_over,
        "alert_by": [list(x) for x in q.alert_by],
    }


def _tally_from_json(data: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(who), int(n)) for who, n in data)


def _pool_to_json(p: PoolState) -> Any:
    return {
        "day": p.day,
        "day_bytes": p.day_bytes,
        "over": p.over,
        "by": [list(x) for x in p.by],
        "told": p.told,
    }


def _pool_from_json(p: Any) -> PoolState:
    return PoolState(
        day=str(p["day"]),
        day_bytes=int(p["day_bytes"]),
        over=bool(p["over"]),
        by=_tally_from_json(p.get("by", ())),
        told=int(p.get("told", 0)),
    )


def _qube_from_json(q: Any) -> QubeState:
    boot_id = q["boot_id"]
    return QubeState(
        boot_id=str(boot_id) if boot_id is not None else None,
        cpu_ticks=tuple(int(t) for t in q["cpu_ticks"]) if q["cpu_ticks"] is not None else None,
        cursor=_cursor_from_json(q["cursor"]),
        day=str(q.get("day", "")),
        day_bytes=int(q.get("day_bytes", 0)),
        over_budget=bool(q.get("over_budget", False)),
        day_names=frozenset(map(str, q.get("day_names", ()))),
        uuid=str(q["uuid"]) if q.get("uuid") is not None else None,
        first_day=str(q.get("first_day", "")),
        alert_bytes=int(q.get("alert_bytes", 0)),
        alerts_over=bool(q.get("alerts_over", False)),
        alert_by=_tally_from_json(q.get("alert_by", ())),
    )


def _views_to_json(views: ViewsState) -> Any:
    return {
        "qubes": {
            vm: {
                "cpu_ticks": list(v.cpu_ticks) if v.cpu_ticks is not None else None,
                "boot_id": v.boot_id,
                "net_bytes": v.net_bytes,
                "sampled": v.sampled,
                "disagree_since": v.disagree_since,
                "last_disagree": v.last_disagree,
                "agree_since": v.agree_since,
                "alerted": v.alerted,
            }
            for vm, v in sorted(views.qubes.items())
        },
        "vifs": [[*key, n, ts] for key, (n, ts) in sorted(views.vifs.items())],
        "served_by": dict(sorted(views.served_by.items())),
    }


#: A name or boot id in the views' state: a qube's name is at most 31
#: characters, a boot id 64, a vif's name 11.
_MAX_TEXT = 64
#: A counter's bits: a sum of a few 64-bit counters fits.
_MAX_BITS = 80


def _text(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise ValueError("views: a name that is not a short string")
    return value


def _count(value: Any) -> int:
    if type(value) is not int or value < 0 or value.bit_length() > _MAX_BITS:
        raise ValueError("views: a count that is not a small non-negative integer")
    return value


def _moment(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError("views: a time that is not a finite number")
    return float(value)


def _optional(read: Callable[[Any], _T], value: Any) -> _T | None:
    return None if value is None else read(value)


def _views_from_json(data: Any) -> ViewsState:
    """The views' state, each field checked.

    The file is ours, but a damaged one must be a clear reset (load_state),
    never a crash later, in a tick.
    """
    qubes_data, vifs_data, served_data = data["qubes"], data["vifs"], data.get("served_by", {})
    if max(len(qubes_data), len(served_data)) > MAX_VIEW_QUBES or len(vifs_data) > MAX_VIEW_VIFS:
        raise ValueError("views: more qubes or vifs than sysmon keeps")
    qubes = {}
    for vm, v in qubes_data.items():
        ticks = v["cpu_ticks"]
        if ticks is not None and (not isinstance(ticks, list) or len(ticks) > 16):
            raise ValueError("views: cpu_ticks is not a short list")
        if type(v["alerted"]) is not bool:
            raise ValueError("views: alerted is not true or false")
        qubes[_text(vm)] = QubeView(
            cpu_ticks=tuple(map(_count, ticks)) if ticks is not None else None,
            boot_id=_optional(_text, v["boot_id"]),
            net_bytes=_optional(_count, v["net_bytes"]),
            sampled=_optional(_moment, v["sampled"]),
            disagree_since=_optional(_moment, v["disagree_since"]),
            last_disagree=_optional(_moment, v["last_disagree"]),
            agree_since=_optional(_moment, v["agree_since"]),
            alerted=v["alerted"],
        )
    vifs = {}
    for netvm, vif, qube, n, ts in vifs_data:
        vifs[(_text(netvm), _text(vif), _text(qube))] = (_count(n), _moment(ts))
    served_by = {_text(qube): _text(netvm) for qube, netvm in served_data.items()}
    return ViewsState(qubes, vifs, served_by)


def _rules_from_json(data: Any) -> dict[str, RuleState]:
    return {
        str(key): RuleState(
            since=float(v[0]),
            polls=int(v[1]),
            firing=bool(v[2]),
            seen=float(v[3] if len(v) > 3 else v[0]),
        )
        for key, v in data.items()
    }


def to_json(state: State) -> dict[str, Any]:
    """The state as JSON-ready data."""
    pending = None
    if state.pending is not None:
        pending = {"folder": state.pending.folder, "sizes": [list(x) for x in state.pending.sizes]}
    return {
        "version": STATE_VERSION,
        "last_ts": state.last_ts,
        "qubes": {vm: _qube_to_json(q) for vm, q in sorted(state.qubes.items())},
        "pending_tick": pending,
        "rules": {
            key: [r.since, r.polls, r.firing, r.seen] for key, r in sorted(state.rules.items())
        },
        "pools": {name: _pool_to_json(p) for name, p in sorted(state.pools.items())},
        "views": _views_to_json(state.views),
    }


#: What a section of another version's (or a damaged) file raises when read: a
#: number no int or float holds (Infinity, 10**400) OverflowError, a file nested
#: past the JSON reader's depth RecursionError.
_DAMAGE = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
    RecursionError,
)


def _section(name: str, read: Callable[[], _T], fresh: _T) -> _T:
    """A section read, or started afresh alone (logged) if it is not one sysmon wrote.

    A qube's alert cursor lost with a neighbouring section would file its
    journal's alerts twice, and the pending tick lost would leave a cut row.
    """
    try:
        return read()
    except _DAMAGE as exc:
        structlog.get_logger().error(events.STATE_SECTION_RESET, section=name, error=str(exc))
        return fresh


def from_json(data: Any) -> State:
    """Build a State from :func:`to_json`'s data.

    Raises on any mismatch in what the rows depend on (the version, the last
    tick, the pending tick, the qubes' table); a damaged rules, pools or views
    section, or one qube's entry, starts afresh alone.
    """
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"state version {data.get('version')!r}")
    qubes: dict[str, QubeState] = {}
    for vm, q in data["qubes"].items():
        read = _section(f"qubes:{vm}", functools.partial(_qube_from_json, q), None)
        if read is not None:
            qubes[str(vm)] = read
    pending = None
    if data.get("pending_tick") is not None:
        p = data["pending_tick"]
        folder = str(p["folder"])
        date.fromisoformat(folder)  # a day folder's name, nothing else
        sizes = tuple((str(name), int(size)) for name, size in p["sizes"])
        if not {name for name, _ in sizes} <= DAILY_NAMES:
            raise ValueError("pending tick names a file that is not a daily file")
        pending = PendingTick(folder=folder, sizes=sizes)
    last_ts = int(data["last_ts"])
    rules: dict[str, RuleState] = _section(
        "rules", functools.partial(_rules_from_json, data.get("rules", {})), {}
    )
    pools: dict[str, PoolState] = _section(
        "pools",
        lambda: {str(name): _pool_from_json(p) for name, p in data.get("pools", {}).items()},
        {},
    )
    views = (
        _section("views", functools.partial(_views_from_json, data["views"]), ViewsState())
        if "views" in data
        else ViewsState()
    )
    return State(
        qubes=qubes,
        last_ts=last_ts,
        pending=pending,
        rules=rules,
        pools=pools,
        views=views,
    )


def load_state(out_dir: Path) -> State:
    """Read the state; a missing file is a fresh start, a damaged one is set aside."""
    path = out_dir / STATE_NAME
    try:
        data = json.loads(path.read_bytes())
        return from_json(data)
    except FileNotFoundError:
        return State()
    except _DAMAGE as exc:
        aside = path.with_name(f"{STATE_NAME}.damaged-{int(time.time())}")
        path.replace(aside)
        structlog.get_logger().error(
            events.STATE_DAMAGED, file=str(path), moved_to=str(aside), error=str(exc)
        )
        return State()


def save_state(out_dir: Path, state: State, *, sync: bool = True) -> None:
    """Replace the state file atomically (and durably, with ``sync``)."""
    data = json.dumps(to_json(state), separators=(",", ":")).encode()
    replace_atomically(out_dir / STATE_NAME, data, sync=sync)
