"""Which rule alerts become desktop notifications, and their text.  Pure.

A rule with ``notify = true`` that fires or resolves writes its alerts.csv
row (the record) and, through :class:`Limiter`, maybe a notification: at
most one per (rule, qube) every ``every`` seconds (one for all disposables
together) and at most ``burst`` of all kinds in any ``every`` seconds, so a
storm of qubes cannot flood dom0's screen; what is held back is counted and
told in one summary as soon as there is room.  The text is made of sysmon's
own words only -- the rule's name (checked at configuration), the qube's
name as dom0 listed it, a number sysmon computed and a time -- and anything
outside a small character set is replaced: a notification server may read
markup, and a qube's bytes (an interface or mount name in the alert row)
never get in.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

import attrs

from sysmon.protocol.names import is_valid_qube_name, share_of
from sysmon.records import AlertBatch, RuleState
from sysmon.transform.rules import Rule

Kind = Literal["firing", "resolved"]
#: Characters a notification may show: no markup (<, &), no control bytes.
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 _.,:%+()/-]")
_NOW_RE = re.compile(r"\(now ([-+0-9.eE]+|inf|-inf|nan)\)\Z")
_KINDS: tuple[Kind, ...] = ("firing", "resolved")


def safe(text: str, limit: int = 200) -> str:
    """``text`` with every character outside a plain set as ``?``, cut to ``limit``."""
    return _UNSAFE_RE.sub("?", text[:limit])


@attrs.frozen
class Event:
    """One rule alert row of a committed tick, as sysmon's own facts."""

    rule: str
    vm: str
    kind: Kind
    ts: float
    value: float | None = None
    #: When the condition began to hold (from the rule's state), if known.
    since: float | None = None

    def title(self) -> str:
        """The notification's summary line."""
        word = "firing" if self.kind == "firing" else "resolved"
        return safe(f"sysmon: {self.rule} {word} on {self.vm}")

    def body(self) -> str:
        """The notification's body: value and since when."""
        parts = []
        if self.value is not None and math.isfinite(self.value):
            parts.append(f"value {self.value:g}")
        if self.since is not None:
            parts.append(f"since {_clock(self.since)}")
        parts.append(f"at {_clock(self.ts)} (alerts.csv)")
        return safe(", ".join(parts))


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")


def rule_events(
    rules: Sequence[Rule],
    alerts: Iterable[AlertBatch],
    before: Mapping[str, RuleState],
    after: Mapping[str, RuleState],
    ts: float,
) -> list[Event]:
    """The notifying rules' firing and resolved rows among a tick's ``alerts``.

    Each row is one event: the row is the record, the notification its
    echo.  The qube is the batch's (dom0's name, checked again here); the
    value is the number sysmon wrote at the end of its own message; "since"
    comes from the rule's state (before the tick for a resolve).
    """
    notifying = [r for r in rules if r.notify]
    if not notifying:
        return []
    events = []
    # The earliest start per (rule, qube), found once: scanning the whole
    # state for each event was quadratic in a flood of disposables' instances.
    starts = {kind: _starts(before if kind == "resolved" else after) for kind in _KINDS}
    for batch in alerts:
        if not is_valid_qube_name(batch.vm):
            continue
        for row in batch.rows:
            message = row.values.get("msg")
            if not isinstance(message, str):
                continue
            for rule in notifying:
                for kind in _KINDS:
                    head = f"sysmon: rule {rule.name} {kind} on {batch.vm}"
                    if not message.startswith(head) or message[len(head) : len(head) + 1] not in {
                        ":",
                        " ",
                    }:
                        continue
                    match = _NOW_RE.search(message)
                    events.append(
                        Event(
                            rule=rule.name,
                            vm=batch.vm,
                            kind=kind,
                            ts=ts,
                            value=float(match[1]) if match else None,
                            since=starts[kind].get((rule.name, batch.vm)),
                        )
                    )
    return events


def _starts(states: Mapping[str, RuleState]) -> dict[tuple[str, str], float]:
    """The earliest ``since`` of each (rule, qube) among ``states`` ("RULE\\0QUBE\\0INSTANCE")."""
    found: dict[tuple[str, str], float] = {}
    for key, state in states.items():
        parts = key.split("\0", 2)
        if len(parts) != 3:
            continue
        rule, vm, _instance = parts
        known = found.get((rule, vm))
        found[(rule, vm)] = state.since if known is None else min(known, state.since)
    return found


@attrs.define
class Limiter:
    """At most one notification per (rule, qube) per ``every`` s, ``burst`` in all.

    Disposables (:func:`share_of`) count as one qube and one rule.  The last
    of the burst is for a qube that had none in the interval.

    :meth:`admit` is called each tick (with no events too: a summary of what
    was held back goes out once there is room).  Returns (title, body) pairs.
    """

    every: float
    burst: int
    _last: dict[tuple[str, str], float] = attrs.field(factory=dict)
    _sent: deque[float] = attrs.field(factory=deque)
    _held: int = 0
    _held_since: float | None = None
    #: When (on the limiter's clock) the first of them was held back.
    _held_at: float = 0.0

    def _room(self, now: float, qube: str | None = None) -> bool:
        """Room for one more: the last of the burst only for ``qube``, if it had none.

        One qube firing a few notifying rules every poll, its disposables and
        the summary of what it had held back took the whole burst, renewed each
        interval: the last one is kept for a qube with none in the interval
        (not the disposables, nor the summary: the flooder can start those).
        """
        while self._sent and now - self._sent[0] >= self.every:
            self._sent.popleft()
        # Kept oldest first; a pair past its interval is forgotten, so there
        # are never more than ``burst`` of them (one per notification sent).
        while self._last and now - next(iter(self._last.values())) >= self.every:
            del self._last[next(iter(self._last))]
        free = self.burst - len(self._sent)
        if free != 1 or self.burst == 1:
            return free > 0
        return qube is not None and all(owner != qube for _rule, owner in self._last)

    def admit(self, events: Iterable[Event], now: float) -> list[tuple[str, str]]:
        """The notifications to send now for ``events`` (and any summary due)."""
        out: list[tuple[str, str]] = []
        # The summary waits an interval too: a rule flapping on one qube
        # shows about twice per interval, not once per tick.
        if self._held and now - self._held_at >= self.every and self._room(now):
            out.append(self._summary(now))
        for event in events:
            # Any qube may start disposables, each a new name: together they
            # have one notification an interval, or a churn of them would
            # take the burst from every other qube.
            owner = share_of(event.vm)
            key = (event.rule, owner) if owner == event.vm else ("", owner)
            room = self._room(now, owner if owner == event.vm else None)
            if key in self._last or not room:
                self._held += 1
                if self._held_since is None:
                    self._held_since, self._held_at = event.ts, now
                continue
            self._last[key] = now
            self._sent.append(now)
            out.append((event.title(), event.body()))
        return out

    def _summary(self, now: float) -> tuple[str, str]:
        """One notification for all that was held back (it counts toward the burst)."""
        held, since = self._held, self._held_since
        self._held, self._held_since = 0, None
        self._sent.append(now)
        noun = "notification" if held == 1 else "notifications"
        return (
            safe(f"sysmon: {held} more {noun} held back"),
            safe(f"since {_clock(since)}: every rule alert is in alerts.csv" if since else ""),
        )

    @property
    def held(self) -> int:
        """Events counted but not yet told."""
        return self._held
