"""The docs' table of the daily files' columns, made from their description.

``python -m sysmon.schema`` prints it; docs/integrations.md holds it between
the markers :data:`BEGIN` and :data:`END`, and tests/test_table.py checks the
two agree.
"""

from __future__ import annotations

from sysmon.schema.files import DAILY_FILES, Column, DailyFile

BEGIN = "<!-- columns: made by `python -m sysmon.schema`; do not edit by hand -->"
END = "<!-- end of columns -->"

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
