"""Threshold rules: "cpu_user + cpu_system > 90 for 5m" on a file's rows.  Pure.

A rule names a file, an expression (a column, or columns added up), a
comparison, a value and how long it must hold (a duration, or a number of
polls in a row); optionally one qube.  It is evaluated on each tick's rows and
writes ``sysmon: rule NAME firing ...`` once when it starts holding and
``... resolved`` once when it stops -- not a row every tick.  Its state lives
in the state file, so a restart neither repeats nor forgets a firing rule.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from sysmon import schema
from sysmon.protocol.names import is_valid_qube_name
from sysmon.records import Row, RuleState, Status

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
_FILES = {
    s.file_name[:-4]: s
    for s in schema.DAILY_FILES
    if s.file_name not in {"alerts.csv", "qubes.csv"}
}
_DURATION_RE = re.compile(r"([0-9]{1,9})\s*(s|m|h|polls?)")  # 9 digits: a float holds it
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_UNITS = {"s": 1, "m": 60, "h": 3600}


#: Seconds an instance is kept without a row (a failed poll is not a resolve).
GRACE = 3600.0
#: Interfaces or mounts one rule tracks per qube.
MAX_INSTANCES = 64


class RuleError(Exception):
    """A rule in the configuration is not usable; the message names it."""


@attrs.frozen
class Rule:
    """One threshold rule."""

    name: str
    file: str
    columns: tuple[str, ...]
    op: str
    value: float
    for_seconds: float = 0.0
    for_polls: int = 0
    vm: str | None = None
    #: Firing and resolved also go out as desktop notifications (transform/notify.py).
    notify: bool = False

    def describe(self) -> str:
        """The rule as the user wrote it, for alert rows."""
        span = f" for {self.for_polls} polls" if self.for_polls else ""
        if self.for_seconds:
            span = f" for {self.for_seconds:g}s"
        return f"{'+'.join(self.columns)} {self.op} {self.value:g}{span}"


def _column_kinds(file: str) -> dict[str, str]:
    kinds = {c.name: c.kind for c in _FILES[file].columns}
    if file == "scrapes":
        kinds["failed"] = "int"  # 1 when the poll's status is not ok (skipped aside)
    return kinds


def parse_rules(items: Any, source: str) -> tuple[Rule, ...]:
    """Validate the ``[[rules]]`` tables of the configuration.

    Raises:
        RuleError: naming the rule (or its position) and what is wrong.
    """
    if not isinstance(items, list):
        raise RuleError(f"{source}: rules must be a list of [[rules]] tables")
    rules: list[Rule] = []
    for index, item in enumerate(items, start=1):
        label = f"rule {index}"
        if not isinstance(item, dict):
            raise RuleError(f"{source}: {label} is not a table")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise RuleError(f"{source}: {label}: name must be [A-Za-z0-9_.-], 1 to 64 characters")
        label = f"rule {name!r}"
        if name in {r.name for r in rules}:
            raise RuleError(f"{source}: {label} is defined twice")
        unknown = sorted(set(item) - {"name", "file", "expr", "op", "value", "for", "vm", "notify"})
        if unknown:
            raise RuleError(f"{source}: {label}: unknown key {unknown[0]!r}")
        file = item.get("file")
        if file not in _FILES:
            raise RuleError(f"{source}: {label}: file must be one of {', '.join(sorted(_FILES))}")
        kinds = _column_kinds(file)
        expr = item.get("expr")
        if not isinstance(expr, str) or not expr.strip():
            raise RuleError(f"{source}: {label}: expr must name a column, or columns joined by +")
        columns = tuple(part.strip() for part in expr.split("+"))
        for column in columns:
            if kinds.get(column) not in {"int", "dec1", "dec2", "pct"}:
                raise RuleError(
                    f"{source}: {label}: {column!r} is not a numeric column of {file}.csv"
                )
        op = item.get("op")
        if op not in _OPS:
            raise RuleError(f"{source}: {label}: op must be one of {' '.join(_OPS)}")
        value = item.get("value")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (isinstance(value, int) and value.bit_length() > 128)  # past a float
            or not math.isfinite(value)
        ):
            raise RuleError(f"{source}: {label}: value must be a number")
        for_seconds, for_polls = 0.0, 0
        if "for" in item:
            match = _DURATION_RE.fullmatch(str(item["for"]).strip())
            if not match:
                raise RuleError(f"{source}: {label}: for must be like 30s, 5m, 2h or 3 polls")
            amount, unit = int(match[1]), match[2]
            if unit.startswith("poll"):
                for_polls = amount
            else:
                for_seconds = float(amount * _UNITS[unit])
        vm = item.get("vm")
        if vm is not None and not (isinstance(vm, str) and is_valid_qube_name(vm)):
            raise RuleError(f"{source}: {label}: vm must be a qube name")
        notify = item.get("notify", False)
        if not isinstance(notify, bool):
            raise RuleError(f"{source}: {label}: notify must be true or false")
        rules.append(
            Rule(name, file, columns, op, float(value), for_seconds, for_polls, vm, notify)
        )
    return tuple(rules)


def _cell(daily: schema.DailyFile, row: Row, column: str) -> str:
    # As the file says it: a rule sees the rounded number and the cleaned name.
    return daily.column(column).cell(row.values.get(column))


def _value(daily: schema.DailyFile, row: Row, columns: Iterable[str]) -> float | None:
    total = 0.0
    for column in columns:
        if column == "failed":
            total += 0.0 if row.values.get("status") in {Status.OK, Status.SKIPPED} else 1.0
            continue
        text = _cell(daily, row, column).rstrip("%")
        if not text:
            return None
        try:
            total += float(text)
        except ValueError:
            return None
    return total


def _message(rule: Rule, what: str, where: str, value: float) -> str:
    return f"sysmon: rule {rule.name} {what} on {where}: {rule.describe()} (now {value:g})"


def evaluate(
    rules: Iterable[Rule],
    ts: float,
    rows: Mapping[str, Iterable[Row]],
    state: Mapping[str, RuleState],
) -> tuple[list[tuple[str, str]], dict[str, RuleState]]:
    """Apply the rules to one tick's rows.

    Returns the alert notes (vm, message) and the rules' next state.  A qube
    with no row this tick (a failed poll) keeps its state: unknown is not
    resolved -- for :data:`GRACE` seconds, after which the instance is
    dropped (a DispVM gone, a mount vanished).  Each rule tracks at most
    :data:`MAX_INSTANCES` interfaces or mounts per qube: the state cannot
    grow with names a qube invents.
    """
    notes: list[tuple[str, str]] = []
    new_state = {key: r for key, r in state.items() if ts - r.seen <= GRACE}
    per_qube = Counter(key.rsplit("\0", 1)[0] for key in new_state)
    for rule in rules:
        daily = _FILES[rule.file]
        label = daily.instance_label
        for row in rows.get(daily.file_name, ()):
            vm = _cell(daily, row, "vm")
            if rule.vm is not None and vm != rule.vm:
                continue
            value = _value(daily, row, rule.columns)
            if value is None:
                continue
            instance = _cell(daily, row, label) if label else ""
            key = f"{rule.name}\0{vm}\0{instance}"
            where = f"{vm}" + (f" {instance}" if instance else "")
            before = new_state.get(key)
            if _OPS[rule.op](value, rule.value):
                if before is None:
                    if per_qube[f"{rule.name}\0{vm}"] >= MAX_INSTANCES:
                        continue  # a qube naming ever-new instances gets no more
                    per_qube[f"{rule.name}\0{vm}"] += 1
                    current = RuleState(since=ts, polls=1)
                else:
                    # A since ahead of ts (a clock put back) would hold the rule
                    # that long: it is timed from now instead.
                    since = min(before.since, ts)
                    current = attrs.evolve(before, since=since, polls=before.polls + 1, seen=ts)
                held = ts - current.since >= rule.for_seconds and current.polls >= rule.for_polls
                if held and not current.firing:
                    current = attrs.evolve(current, firing=True)
                    notes.append((vm, _message(rule, "firing", where, value)))
                new_state[key] = current
            elif before is not None:
                if before.firing:
                    notes.append((vm, _message(rule, "resolved", where, value)))
                del new_state[key]
                per_qube[f"{rule.name}\0{vm}"] -= 1
    return notes, new_state
