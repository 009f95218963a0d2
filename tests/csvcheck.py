"""Read sysmon's files strictly, the way Go's encoding/csv and Telegraf do."""

from __future__ import annotations

import csv
from pathlib import Path

from sysmon import schema

#: What a spreadsheet takes for a formula (OWASP "CSV Injection"), written out
#: here, not imported from the code this checks: a change there must not move
#: the check with it.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def read_strict(path: Path) -> list[dict[str, str]]:
    """Every row of ``path``; fails on a ragged row, a bad quote or a stray CR."""
    daily = next(s for s in schema.DAILY_FILES if s.file_name == path.name)
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path}: last line not terminated"
    assert b"\r" not in data, f"{path}: carriage return"
    text = data.decode("utf-8")
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    header = next(reader)
    assert header == [c.name for c in daily.columns], f"{path}: header {header}"
    rows = []
    for row in reader:
        assert len(row) == len(header), f"{path}: {len(row)} fields in {row}"
        record = dict(zip(header, row, strict=True))
        for column in daily.text_columns:
            assert not record[column].startswith(FORMULA_START), f"{path}: formula in {record}"
        rows.append(record)
    # One physical line per row: no field holds a newline.
    assert len(rows) == text.count("\n") - 1
    return rows


def read_day(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Every file of a day folder, strictly read."""
    return {s.file_name: read_strict(folder / s.file_name) for s in schema.DAILY_FILES}
