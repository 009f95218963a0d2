"""The daily CSV files, each described once: columns, their encoding, role, unit and type.

Pure.  The first six files and their headers are seed 002's, unchanged;
``scrapes.csv`` explains every poll of every qube, failures included.
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime

import attrs

from sysmon.protocol.text import clean_text, neutralise_formula
from sysmon.records import Status

#: The files' layout; an archive's metadata names it (bumped when a column changes).
#: 2: views.csv, and xen.csv's Qubes 4.4 columns (a file of 1 lacks them:
#: the decoder gives their cells empty).
SCHEMA_VERSION = 2
#: A row is one write(); tailers read one physical line at a time, and a
#: line under a page never tears for a reader.
MAX_ROW_BYTES = 4096
MAX_TEXT_CHARS = 1000
_TEXT_KINDS = frozenset({"name", "text"})
#: What a number cell may be: the writer's own forms, nothing float() also takes
#: ("nan", "1e9", "1_0", spaces).
_NUMBER = re.compile(r"-?[0-9]{1,19}(\.[0-9]{1,6})?")
_KINDS = frozenset({"ts", "name", "text", "int", "dec1", "dec2", "pct"})


class Role(enum.StrEnum):
    """What a column is to a reader."""

    TIME = "time"  # the row's UTC second
    KEY = "key"  # the qube, as dom0 named it
    LABEL = "label"  # which instance of the qube's series: an interface, a filesystem
    VALUE = "value"  # a number
    STATE = "state"  # one word of a fixed vocabulary (``values``)
    TEXT = "text"  # free text, a qube's words or sysmon's


#: How a stored unit becomes a base unit in the engines: (base unit, factor).
BASE_UNITS: dict[str, tuple[str, float]] = {"kB": ("bytes", 1024), "ms": ("seconds", 0.001)}


@attrs.frozen
class Column:
    """One column.

    ``kind`` is how a cell is written: ts, name, text, int, dec1, dec2 or
    pct.  ``role`` what it is to a reader; for a value, ``unit`` is the
    stored unit (``kB``, ``ms``, ``bytes``, ``percent``, ...) and ``type``
    ``gauge`` or ``counter`` (a counter only grows, but for a reset when its
    source restarts); a state column lists the ``values`` it can take.
    """

    name: str
    kind: str
    role: Role = Role.VALUE
    unit: str = ""
    type: str = ""
    values: tuple[str, ...] = ()
    help: str = ""

    def __attrs_post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"{self.name}: unknown kind {self.kind}")
        if (self.role is Role.VALUE) != bool(self.type):
            raise ValueError(f"{self.name}: a value, and only a value, has a type")
        if self.type not in {"", "gauge", "counter"}:
            raise ValueError(f"{self.name}: type {self.type}")
        if (self.role is Role.STATE) != bool(self.values):
            raise ValueError(f"{self.name}: a state, and only a state, lists its values")

    def number(self, cell: str) -> float | None:
        """A cell of this value column as a number; None if empty or not one.

        A whole number stays an int: a counter past 2**53 keeps every digit.
        """
        if self.kind == "pct":
            cell = cell.removesuffix("%")
        match = _NUMBER.fullmatch(cell)
        if match is None:
            return None
        return float(cell) if match.group(1) else int(cell)

    def cell(self, value: object) -> str:
        """``value`` as this column writes it (rounded, cleaned; empty for None)."""
        return _cell(self.kind, value)

    @property
    def base_unit(self) -> tuple[str, float]:
        """The unit the engines are given and the factor to it."""
        return BASE_UNITS.get(self.unit, (self.unit, 1))


@attrs.frozen
class DailyFile:
    """One daily file: its name, its columns, and who reports its values."""

    file_name: str
    columns: tuple[Column, ...]
    #: Who reports the values, in the export's help text.
    source: str = ""
    #: Widths of this file's earlier layouts (its first N columns), which a
    #: day begun by an older sysmon has: the rest of that day is appended in
    #: it, the newer trailing cells cut (:meth:`in_layout`), not moved aside.
    older: tuple[int, ...] = ()

    def __attrs_post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.file_name}: a column twice")
        if self.columns[:2] and [c.role for c in self.columns[:2]] != [Role.TIME, Role.KEY]:
            raise ValueError(f"{self.file_name}: rows start with the time and the qube")
        for width in self.older:
            # Cells cut from the right must hold no comma or quote: numbers only.
            if not 2 <= width < len(self.columns) or any(
                c.kind in _TEXT_KINDS for c in self.columns[width:]
            ):
                raise ValueError(f"{self.file_name}: an older layout of {width} columns")

    def header_of(self, width: int) -> bytes:
        """The header of this file's first ``width`` columns (an older layout)."""
        return (",".join(c.name for c in self.columns[:width]) + "\n").encode()

    def in_layout(self, line: bytes, width: int) -> bytes:
        """An encoded row cut to the first ``width`` columns (one of :attr:`older`)."""
        return line[:-1].rsplit(b",", len(self.columns) - width)[0] + b"\n"

    @property
    def stem(self) -> str:
        """``system`` for ``system.csv``."""
        return self.file_name.removesuffix(".csv")

    @property
    def header(self) -> bytes:
        """The header line."""
        return (",".join(c.name for c in self.columns) + "\n").encode()

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.file_name} has no column {name}")

    def of_role(self, *roles: Role) -> tuple[Column, ...]:
        """The columns in any of ``roles``, in order."""
        return tuple(c for c in self.columns if c.role in roles)

    @property
    def labels(self) -> tuple[str, ...]:
        """The columns that tell one series of a qube from another (interface, filesystem)."""
        return tuple(c.name for c in self.of_role(Role.LABEL))

    @property
    def instance_label(self) -> str | None:
        """The label a person names one of a qube's series by (``/rw``, ``eth0``).

        Labels are described broad to narrow, so it is the last: a mount, not
        its device.  Rules keep one state per qube and instance by it.
        """
        return self.labels[-1] if self.labels else None

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns that hold text, neutralised against formulas."""
        return tuple(c.name for c in self.columns if c.kind in _TEXT_KINDS)

    def encode(self, values: Mapping[str, object]) -> bytes:
        """One row from a mapping keyed by column; a column not in it is empty."""
        unknown = values.keys() - set(self.names)
        if unknown:
            raise ValueError(f"{self.file_name}: no column {min(unknown)}")
        return self.format_row([values.get(name) for name in self.names])

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


#: The name the code used before the read side shared it.
Schema = DailyFile


@functools.lru_cache(maxsize=8)  # every row of a tick shares its ts: formatted once
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


def forwarded(interface: str) -> bool:
    """A netvm's backend for another qube (``vifN.M``, ``vif.M of QUBE``).

    What crosses it also crosses the netvm's uplink: a total of the netvm's
    own traffic leaves it out, or forwarded bytes count twice (docs/views.md).
    """
    return interface.startswith("vif")


def _file(file_name: str, source: str, *columns: Column, older: tuple[int, ...] = ()) -> DailyFile:
    head = (Column("ts", "ts", Role.TIME, help="UTC second of the tick"),
            Column("vm", "name", Role.KEY, help="the qube, as dom0 listed it"))  # fmt: skip
    return DailyFile(file_name, (*head, *columns), source, older)


def _gauge(name: str, kind: str, unit: str, help_text: str) -> Column:
    return Column(name, kind, Role.VALUE, unit, "gauge", help=help_text)


def _counter(name: str, kind: str, unit: str, help_text: str) -> Column:
    return Column(name, kind, Role.VALUE, unit, "counter", help=help_text)


def _label(name: str, help_text: str) -> Column:
    return Column(name, "name", Role.LABEL, help=help_text)


#: The power states dom0 reports (core-admin ``qubes/vm/qubesvm.py``, ``get_power_state``).
QUBE_STATES = (
    "Running",
    "Halted",
    "Paused",
    "Suspended",
    "Transient",
    "Halting",
    "Dying",
    "Crashed",
    "NA",
)

SYSTEM = _file(
    "system.csv",
    "the qube",
    _gauge("cpu_user", "dec1", "percent", "CPU time in user mode since the last poll"),
    _gauge("cpu_system", "dec1", "percent", "CPU time in the kernel since the last poll"),
    _gauge("cpu_idle", "dec1", "percent", "CPU time idle since the last poll"),
    _gauge("load1", "dec2", "1", "load average over 1 minute"),
    _gauge("load5", "dec2", "1", "load average over 5 minutes"),
    _gauge("load15", "dec2", "1", "load average over 15 minutes"),
    _gauge("mem_total_kb", "int", "kB", "memory the qube sees"),
    _gauge("mem_used_kb", "int", "kB", "memory in use (total - available)"),
    _gauge("mem_avail_kb", "int", "kB", "memory available"),
    _gauge("swap_total_kb", "int", "kB", "swap"),
    _gauge("swap_used_kb", "int", "kB", "swap in use"),
    _gauge("procs_running", "int", "processes", "runnable processes"),
    _gauge("procs_blocked", "int", "processes", "processes blocked on I/O"),
)
NETWORK = _file(
    "network.csv",
    "the qube",
    _label("if", "the interface, as the qube names it"),
    _counter("rx_bytes", "int", "bytes", "bytes received"),
    _counter("rx_errs", "int", "packets", "receive errors"),
    _counter("rx_drop", "int", "packets", "packets dropped on receive"),
    _counter("tx_bytes", "int", "bytes", "bytes sent"),
    _counter("tx_errs", "int", "packets", "send errors"),
    _counter("tx_drop", "int", "packets", "packets dropped on send"),
)
CONNECTIONS = _file(
    "connections.csv",
    "the qube",
    _gauge("tcp_established", "int", "connections", "TCP connections established"),
    _gauge("udp_sockets", "int", "sockets", "UDP sockets open"),
)
DISK = _file(
    "disk.csv",
    "the qube",
    _label("fs", "the filesystem's device, as the qube names it"),
    _label("mount", "where it is mounted"),
    _gauge("size_kb", "int", "kB", "size"),
    _gauge("used_kb", "int", "kB", "used"),
    _gauge("avail_kb", "int", "kB", "available to users"),
    _gauge("pct_used", "pct", "percent", "used, as df rounds it (not exported)"),
)
ALERTS = _file(
    "alerts.csv",
    "the qube's journal, and sysmon",
    Column("msg", "text", Role.TEXT, help="the message; sysmon's own begin with `sysmon:`"),
)
QUBES = _file(
    "qubes.csv",
    "dom0",
    Column("state", "name", Role.STATE, values=QUBE_STATES, help="the power state dom0 listed"),
)
SCRAPES = _file(
    "scrapes.csv",
    "sysmon",
    Column(
        "status",
        "name",
        Role.STATE,
        values=tuple(s.value for s in Status),
        help="the poll's outcome",
    ),
    _gauge("duration_ms", "int", "ms", "how long the poll took"),
    _gauge("bytes", "int", "bytes", "bytes the qube answered"),
    _gauge("lines_ok", "int", "lines", "lines kept"),
    _gauge("lines_rejected", "int", "lines", "lines rejected"),
)
XEN = _file(
    "xen.csv",
    "Xen",
    _gauge("cpu_usage", "int", "percent", "CPU use over all vCPUs, as dom0 reports it"),
    _gauge("cpu_usage_raw", "int", "percent", "CPU use, not divided by the vCPUs"),
    _counter("cpu_time_ms", "int", "ms", "CPU time used since the qube started"),
    _gauge("memory_kb", "int", "kB", "memory Xen gives the qube"),
    # Qubes 4.4 only (core-admin main), empty before.
    _gauge("memory_assigned_usable", "int", "kB", "memory assigned the guest can use (4.4)"),
    _gauge("memory_assigned_total", "int", "kB", "memory assigned, up to its maximum (4.4)"),
    _gauge("memory_with_swap_used", "int", "kB", "used, swap included, as the qube says (4.4)"),
    _gauge("swap_used", "int", "kB", "swap used, as the qube says (4.4)"),
    _gauge("online_vcpus", "int", "vCPUs", "vCPUs online (4.4)"),
    older=(6,),  # schema 1: before 4.4's columns
)

#: Each qube's own view against Xen's and its netvm's (docs/views.md); the
#: flag is this tick's, an alert tells a disagreement that lasts.
VIEWS = _file(
    "views.csv",
    "the qube, Xen and its netvm",
    _gauge("cpu_self", "dec1", "percent", "CPU busy as the qube reports it, on Xen's scale"),
    _gauge("cpu_xen", "dec1", "percent", "CPU busy as Xen sees it"),
    _gauge("cpu_gap", "dec1", "percent", "cpu_xen - cpu_self"),
    _gauge("mem_self_kb", "int", "kB", "memory the qube says it has"),
    _gauge("mem_xen_kb", "int", "kB", "memory Xen gives the qube"),
    _gauge("net_self_bytes", "int", "bytes", "bytes the qube says it sent and received"),
    _gauge("net_netvm_bytes", "int", "bytes", "bytes its netvm's vif carried for it"),
    Column(
        "flag",
        "name",
        Role.STATE,
        values=("agree", "one-view", "cpu", "memory", "traffic", "busy-but-silent"),
        help="where the views disagree; agree and one-view are not a disagreement",
    ),
)

#: Every daily file, in the order rows of one tick are written (alerts last:
#: their cursor is committed after them).
DAILY_FILES: tuple[DailyFile, ...] = (
    SYSTEM,
    NETWORK,
    CONNECTIONS,
    DISK,
    QUBES,
    SCRAPES,
    XEN,
    VIEWS,
    ALERTS,
)


def by_name(file_name: str) -> DailyFile:
    """The daily file called ``file_name``."""
    for daily in (*DAILY_FILES, VIEWS):
        if daily.file_name == file_name:
            return daily
    raise KeyError(f"no daily file {file_name}")
