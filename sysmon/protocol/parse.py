"""Parse what a qube's ``qubes.Metrics.Get`` printed.  Every byte is hostile.

Pure and synchronous.  :func:`parse_metrics_untrusted` either returns a
:class:`~sysmon.protocol.metrics.Snapshot` or raises :class:`MetricsParseError`;
no input makes it raise anything else (a hypothesis test holds it to that).
The payload never says which qube it is from: the caller knows.
"""

from __future__ import annotations

import re

import attrs

from sysmon.protocol.metrics import (
    CONN_KEYS,
    DISK_KEYS,
    NET_KEYS,
    SYS_FLOAT_KEYS,
    SYS_INT_KEYS,
    AlertRecord,
    ConnRecord,
    DiskRecord,
    NetRecord,
    Snapshot,
    SysRecord,
)
from sysmon.protocol.text import clean_text

MAX_COUNTER = 2**64 - 1
MAX_TS_US = 2**63 - 1
MAX_REASONS = 5

_INT_RE = re.compile(r"[0-9]{1,20}")
_FLOAT_RE = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,9})?")
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PREFIX_RE = re.compile(rb"[a-z][a-z0-9_]{0,31}")
_BOOT_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
#: Interface, device and mount names: a safe set, with /proc/mounts-style
#: octal escapes (``\040``) for anything else.  No space, ``=``, comma,
#: quote or control character can get through.
IDENT_RE = re.compile(r"(?:[A-Za-z0-9._/:@+\[\]-]|\\[0-7]{3}){1,255}")


class MetricsParseError(Exception):
    """The payload as a whole is unusable (empty, garbage, or no ``sys:`` line)."""

    def __init__(
        self, message: str, *, n_bytes: int, lines_total: int, lines_rejected: int
    ) -> None:
        super().__init__(message)
        self.n_bytes = n_bytes
        self.lines_total = lines_total
        self.lines_rejected = lines_rejected


@attrs.frozen
class Limits:
    """Caps on one qube's payload.  Defaults are far above a real qube's needs."""

    max_bytes: int = 256 * 1024
    max_lines: int = 4096
    max_line_length: int = 4096
    max_net: int = 512
    max_disk: int = 256
    max_alerts: int = 200
    max_alert_chars: int = 1000


DEFAULT_LIMITS = Limits()


class _LineError(Exception):
    """One line is rejected; the others stand."""


def _parse_int(key: str, text: str, maximum: int = MAX_COUNTER) -> int:
    if not _INT_RE.fullmatch(text):
        raise _LineError(f"{key}: not a plain non-negative integer")
    value = int(text)
    if value > maximum:
        raise _LineError(f"{key}: out of range")
    return value


def _parse_float(key: str, text: str) -> float:
    if not _FLOAT_RE.fullmatch(text):
        raise _LineError(f"{key}: not a plain non-negative decimal")
    return float(text)


def _parse_ident(key: str, text: str) -> str:
    if not IDENT_RE.fullmatch(text):
        raise _LineError(f"{key}: unsafe characters or length")
    return text


