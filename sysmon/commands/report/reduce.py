"""A day's daily files reduced to the charts' points, and the days joined in order.

Each file is read as columns by :func:`.frames.read_frame` (the one decoder);
what is kept and in which unit follows the schema (:mod:`sysmon.schema`).
"""

from __future__ import annotations

import itertools
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sysmon import schema
from sysmon.commands.report.frames import LONGEST, read_frame, text_names
from sysmon.commands.report.read import (
    FIRST_T,
    LAST_T,
    MAX_CELL,
    MAX_SERIES,
    NUMBERS,
    Data,
    ReportError,
    Series,
    _Part,
)
from sysmon.records import Status
from sysmon.store.days import day_members

#: What a damaged archive (or an unreadable file) raises while it is read.
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, OSError)
_BY_NAME = {daily.file_name: daily for daily in NUMBERS}


def to_unit(daily: schema.DailyFile, name: str, values: Any, unit: str) -> Any:
    """A value column in ``unit`` (``MiB``, ``KiB``) from the unit the schema stores."""
    base, factor = daily.column(name).base_unit
    if base != "bytes":
        raise ValueError(f"{name} is in {base}, not bytes")
    return values * (factor / {"KiB": 1024, "MiB": 2**20}[unit])


#: A day folder is read in two shares of about equal work (network.csv is
#: about half of a day's), so that both cores stay busy to the week's end: a
#: week's 7 days on 2 cores were 4 on one core and 3 on the other.  An
#: archive is read whole (its gzip stream is read once, from its start).
SHARES = (frozenset({schema.NETWORK.file_name}), frozenset(_BY_NAME) - {schema.NETWORK.file_name})


def shares(units: list[Path]) -> list[tuple[Path, frozenset[str] | None]]:
    """The pieces of work :func:`read_share` takes, in the order the days are joined."""
    return [(unit, names) for unit in units for names in (SHARES if unit.is_dir() else (None,))]


def read_share(
    share: tuple[Path, frozenset[str] | None], vms: set[str] | None, start: float, end: float
) -> _Part:
    """:func:`read_unit` of one of :func:`shares`."""
    unit, names = share
    return read_unit(unit, vms, start, end, names=names)


def read_unit(
    unit: Path,
    vms: set[str] | None,
    start: float,
    end: float,
    *,
    names: frozenset[str] | None = None,
) -> _Part:
    """One day folder or archive (of it the files ``names``, else all), reduced for the charts."""
    part = _Part()
    frames: dict[str, Any] = {}
    try:
        for name, opener in day_members(unit):
            daily = _BY_NAME.get(name)
            if daily is None or (names is not None and name not in names):
                continue
            frame, skipped = read_frame(opener, daily, NUMBERS[daily])
            part.skipped += skipped.rows
            frames[name] = _usable(part, daily, frame, vms, start, end)
    except UNREADABLE as exc:
        raise ReportError(f"{unit}: cannot be read ({exc})") from None
    for name, frame in frames.items():
        _reduce(part, _BY_NAME[name], frame)
    return part


def _too_long(column: Any) -> Any:
    """Rows whose cell is longer than any sysmon writes."""
    codes, uniques = pd.factorize(column)
    long = [i for i, text in enumerate(uniques) if len(str(text)) > MAX_CELL]
    return np.isin(codes, long)


def _usable(
    part: _Part,
    daily: schema.DailyFile,
    rows: Any,
    vms: set[str] | None,
    start: float,
    end: float,
) -> Any:
    """The rows that can be drawn, of the qubes and times asked for.

    A text cell longer than sysmon writes, or a time outside 1970-2199, is skipped.
    """
    long = np.zeros(len(rows), dtype=bool)
    # A file whose lines are no longer than a cell may be holds no cell too long.
    short = rows.attrs.get(LONGEST, MAX_CELL + 1) <= MAX_CELL
    for column in () if short else text_names(daily):
        # Names repeat: each is measured once; free text (alerts) cell by cell.
        if daily.column(column).role is schema.Role.TEXT:
            long |= rows[column].str.len().gt(MAX_CELL).to_numpy()
        else:
            long |= _too_long(rows[column])
    t = rows["t"].to_numpy()
    unusable = long | ~((t >= FIRST_T) & (t < LAST_T))
    dropped = int(unusable.sum())
    part.skipped += dropped
    part.rows += len(rows) - dropped
    wanted = ~unusable & (t >= start) & (t <= end)
    if vms:
        wanted &= _where(rows["vm"], lambda vm: vm in vms)
    # Every row kept (the usual case): no copy of the frame.
    return rows if wanted.all() else rows[wanted]


def _where(column: Any, test: Callable[[str], bool]) -> Any:
    """``test`` of each cell of a text column, asked once per distinct cell."""
    codes, uniques = pd.factorize(column)
    # A code of -1 (no value: not from a reader here) is never kept.
    answers = np.array([bool(test(u)) for u in uniques] + [False], dtype=bool)
    return answers[codes]


