"""The daily files' cells in the engines' formats: OpenMetrics, JSON lines, Influx, Loki.

Pure, and derived from the files' one description (:mod:`sysmon.schema.files`): every
value column but a rounded percentage is a family ``sysmon_<file>_<column>``, its
stored unit made the base unit (``mem_total_kb`` in kB becomes
``sysmon_system_mem_total_bytes``, x1024; a ``_ms`` column ``_seconds``, /1000), a
counter an OpenMetrics ``counter`` whose samples end in ``_total``; the label columns
are labels beside ``host`` and ``vm``.  A state column (a status word, a qube's power
state) is one-hot series over its fixed values, so no text a qube chose can become a
label value there.  docs/integrations.md prints the table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence

import attrs

from sysmon.schema.files import DAILY_FILES, QUBE_STATES, Column, DailyFile, Role

__all__ = ["QUBE_STATES"]

#: A value cell the engines take: the writer's own number forms.
_INT_FORM = r"-?[0-9]{1,19}"
_DECIMAL_FORM = _INT_FORM + r"(?:\.[0-9]{1,6})?"
_INT = re.compile(_INT_FORM)
_DECIMAL = re.compile(_DECIMAL_FORM)


def _joined(item: str) -> re.Pattern[str]:
    """A whole column of ``item`` cells, comma-joined: checked in one pass, not cell by cell.

    Each item starts after a comma and holds none, so matching is linear.  No
    possessive quantifiers: Debian 12's Python 3.11.2 fullmatches "1," with them
    (fixed in later 3.11 releases).
    """
    return re.compile(f"{item}(?:,{item})*")


def _column(cells: Sequence[str], pattern: re.Pattern[str]) -> str | None:
    """The cells comma-joined if each is one ``pattern`` (:func:`_joined`) item, else None."""
    joined = ",".join(cells)
    if joined.count(",") != len(cells) - 1:  # a quoted cell with a comma: no number
        return None
    return joined if pattern.fullmatch(joined) else None


def _literal(text: str) -> str:
    """``text`` as it is, inside a :meth:`str.format` pattern."""
    return text.replace("{", "{{").replace("}", "}}")


#: Value cells that are JSON numbers as they are (no leading zero).
_JSON_INT = r"-?(?:0|[1-9][0-9]{0,18})"
_JSON_DECIMAL = _JSON_INT + r"(?:\.[0-9]{1,6})?"
_JOINED_INT = _joined(_JSON_INT)
_JOINED_DECIMAL = _joined(_JSON_DECIMAL)
#: One cell as the patterns above take it (no comma): each cell so, the column is.
_ONE_INT = re.compile(_JSON_INT)
_ONE_DECIMAL = re.compile(_JSON_DECIMAL)


@attrs.frozen
class Family:
    """One exported series family: a value column of a daily file."""

    daily: DailyFile
    column: Column

    @property
    def file(self) -> str:
        """The daily file's name."""
        return self.daily.file_name

    @property
    def kind(self) -> str:
        """``gauge`` or ``counter``, as the description says."""
        return self.column.type

    @property
    def unit(self) -> str:
        """The base unit the engines are given."""
        return self.column.base_unit[0]

    @property
    def factor(self) -> float:
        """What a stored cell is multiplied by to be in :attr:`unit`."""
        return self.column.base_unit[1]

    @property
    def help(self) -> str:
        """The family's help text."""
        source = self.daily.source
        what = f"as {source} reports it" if source in {"Xen", "the qube"} else f"from {source}"
        return f"{self.column.name} {what} ({self.unit})"

    @property
    def name(self) -> str:
        """``sysmon_<file>_<column>``, a stored unit's suffix made the base unit's."""
        column = self.column.name
        suffix = "_" + self.column.unit.lower()
        if self.factor != 1:  # the name says the base unit (4.4's memory_* name none)
            column = column.removesuffix(suffix) + "_" + self.unit
        return f"sysmon_{self.daily.stem}_{column}"

    @property
    def sample_name(self) -> str:
        """A sample's name: counters end in ``_total``."""
        return self.name + "_total" if self.kind == "counter" else self.name

    def value(self, cell: str) -> str | None:
        """The cell as this family's value text; None if empty or not a number."""
        if not cell:
            return None
        if self.factor == 1:
            return cell if _DECIMAL.fullmatch(cell) else None
        if not _INT.fullmatch(cell):
            return None
        if self.factor >= 1:
            return str(int(cell) * int(self.factor))
        return repr(int(cell) / round(1 / self.factor))

    def json_value(self, cell: str) -> str | None:
        """The cell as a JSON number (a leading zero, which JSON refuses, dropped)."""
        text = self.value(cell)
        if text is None or _JOINED_DECIMAL.fullmatch(text):
            return text
        # A point, or a scaled value's exponent (a 19-digit ms cell is 1e+16 s): a float.
        return repr(float(text)) if "." in text or "e" in text else str(int(text))

    def values(self, cells: Sequence[str]) -> Sequence[str] | None:
        """Every cell's value text, each a JSON number too; None unless all of them are.

        One regular-expression pass over the joined column (the common case: a
        whole day's cells all well formed) instead of one per cell.
        """
        if self._checked_join(cells) is None:
            return None
        return cells if self.factor == 1 else list(self._scaled(cells))

    def joined(self, cells: Sequence[str]) -> str | None:
        """:meth:`values` comma-joined (a JSON array's items), made without a list between."""
        if len(cells) >= 16 and cells[0] == cells[-1]:
            # Likely a column of a few values (errors at 0, a total that stays): each
            # value checked and scaled once, not each cell.  Else as any column.
            distinct = set(cells)
            one = _ONE_DECIMAL if self.factor == 1 else _ONE_INT
            if len(distinct) * 8 <= len(cells) and all(map(one.fullmatch, distinct)):
                if self.factor == 1:
                    return ",".join(cells)
                text = dict(zip(distinct, self._scaled(list(distinct)), strict=True))
                return ",".join(map(text.__getitem__, cells))
        joined = self._checked_join(cells)
        if joined is None or self.factor == 1:
            return joined
        return ",".join(self._scaled(cells))

    def _checked_join(self, cells: Sequence[str]) -> str | None:
        """The cells comma-joined if each is a number of this family's kind, else None.

        A decimal unscaled, else an integer: one pattern pass, not one a cell.
        """
        return _column(cells, _JOINED_DECIMAL if self.factor == 1 else _JOINED_INT)

    def _scaled(self, cells: Sequence[str]) -> Iterator[str]:
        """Integer cells times the factor, as text: a chain of C calls, no Python per cell."""
        if self.factor >= 1:
            return map(str, map(int(self.factor).__mul__, map(int, cells)))
        # int(cell) / divisor, each cell: the same float as the division written out.
        return map(repr, map(round(1 / self.factor).__rtruediv__, map(int, cells)))