def _pairs(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise _LineError("not ASCII") from None
    pairs: dict[str, str] = {}
    if not text:
        return pairs
    for token in text.split(" "):
        key, sep, value = token.partition("=")
        if not sep or not _KEY_RE.fullmatch(key):
            raise _LineError(f"bad key=value token {token[:40]!r}")
        if key in pairs:
            raise _LineError(f"repeated key {key}")
        pairs[key] = value
    return pairs


def _require(pairs: dict[str, str], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in pairs]
    if missing:
        raise _LineError("missing " + ",".join(missing))


def _parse_sys(body: bytes) -> SysRecord:
    pairs = _pairs(body)
    values: dict[str, object] = {}
    if "boot_id" in pairs:
        if not _BOOT_ID_RE.fullmatch(pairs["boot_id"]):
            raise _LineError("boot_id: unsafe characters or length")
        values["boot_id"] = pairs["boot_id"]
    for key in SYS_INT_KEYS:
        if key in pairs:
            values[key] = _parse_int(key, pairs[key])
    for key in SYS_FLOAT_KEYS:
        if key in pairs:
            values[key] = _parse_float(key, pairs[key])
    return SysRecord(**values)  # type: ignore[arg-type]


def _parse_net(body: bytes) -> NetRecord:
    pairs = _pairs(body)
    _require(pairs, ("if", *NET_KEYS))
    counters = {key: _parse_int(key, pairs[key]) for key in NET_KEYS}
    return NetRecord(interface=_parse_ident("if", pairs["if"]), **counters)


def _parse_conn(body: bytes) -> ConnRecord:
    pairs = _pairs(body)
    return ConnRecord(**{key: _parse_int(key, pairs[key]) for key in CONN_KEYS if key in pairs})


def _parse_disk(body: bytes) -> DiskRecord:
    pairs = _pairs(body)
    _require(pairs, ("fs", "mount", *DISK_KEYS))
    sizes = {key: _parse_int(key, pairs[key]) for key in DISK_KEYS}
    return DiskRecord(
        fs=_parse_ident("fs", pairs["fs"]), mount=_parse_ident("mount", pairs["mount"]), **sizes
    )


def _parse_alert(body: bytes, limits: Limits) -> AlertRecord:
    stamp, _, rest = body.partition(b" ")
    try:
        ts_text = stamp.decode("ascii")
    except UnicodeDecodeError:
        raise _LineError("alert: bad timestamp") from None
    ts_us = _parse_int("ts", ts_text, MAX_TS_US)
    text = rest.decode("utf-8", errors="replace")
    identifier, sep, message = text.partition(": ")
    if not sep or " " in identifier:
        identifier, message = "", text
    return AlertRecord(
        ts_us=ts_us,
        identifier=clean_text(identifier, 64),
        message=clean_text(message, limits.max_alert_chars),
    )


def parse_metrics_untrusted(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Snapshot:
    """Validate one qube's payload and return its records.

    Raises:
        MetricsParseError: nothing usable: no valid ``sys:`` line.  Any other
            fault only rejects the line it is on.
    """
    n_bytes = len(raw)
    over_caps: set[str] = set()
    if n_bytes > limits.max_bytes:
        over_caps.add("bytes")
        raw = raw[: limits.max_bytes]
    # A payload cut anywhere but after a newline ends in a partial line.
    lines_total = raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
    chunks = raw.split(b"\n")
    complete = chunks[:-1]
    partial = chunks[-1]

    sys_record: SysRecord | None = None
    conn: ConnRecord | None = None
    net: list[NetRecord] = []
    disk: list[DiskRecord] = []
    interfaces: set[str] = set()
    filesystems: set[tuple[str, str]] = set()
    alerts: list[AlertRecord] = []
    lines_ok = 0
    rejected = 0
    reasons: list[str] = []

    def reject(number: int, why: str) -> None:
        nonlocal rejected
        rejected += 1
        if len(reasons) < MAX_REASONS:
            reasons.append(f"line {number}: {why}")

    if partial:
        reject(len(complete) + 1, "no newline at the end (output cut short)")
    if len(complete) > limits.max_lines:
        over_caps.add("lines")
        rejected += len(complete) - limits.max_lines
        complete = complete[: limits.max_lines]

    for number, line in enumerate(complete, start=1):
        if line.endswith(b"\r"):
            line = line[:-1]  # noqa: PLW2901 -- CRLF is tolerated
        if len(line) > limits.max_line_length:
            reject(number, "line too long")
            continue
        prefix, sep, body = line.partition(b": ")
        if not sep or not _PREFIX_RE.fullmatch(prefix):
            reject(number, "not a PREFIX: record")
            continue
        try:
            if prefix == b"sys":
                if sys_record is not None:
                    raise _LineError("repeated sys line")
                sys_record = _parse_sys(body)
            elif prefix == b"net":
                if len(net) >= limits.max_net:
                    over_caps.add("net")
                    raise _LineError("over the net cap")
                record = _parse_net(body)
                # One sample per series and tick: a second would be refused by the engines.
                if record.interface in interfaces:
                    raise _LineError(f"repeated interface {record.interface}")
                net.append(record)
                interfaces.add(record.interface)
            elif prefix == b"conn":
                if conn is not None:
                    raise _LineError("repeated conn line")
                conn = _parse_conn(body)
            elif prefix == b"disk":
                if len(disk) >= limits.max_disk:
                    over_caps.add("disk")
                    raise _LineError("over the disk cap")
                mounted = _parse_disk(body)
                if (mounted.fs, mounted.mount) in filesystems:
                    raise _LineError(f"repeated filesystem {mounted.fs} on {mounted.mount}")
                disk.append(mounted)
                filesystems.add((mounted.fs, mounted.mount))
            elif prefix == b"alert":
                if len(alerts) >= limits.max_alerts:
                    over_caps.add("alert")
                    raise _LineError("over the alert cap")
                alerts.append(_parse_alert(body, limits))
            else:
                # A record type from a later protocol: ignored, not an error.
                continue
        except _LineError as exc:
            reject(number, f"{prefix.decode('ascii')}: {exc}")
            continue
        lines_ok += 1

    if sys_record is None:
        detail = "; ".join(reasons) if reasons else "empty output"
        raise MetricsParseError(
            f"no valid sys: line ({detail})",
            n_bytes=n_bytes,
            lines_total=lines_total,
            lines_rejected=rejected,
        )
    return Snapshot(
        sys=sys_record,
        net=tuple(net),
        conn=conn,
        disk=tuple(disk),
        alerts=tuple(alerts),
        n_bytes=n_bytes,
        lines_total=lines_total,
        lines_ok=lines_ok,
        lines_rejected=rejected,
        over_caps=frozenset(over_caps),
        reject_reasons=tuple(reasons),
    )