def _paired(codes: Any, uniques: Any, more: Any, also: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """Rows numbered by their pair (``uniques[codes]``, ``also[more]``), and the pairs.

    Pairs in the order they first came.  Each column is factorized once, by
    the caller: a cell's hash is a string's, the dearest step of the reduction.
    """
    pairs, first = pd.factorize(codes.astype(np.int64) * len(also) + more)
    return pairs, [(uniques[c // len(also)], also[c % len(also)]) for c in first.tolist()]


def _finite(*columns: Any) -> Any:
    ok = np.ones(len(columns[0]), dtype=bool)
    for column in columns:
        ok &= np.isfinite(column.to_numpy(dtype=float))
    return ok


def _split(t: Any, v: Any, codes: Any, keys: Any) -> dict[Any, tuple[Any, Any]]:
    """Times and values per key (``keys[code]``), keys in the order their rows first came."""
    codes, first = pd.factorize(codes)  # numbers, not names: cheap
    order = np.argsort(codes, kind="stable")  # each key's rows in file order
    bounds = np.searchsorted(codes[order], np.arange(len(first) + 1))
    t, v = np.asarray(t, dtype=float)[order], np.asarray(v, dtype=float)[order]
    return {
        keys[key]: (t[a:b], v[a:b])
        for key, a, b in zip(first.tolist(), bounds[:-1], bounds[1:], strict=True)
    }


def _reduce(part: _Part, daily: schema.DailyFile, rows: Any) -> None:
    """Keep what the charts need of one file's readable rows."""
    # Each qube's name is hashed once per file, whatever number of charts it feeds.
    qube, qubes = pd.factorize(rows["vm"])
    t = rows["t"].to_numpy(dtype=float)

    def value(name: str, ok: Any) -> Any:
        return rows[name].to_numpy(dtype=float)[ok]

    def keep(metric: str, ok: Any, values: Any, codes: Any = qube, keys: Any = qubes) -> None:
        part.series[metric] = _split(t[ok], values, codes[ok], keys)

    if daily is schema.SYSTEM:
        both = _finite(rows["cpu_user"], rows["cpu_system"])
        keep("cpu", both, value("cpu_user", both) + value("cpu_system", both))
        used = _finite(rows["mem_used_kb"])
        keep("mem", used, to_unit(daily, "mem_used_kb", value("mem_used_kb", used), "MiB"))
    elif daily is schema.NETWORK:
        # Loopback, and a netvm's vifs (what they carry is on its uplink too).
        iface, ifaces = pd.factorize(rows["if"])
        own = np.array([n != "lo" and not schema.forwarded(n) for n in ifaces] + [False])[iface]
        ok = own & _finite(rows["rx_bytes"], rows["tx_bytes"])
        keys, interfaces = _paired(qube[ok], qubes, iface[ok], ifaces)
        _day_rates(part, keys, interfaces, t[ok], value("rx_bytes", ok), value("tx_bytes", ok))
    elif daily is schema.CONNECTIONS:
        tcp = _finite(rows["tcp_established"])
        keep("tcp", tcp, value("tcp_established", tcp))
    elif daily is schema.DISK:
        used, avail = rows["used_kb"].to_numpy(dtype=float), rows["avail_kb"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            disk = _finite(rows["used_kb"], rows["avail_kb"]) & ((used + avail) > 0)
        used, avail = used[disk], avail[disk]
        mounts, keys = _paired(
            qube, qubes, *pd.factorize(rows["mount"].where(rows["mount"] != "", "?"))
        )
        keep("disk", disk, 100 * used / (used + avail), mounts, keys)
    elif daily is schema.XEN:
        xen = _finite(rows["cpu_usage"], rows["memory_kb"])
        keep("xen_cpu", xen, value("cpu_usage", xen))
        keep("xen_mem", xen, to_unit(daily, "memory_kb", value("memory_kb", xen), "MiB"))
    elif daily is schema.SCRAPES:
        status = rows["status"].where(rows["status"] != "", "?")
        codes, pairs = _paired(qube, qubes, *pd.factorize(status))
        counts = np.bincount(codes, minlength=len(pairs))
        part.health.update({pair: int(n) for pair, n in zip(pairs, counts, strict=True)})
        failed = ~status.isin([Status.OK.value, Status.SKIPPED.value]).to_numpy()
        keep("failures", failed, np.ones(int(failed.sum())))
    elif daily is schema.ALERTS:
        part.alerts.extend(zip(rows["t"], rows["vm"], rows["msg"], strict=True))


def _day_rates(
    part: _Part, keys: Any, interfaces: list[tuple[Any, Any]], t: Any, rx: Any, tx: Any
) -> None:
    """Rates within one day per qube and time, all interfaces summed.

    ``keys`` number the rows by (qube, interface): ``interfaces``.  Also each
    interface's first and last counters, to join rates across days.
    """
    order = np.argsort(keys, kind="stable")  # each interface's samples, in file order
    key, t = keys[order], t[order]
    rx, tx = rx[order], tx[order]
    same = np.zeros(len(key), dtype=bool)
    same[1:] = key[1:] == key[:-1]
    dt, drx, dtx = (np.diff(a, prepend=np.nan) for a in (t, rx, tx))
    # Rates only from two samples in order with counters that did not go
    # back (a restart or a reset): no negative spikes.
    with np.errstate(invalid="ignore"):
        ok = same & (dt > 0) & (drx >= 0) & (dtx >= 0)
    # Each interface's first and last sample, in the order the files have them.
    starts = np.flatnonzero(~same)
    last = np.r_[starts[1:], len(key)][: len(starts)] - 1
    for side, at in ((part.net_first, starts), (part.net_last, last)):
        for i in at[np.argsort(order[at])]:  # interfaces in the order the file has them
            vm_, iface = interfaces[key[i]]
            side[(vm_, iface)] = (float(t[i]), float(rx[i]), float(tx[i]))
    t = t[ok]
    rx = to_unit(schema.NETWORK, "rx_bytes", drx[ok] / dt[ok], "KiB")
    tx = to_unit(schema.NETWORK, "tx_bytes", dtx[ok] / dt[ok], "KiB")
    if not len(t):
        return
    # Qubes numbered in the order their first rate comes (the dict's order).
    qube_of, qubes = pd.factorize(np.array([vm_ for vm_, _ in interfaces], dtype=object))
    code, first = pd.factorize(qube_of[key[ok]])
    names = qubes[first]
    by_time = np.lexsort((t, code))  # stable: each sum adds in the order the rates came
    code, t = code[by_time], t[by_time]
    starts = np.flatnonzero(np.r_[True, (code[1:] != code[:-1]) | (t[1:] != t[:-1])])
    rx, tx = np.add.reduceat(rx[by_time], starts), np.add.reduceat(tx[by_time], starts)
    code, t = code[starts], t[starts]
    bounds = np.flatnonzero(np.r_[True, code[1:] != code[:-1], True])
    for a, b in itertools.pairwise(bounds):
        part.net[str(names[code[a]])] = (t[a:b], rx[a:b], tx[a:b])


class Merge:
    """Days joined in order: series extended, mounts capped, rates joined across midnight."""

    def __init__(self) -> None:
        self.result = Data()
        self.pieces: dict[str, dict[Any, list[tuple[Any, Any]]]] = {}
        self.mounts: Counter[str] = Counter()
        self.last_seen: dict[tuple[str, str], tuple[float, float, float]] = {}

    def add(self, part: _Part) -> None:
        """The next day."""
        result = self.result
        result.rows += part.rows
        result.skipped += part.skipped
        result.alerts.extend(part.alerts)
        for (vm, word), n in part.health.items():
            result.health.setdefault(vm, Counter())[word] += n
        for name, by_key in part.series.items():
            pieces = self.pieces.setdefault(name, {})
            for key, (t, v) in by_key.items():
                if name == "disk" and key not in pieces:
                    if self.mounts[key[0]] >= MAX_SERIES:
                        result.cut_series += len(t)
                        continue
                    self.mounts[key[0]] += 1
                pieces.setdefault(key, []).append((t, v))
        day = dict(part.net)
        for key, sample in part.net_first.items():
            if key in self.last_seen and (rate := _rate(self.last_seen[key], sample)):
                day[key[0]] = self._add_at(day.get(key[0]), sample[0], rate)
        for vm, (t, rx, tx) in day.items():
            self.pieces.setdefault("rx", {}).setdefault(vm, []).append((t, rx))
            self.pieces.setdefault("tx", {}).setdefault(vm, []).append((t, tx))
        self.last_seen.update(part.net_last)

    def _add_at(
        self, day: tuple[Any, Any, Any] | None, t: float, rate: tuple[float, float]
    ) -> tuple[Any, Any, Any]:
        """A rate across midnight added to the day's sum at ``t`` (after the day's own)."""
        if day is None:
            return np.array([t]), np.array([rate[0]]), np.array([rate[1]])
        times, rx, tx = day
        i = int(np.searchsorted(times, t))
        if i < len(times) and times[i] == t:
            rx, tx = rx.copy(), tx.copy()
            rx[i] += rate[0]
            tx[i] += rate[1]
            return times, rx, tx
        return np.insert(times, i, t), np.insert(rx, i, rate[0]), np.insert(tx, i, rate[1])

    def data(self) -> Data:
        """Every series in one piece."""
        while self.pieces:  # each day's pieces let go as soon as they are joined
            name, by_key = self.pieces.popitem()
            joined = getattr(self.result, name)
            while by_key:
                key, parts = by_key.popitem()
                joined[key] = Series(
                    np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts])
                )
        return self.result


def _rate(
    prev: tuple[float, float, float], cur: tuple[float, float, float]
) -> tuple[float, float] | None:
    if cur[0] <= prev[0] or cur[1] < prev[1] or cur[2] < prev[2]:
        return None
    dt = cur[0] - prev[0]
    return (
        to_unit(schema.NETWORK, "rx_bytes", (cur[1] - prev[1]) / dt, "KiB"),
        to_unit(schema.NETWORK, "tx_bytes", (cur[2] - prev[2]) / dt, "KiB"),
    )
