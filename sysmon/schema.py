"""The daily CSV files: names, headers, column kinds, and how a row is written.

Pure.  The first six files and their headers are seed 002's, unchanged;
``scrapes.csv`` explains every poll of every qube, failures included.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import attrs

from sysmon.protocol.text import clean_text, neutralise_formula

#: The files' layout; an archive's metadata names it (bumped when a column changes).
SCHEMA_VERSION = 1
#: A row is one write(); tailers read one physical line at a time, and a
#: line under a page never tears for a reader.
MAX_ROW_BYTES = 4096
MAX_TEXT_CHARS = 1000
_TEXT_KINDS = frozenset({"name", "text"})


@attrs.frozen
class Column:
    """One column.  ``kind``: ts, name, text, int, dec1, dec2 or pct."""

    name: str
    kind: str


@attrs.frozen
class Schema:
    """One daily file."""

    file_name: str
    columns: tuple[Column, ...]

    @property
    def header(self) -> bytes:
        """The header line."""
        return (",".join(c.name for c in self.columns) + "\n").encode()

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns that hold text, neutralised against formulas."""
        return tuple(c.name for c in self.columns if c.kind in _TEXT_KINDS)

    def format_row(self, values: Sequence[object]) -> bytes:
        """One RFC 4180 row, ``\\n``-terminated, under :data:`MAX_ROW_BYTES`."""
        if len(values) != len(self.columns):
            raise ValueError(
                f"{self.file_name}: {len(values)} values for {len(self.columns)} columns"
            )
        cells = [
            _cell(column.kind, value) for column, value in zip(self.columns, values, strict=True)
        ]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL).writerow(cells)
        row = buffer.getvalue().encode()
        if len(row) > MAX_ROW_BYTES:
            raise ValueError(f"{self.file_name}: row of {len(row)} bytes")
        return row


def format_ts(ts: datetime) -> str:
    """Seed 002's timestamp: UTC, seconds, ``Z``."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def readable_rows(reader: Iterator[list[str]], on_skip: Callable[[], None]) -> Iterator[list[str]]:
    """A csv reader's rows, skipping one it cannot read.

    A field over the csv module's 128 KiB limit (in a file someone else
    wrote) is skipped and told to ``on_skip``.
    """
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error:
            on_skip()


def parse_ts(text: str) -> datetime | None:
    """A ``ts`` cell back to an aware datetime, or None if it is not one."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _cell(kind: str, value: object) -> str:
    if value is None:
        return ""
    if kind == "ts":
        if not isinstance(value, datetime):
            raise TypeError("ts needs a datetime")
        return format_ts(value)
    if kind in _TEXT_KINDS:
        return neutralise_formula(clean_text(str(value), MAX_TEXT_CHARS))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{kind} column needs a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    if kind == "int":
        return str(int(value))
    if kind == "dec1":
        return f"{value:.1f}"
    if kind == "dec2":
        return f"{value:.2f}"
    if kind == "pct":
        return f"{int(value)}%"
    raise ValueError(f"unknown column kind {kind}")


def _schema(file_name: str, spec: str) -> Schema:
    columns = []
    for item in spec.split():
        name, _, kind = item.partition(":")
        columns.append(Column(name, kind))
    return Schema(file_name, tuple(columns))


SYSTEM = _schema(
    "system.csv",
    "ts:ts vm:name cpu_user:dec1 cpu_system:dec1 cpu_idle:dec1 load1:dec2 load5:dec2 load15:dec2 "
    "mem_total_kb:int mem_used_kb:int mem_avail_kb:int swap_total_kb:int swap_used_kb:int "
    "procs_running:int procs_blocked:int",
)
NETWORK = _schema(
    "network.csv",
    "ts:ts vm:name if:name rx_bytes:int rx_errs:int rx_drop:int "
    "tx_bytes:int tx_errs:int tx_drop:int",
)
CONNECTIONS = _schema("connections.csv", "ts:ts vm:name tcp_established:int udp_sockets:int")
DISK = _schema(
    "disk.csv",
    "ts:ts vm:name fs:name mount:name size_kb:int used_kb:int avail_kb:int pct_used:pct",
)
ALERTS = _schema("alerts.csv", "ts:ts vm:name msg:text")
QUBES = _schema("qubes.csv", "ts:ts vm:name state:name")
SCRAPES = _schema(
    "scrapes.csv",
    "ts:ts vm:name status:name duration_ms:int bytes:int lines_ok:int lines_rejected:int",
)

XEN = _schema(
    "xen.csv", "ts:ts vm:name cpu_usage:int cpu_usage_raw:int cpu_time_ms:int memory_kb:int"
)

#: Every daily file, in the order rows of one tick are written (alerts last:
#: their cursor is committed after them).
DAILY_FILES: tuple[Schema, ...] = (
    SYSTEM,
    NETWORK,
    CONNECTIONS,
    DISK,
    QUBES,
    SCRAPES,
    XEN,
    ALERTS,
)
