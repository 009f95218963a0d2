"""The daily files' cells as the engines' own formats: OpenMetrics, Influx line protocol, Loki.

Pure.  One table, :data:`FAMILIES`, names every exported series: ``sysmon_<file>_<column>``,
a ``_kb`` column in bytes (``_bytes``, x1024), a ``_ms`` one in seconds (``_seconds``,
/1000), counters as OpenMetrics ``counter`` families whose samples end in ``_total``.
docs/integrations.md prints the table.  Status words and qube states are one-hot series
over a fixed set of values, so no text a qube chose can become a label value there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import attrs

from sysmon import schema
from sysmon.records import Status

#: Which columns of a file are labels (beside ``host`` and ``vm``).
LABELS: Mapping[str, tuple[str, ...]] = {
    "system.csv": (),
    "network.csv": ("if",),
    "connections.csv": (),
    "disk.csv": ("fs", "mount"),
    "xen.csv": (),
    "scrapes.csv": (),
    "qubes.csv": (),
}
#: The power states dom0 reports (qubes/vm/qubesvm.py, ``get_power_state``).
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
STATUSES = tuple(s.value for s in Status)

_INT = re.compile(r"-?[0-9]{1,19}")
_DECIMAL = re.compile(r"-?[0-9]{1,19}(\.[0-9]{1,6})?")


@attrs.frozen
class Family:
    """One exported series family: a numeric column of a daily file."""

    file: str
    column: str
    kind: str  # "gauge" or "counter"
    unit: str
    help: str

    @property
    def name(self) -> str:
        """The family's name: ``sysmon_<file>_<column>``, units made base units."""
        column = self.column
        if column.endswith("_kb"):
            column = column[:-3] + "_bytes"
        elif column.endswith("_ms"):
            column = column[:-3] + "_seconds"
        return f"sysmon_{self.file.removesuffix('.csv')}_{column}"

    @property
    def sample_name(self) -> str:
        """A sample's name: counters end in ``_total``."""
        return self.name + "_total" if self.kind == "counter" else self.name

    def value(self, cell: str) -> str | None:
        """The cell as this family's value text; None if empty or not a number."""
        if not cell:
            return None
        if self.scale == "kb":
            return str(int(cell) * 1024) if _INT.fullmatch(cell) else None
        if self.scale == "ms":
            return repr(int(cell) / 1000) if _INT.fullmatch(cell) else None
        return cell if _DECIMAL.fullmatch(cell) else None

    @property
    def scale(self) -> str:
        """How the cell becomes a base unit: "kb" (x1024), "ms" (/1000) or "" (as it is)."""
        return self.column.rsplit("_", 1)[-1] if self.column.endswith(("_kb", "_ms")) else ""


def _families() -> tuple[Family, ...]:
    units = {
        "cpu_": ("percent", "gauge"),
        "load": ("1", "gauge"),
        "mem_": ("bytes", "gauge"),
        "swap_": ("bytes", "gauge"),
        "procs_": ("processes", "gauge"),
        "rx_bytes": ("bytes", "counter"),
        "tx_bytes": ("bytes", "counter"),
        "rx_": ("packets", "counter"),
        "tx_": ("packets", "counter"),
        "tcp_": ("connections", "gauge"),
        "udp_": ("sockets", "gauge"),
        "size_kb": ("bytes", "gauge"),
        "used_kb": ("bytes", "gauge"),
        "avail_kb": ("bytes", "gauge"),
        "cpu_time_ms": ("seconds", "counter"),
        "memory_kb": ("bytes", "gauge"),
        "duration_ms": ("seconds", "gauge"),
        "bytes": ("bytes", "gauge"),
        "lines_": ("lines", "gauge"),
    }
    out = []
    for daily in schema.DAILY_FILES:
        if daily.file_name not in LABELS:
            continue
        for column in daily.columns:
            if column.kind not in {"int", "dec1", "dec2"}:
                continue
            unit, kind = next(
                (u for prefix, u in sorted(units.items(), key=lambda i: -len(i[0]))
                 if column.name.startswith(prefix) or column.name == prefix),
                ("1", "gauge"),
            )  # fmt: skip
            what = "as the qube reports it" if daily is not schema.XEN else "as Xen reports it"
            out.append(
                Family(daily.file_name, column.name, kind, unit, f"{column.name} {what} ({unit})")
            )
    return tuple(out)


#: Every numeric family, in the order they are written.
FAMILIES: tuple[Family, ...] = _families()
#: One-hot families: (name, file, column, label, the values it can take).
ONE_HOT = (
    ("sysmon_scrapes_status", "scrapes.csv", "status", "status", STATUSES),
    ("sysmon_qubes_state", "qubes.csv", "state", "state", QUBE_STATES),
)
#: Rows left out because a qube named more label values in a day than allowed.
CUT_FAMILY = "sysmon_export_cut_rows"


def escape_label(value: str) -> str:
    """An OpenMetrics label value's text: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(pairs: Mapping[str, str]) -> str:
    """``{a="x",b="y"}``."""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items()) + "}"


def openmetrics_header(name: str, kind: str, help_text: str) -> str:
    """A family's ``# TYPE`` and ``# HELP`` lines."""
    return f"# TYPE {name} {kind}\n# HELP {name} {escape_label(help_text)}\n"


def _influx_escape(text: str, specials: str) -> str:
    text = text.replace("\\", "\\\\")
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def influx_line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, str], ts_s: int
) -> str:
    """One line of Influx line protocol (``fields`` already formatted), nanoseconds."""
    tag_text = "".join(
        f",{_influx_escape(k, ',= ')}={_influx_escape(v, ',= ')}" for k, v in tags.items() if v
    )
    field_text = ",".join(f"{_influx_escape(k, ',= ')}={v}" for k, v in fields.items())
    return f"{_influx_escape(measurement, ', ')}{tag_text} {field_text} {ts_s * 1_000_000_000}\n"


def influx_field(kind: str, cell: str) -> str | None:
    """A cell as an Influx field value: ``12i``, ``3.1``, or a quoted string."""
    if kind == "int":
        return f"{cell}i" if _INT.fullmatch(cell) else None
    if kind in {"dec1", "dec2"}:
        return cell if _DECIMAL.fullmatch(cell) else None
    if kind == "pct":
        return None
    return '"' + cell.replace("\\", "\\\\").replace('"', '\\"') + '"'


def loki_line(stream: Mapping[str, str], ts_ns: int, message: str) -> str:
    """One push body for Loki's ``/loki/api/v1/push``, on one line."""
    body = {"streams": [{"stream": dict(stream), "values": [[str(ts_ns), message]]}]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n"