def _exported(daily: DailyFile) -> bool:
    return any(c.role in {Role.VALUE, Role.STATE} for c in daily.columns)


#: The files exported as series, and which of their columns are labels (beside ``host``, ``vm``).
LABELS: Mapping[str, tuple[str, ...]] = {d.file_name: d.labels for d in DAILY_FILES if _exported(d)}

#: Every value family, in the order they are written (df's rounded percentage is not one:
#: its size and use are).
FAMILIES: tuple[Family, ...] = tuple(
    Family(daily, column)
    for daily in DAILY_FILES
    if _exported(daily)
    for column in daily.of_role(Role.VALUE)
    if column.kind != "pct"
)


@attrs.frozen
class OneHot:
    """A state column as one series per value it can take: 1 for the row's, 0 for the others."""

    daily: DailyFile
    column: Column

    @property
    def name(self) -> str:
        """``sysmon_<file>_<column>``."""
        return f"sysmon_{self.daily.stem}_{self.column.name}"

    @property
    def file(self) -> str:
        """The daily file's name."""
        return self.daily.file_name

    @property
    def label(self) -> str:
        """The label naming the value."""
        return self.column.name

    @property
    def choices(self) -> tuple[str, ...]:
        """The values it can take."""
        return self.column.values


#: The state columns, as one-hot families.
ONE_HOTS: tuple[OneHot, ...] = tuple(
    OneHot(daily, column)
    for daily in DAILY_FILES
    if _exported(daily)
    for column in daily.of_role(Role.STATE)
)
#: (name, file, column, label, the values it can take), as the tests and docs read them.
ONE_HOT = tuple((o.name, o.file, o.column.name, o.label, o.choices) for o in ONE_HOTS)
STATUSES = next(o.choices for o in ONE_HOTS if o.name == "sysmon_scrapes_status")
#: Rows left out because a qube named more label values in a day than allowed.
CUT_FAMILY = "sysmon_export_cut_rows"
CUT_HELP = "rows left out: a qube named too many label values in a day"


def escape_label(value: str) -> str:
    """An OpenMetrics label value's text: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(pairs: Mapping[str, str]) -> str:
    """``{a="x",b="y"}``."""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs.items()) + "}"


def openmetrics_header(name: str, kind: str, help_text: str) -> str:
    """A family's ``# TYPE`` and ``# HELP`` lines."""
    return f"# TYPE {name} {kind}\n# HELP {name} {escape_label(help_text)}\n"


def openmetrics_samples(
    sample: str, label_text: str, values: Sequence[str], ts_s: Sequence[str]
) -> str:
    """One series' samples, a line each: ``name{labels} value seconds``."""
    if not values:
        return ""
    head = f"{sample}{label_text} "
    # Joined in C: each (value, time) pair by a space, the pairs by the next line's head.
    return head + ("\n" + head).join(map(" ".join, zip(values, ts_s, strict=True))) + "\n"


