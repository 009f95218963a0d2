"""CPU percentages from cumulative /proc/stat ticks.  Pure.

Only from two samples of the same boot with no counter going backwards;
otherwise there is no value (an empty cell), never a made-up one
(collectd's ``value_to_rate``, sysstat's "LINUX RESTART").
"""

from __future__ import annotations

import attrs

from sysmon.protocol.metrics import CPU_TICK_KEYS, SysRecord

#: Order of the ticks kept between samples.
TICK_FIELDS = CPU_TICK_KEYS


@attrs.frozen
class CpuPercent:
    """Shares of the ticks elapsed between two samples, in percent."""

    user: float
    system: float
    idle: float


def ticks_of(record: SysRecord) -> tuple[int, ...] | None:
    """The eight tick counters, or None if the qube left any out."""
    values = tuple(getattr(record, name) for name in TICK_FIELDS)
    if any(v is None for v in values):
        return None
    return values


def cpu_percent(
    previous: tuple[int, ...] | None, current: tuple[int, ...] | None
) -> CpuPercent | None:
    """User (user+nice), system (system+irq+softirq), idle (idle+iowait).

    Steal counts in the total, so the three need not add up to 100.
    """
    if previous is None or current is None:
        return None
    if len(previous) != len(TICK_FIELDS) or len(current) != len(TICK_FIELDS):
        return None
    deltas = [c - p for p, c in zip(previous, current, strict=True)]
    if any(d < 0 for d in deltas):
        return None
    total = sum(deltas)
    if total <= 0:
        return None
    user, nice, system, idle, iowait, irq, softirq, _steal = deltas
    return CpuPercent(
        user=100.0 * (user + nice) / total,
        system=100.0 * (system + irq + softirq) / total,
        idle=100.0 * (idle + iowait) / total,
    )
