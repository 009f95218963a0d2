"""The hypervisor's view: dom0's ``admin.vm.Stats`` event stream.

qubesd sends, every ``stats_interval`` seconds (3 by default), one
``vm-stats`` event per running domain, dom0 included
(qubes-core-admin ``qubes/api/admin.py`` ``vm_stats``; recorded in
``tests/fixtures/qubes/admin.vm.Stats-*.bin``).  Each event is
``1\\0<subject>\\0<event>\\0(<key>\\0<value>\\0)*\\0`` (qubesadmin
``events/__init__.py``).  It covers qubes with no handler and cannot be
faked from inside a qube.  The stream is still parsed as untrusted input.
"""

from __future__ import annotations

import re

import attrs

from sysmon.protocol.names import is_valid_qube_name

MAX_EVENT_BYTES = 4096
MAX_FIELDS = 32
_INT_RE = re.compile(rb"[0-9]{1,20}")
_NAME_RE = re.compile(rb"[A-Za-z0-9:_.-]{0,64}")


class EventStreamError(Exception):
    """The stream broke the event framing; it must be reopened."""


@attrs.frozen
class Event:
    """One qubesd event."""

    subject: str
    name: str
    fields: dict[str, bytes]


@attrs.frozen
class DomainStats:
    """One ``vm-stats`` event; a key dom0 did not send is None (an empty cell).

    ``cpu_time_ms`` since the domain started, ``memory_kb`` assigned by Xen
    (not guest-used), ``cpu_usage`` in % of its vCPUs (the first sample of a
    connection is 0).  Qubes 4.2 and 4.3 send the first four keys; 4.4
    (core-admin main, f75776f7) drops ``cpu_usage_raw`` and adds the last
    five (``swap_used`` only when the qube reports swap); its ``*_internal``
    keys of a stubdomain are ignored.
    """

    vm: str
    cpu_usage: int | None
    cpu_usage_raw: int | None
    cpu_time_ms: int | None
    memory_kb: int | None
    memory_assigned_usable: int | None = None
    memory_assigned_total: int | None = None
    memory_with_swap_used: int | None = None
    swap_used: int | None = None
    online_vcpus: int | None = None


class EventReader:
    """Incremental parser: feed it bytes as they come, get whole events."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed_untrusted(self, data: bytes) -> list[Event]:
        """Parse what ``data`` completes.

        Raises:
            EventStreamError: bad framing or an event over the size cap.
        """
        self._buffer += data
        events = []
        while True:
            parsed = self._next_event()
            if parsed is None:
                break
            events.append(parsed)
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise EventStreamError(f"event over {MAX_EVENT_BYTES} bytes")
        return events

    def _next_event(self) -> Event | None:
        tokens: list[bytes] = []
        pos = 0
        while True:
            end = self._buffer.find(b"\0", pos)
            if end < 0:
                return None  # incomplete
            tokens.append(bytes(self._buffer[pos:end]))
            pos = end + 1
            if len(tokens) == 1 and tokens[0] != b"1":
                raise EventStreamError("not an event header")
            # header, subject, name, then key/value pairs ended by an empty key
            if len(tokens) >= 4 and (len(tokens) - 3) % 2 == 1 and tokens[-1] == b"":
                break
            if len(tokens) > 3 + 2 * MAX_FIELDS + 1:
                raise EventStreamError("too many fields")
        del self._buffer[:pos]
        _, subject, name, *rest = tokens
        pairs = rest[:-1]
        if not _NAME_RE.fullmatch(subject) or not _NAME_RE.fullmatch(name):
            raise EventStreamError("bad subject or event name")
        fields = {}
        for i in range(0, len(pairs), 2):
            key = pairs[i]
            if not _NAME_RE.fullmatch(key) or not key:
                raise EventStreamError("bad field name")
            fields[key.decode()] = pairs[i + 1]
        return Event(subject=subject.decode(), name=name.decode(), fields=fields)


#: The keys xen.csv reads, by the column they fill.
STATS_KEYS = {
    "cpu_usage": "cpu_usage",
    "cpu_usage_raw": "cpu_usage_raw",
    "cpu_time_ms": "cpu_time",
    "memory_kb": "memory_kb",
    "memory_assigned_usable": "memory_assigned_usable",
    "memory_assigned_total": "memory_assigned_total",
    "memory_with_swap_used": "memory_with_swap_used",
    "swap_used": "swap_used",
    "online_vcpus": "online_vcpus",
}


def domain_stats(event: Event) -> DomainStats | None:
    """The stats of a ``vm-stats`` event for a valid qube name, else None.

    Each known key is read alone: one absent or malformed leaves its cell
    empty, never a made-up value; unknown keys are ignored.  An event with
    none of the known keys usable is dropped.
    """
    if event.name != "vm-stats":
        return None
    if not (event.subject == "dom0" or is_valid_qube_name(event.subject)):
        return None
    values: dict[str, int | None] = {}
    for column, key in STATS_KEYS.items():
        raw = event.fields.get(key, b"")
        values[column] = int(raw) if _INT_RE.fullmatch(raw) else None
    if all(value is None for value in values.values()):
        return None
    return DomainStats(vm=event.subject, **values)
