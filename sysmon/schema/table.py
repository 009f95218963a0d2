"""The docs' tables of the daily files' columns and exported series, made from the description.

``python -m sysmon.schema`` prints the first, ``python -m sysmon.schema
series`` the second; docs/integrations.md holds each between its markers, and
tests/test_table.py checks they agree.
"""

from __future__ import annotations

from sysmon.schema.exposition import CUT_FAMILY, FAMILIES, ONE_HOTS, Family
from sysmon.schema.files import DAILY_FILES, Column, DailyFile

BEGIN = "<!-- columns: made by `python -m sysmon.schema`; do not edit by hand -->"
END = "<!-- end of columns -->"
SERIES_BEGIN = "<!-- series: made by `python -m sysmon.schema series`; do not edit by hand -->"
SERIES_END = "<!-- end of series -->"

#: How each kind of cell is written.
_WRITTEN = {
    "ts": "`2025-08-31T12:00:10Z`",
    "name": "text",
    "text": "text",
    "int": "integer",
    "dec1": "`1.5`",
    "dec2": "`0.25`",
    "pct": "`42%`",
}


def _row(where: str, column: Column) -> str:
    what = column.help.replace("|", "\\|")
    if column.values:
        what += ": " + ", ".join(column.values)
    cells = (
        where,
        f"`{column.name}`",
        _WRITTEN[column.kind],
        str(column.role),
        column.type,
        column.unit,
        what,
    )
    return "| " + " | ".join(cells) + " |"


def column_table(files: tuple[DailyFile, ...] = DAILY_FILES) -> str:
    """The markdown table, markers included, ending in a newline."""
    lines = [
        BEGIN,
        "| file | column | written as | role | type | unit | what |",
        "|---|---|---|---|---|---|---|",
    ]
    head = files[0].columns[:2]
    lines += [_row("every file", column) for column in head]
    for daily in files:
        if daily.columns[:2] != head:
            raise ValueError(f"{daily.file_name} does not start as the others do")
        lines += [_row(f"`{daily.file_name}`", column) for column in daily.columns[2:]]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _family_row(family: Family) -> str:
    counter = family.kind == "counter"
    name = family.name + ("_total" if counter else "")
    factor = family.factor
    times, over = "\N{MULTIPLICATION SIGN}", "\N{DIVISION SIGN}"
    scaled = (
        "" if factor == 1 else f" ({times}{factor:g})" if factor > 1 else f" ({over}{1 / factor:g})"
    )
    labels = ", ".join(("host", "vm", *family.daily.labels))
    where = f"`{family.file}` `{family.column.name}`{scaled}"
    return f"| `{name}` | {family.kind} | {family.unit} | {where} | {labels} |"


def series_table() -> str:
    """The markdown table of every exported family, markers included, ending in a newline."""
    lines = [
        SERIES_BEGIN,
        "| series | type | unit | from | labels |",
        "|---|---|---|---|---|",
    ]
    lines += [_family_row(family) for family in FAMILIES]
    for one in ONE_HOTS:
        values = ", ".join(one.choices)
        where = f"`{one.file}` `{one.column.name}`: one series per value ({values})"
        lines.append(
            f"| `{one.name}` | gauge, one-hot | 1 or 0 | {where} | host, vm, {one.label} |"
        )
    lines.append(
        f"| `{CUT_FAMILY}` | gauge | rows | rows a qube's day gave past the label caps, "
        'at the day\'s last time (past 64 qubes a day, summed under `vm="(others)"`) '
        "| host, vm, file |"
    )
    lines.append(SERIES_END)
    return "\n".join(lines) + "\n"