def json_members(metric: Mapping[str, str]) -> str:
    """A metric's labels as JSON object members, without the braces (``"a":"x","b":"y"``)."""
    return json.dumps(dict(metric), ensure_ascii=False, separators=(",", ":"))[1:-1]


def json_series(members: str, values: str, ts_ms: str) -> str:
    """One series for VictoriaMetrics' ``/api/v1/import``: a line, its values and times as arrays.

    ``members`` as :func:`json_members` made them (``__name__`` among them);
    ``values`` the comma-joined JSON numbers, ``ts_ms`` the comma-joined milliseconds.
    """
    return f'{{"metric":{{{members}}},"values":[{values}],"timestamps":[{ts_ms}]}}\n'


def _influx_escape(text: str, specials: str) -> str:
    for char in specials:
        text = text.replace(char, "\\" + char)
    return text


def influx_key(text: str) -> str:
    """A tag key, tag value or field key as line protocol writes it.

    A backslash stays as it is: InfluxDB 1.x keeps one before any other character
    as it is (``My\\040Disk``) and has no escape for one of its own.
    """
    return _influx_escape(text, ",= ")


#: A tag value line protocol cannot hold: a newline (no escape for it), a backslash
#: before what would be escaped or at the end (it would escape the next character).
_NO_TAG = re.compile(r"\n|\\(?:[,= ]|\Z)")


def influx_tag(text: str) -> bool:
    """Whether ``text`` can be a tag value (:func:`influx_key`), read back as it is."""
    return _NO_TAG.search(text) is None


#: A whole column of Influx numbers: the writer's forms (leading zeros too), integers of
#: up to 18 digits (within int64 whatever they are; a 19-digit one is checked alone:
#: InfluxDB 1.x refuses a line whose integer is past int64).
_INFLUX_INTS = _joined(r"-?[0-9]{1,18}")
_INT64 = range(-(1 << 63), 1 << 63)
_INFLUX_DECIMALS = _joined(_DECIMAL_FORM)


def _influx_int(cell: str) -> bool:
    """Whether ``cell`` is an integer field InfluxDB takes: the writer's form, within int64."""
    return _INT.fullmatch(cell) is not None and int(cell) in _INT64


def _influx_decimal(cell: str) -> bool:
    return _DECIMAL.fullmatch(cell) is not None


def influx_fields(kind: str, name: str, cells: Sequence[str]) -> Sequence[str | None]:
    """Each cell as the field ``name=12i``, ``name=3.1`` or ``name="text"``; None if none.

    An empty cell has no field, nor a number cell not in the writer's form (nor an
    integer past int64, which InfluxDB 1.x refuses, nor a rounded percentage), nor a
    text cell with a newline, which line protocol cannot escape (a planted one would
    start a line of its own).  A column of numbers is
    checked in one pass when every cell is one.
    """
    key = influx_key(name) + "="
    if kind == "pct":
        return [None] * len(cells)
    if kind in {"int", "dec1", "dec2"}:
        form = _literal(key) + ("{}i" if kind == "int" else "{}")
        if _column(cells, _INFLUX_INTS if kind == "int" else _INFLUX_DECIMALS) is not None:
            return list(map(form.format, cells))
        one = _influx_int if kind == "int" else _influx_decimal
        return [form.format(cell) if one(cell) else None for cell in cells]
    # Text: few distinct values (a state, a status) or each its own; quoted once each.
    quoted = {
        cell: key + '"' + cell.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if cell and "\n" not in cell
        else None
        for cell in set(cells)
    }
    return list(map(quoted.__getitem__, cells))


#: The longest series key InfluxDB 1.x takes, with ``#!~#`` and a field key after it.
INFLUX_MAX_KEY = 65535


def influx_series(measurement: str, tags: Mapping[str, str]) -> str:
    """A series key as line protocol writes it: the measurement, its non-empty tags."""
    return _influx_escape(measurement, ", ") + "".join(
        f",{influx_key(k)}={influx_key(v)}" for k, v in tags.items() if v
    )


def influx_lines(
    measurement: str, tags: Mapping[str, str], fields: Sequence[str | None], ts_s: Sequence[int]
) -> str:
    """One series' lines of Influx line protocol, nanoseconds; a row without fields has none.

    ``fields`` as each row's comma-joined :func:`influx_fields`; empty tags are left out.
    """
    head = influx_series(measurement, tags)
    form = _literal(head) + " {} {}\n"
    if None in fields:
        kept = [(f, t) for f, t in zip(fields, ts_s, strict=True) if f is not None]
        fields, ts_s = [f for f, _ in kept], [t for _, t in kept]
    return "".join(map(form.format, fields, map((1_000_000_000).__mul__, ts_s)))


def loki_line(stream: Mapping[str, str], ts_ns: int, message: str) -> str:
    """One push body for Loki's ``/loki/api/v1/push``, on one line."""
    body = {"streams": [{"stream": dict(stream), "values": [[str(ts_ns), message]]}]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n"
