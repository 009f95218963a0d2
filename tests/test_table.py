"""The docs' column table is the schema's, made by ``python -m sysmon.schema``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sysmon import schema
from sysmon.schema.exposition import FAMILIES
from sysmon.schema.table import BEGIN, END, SERIES_BEGIN, SERIES_END, column_table, series_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def test_the_docs_table_is_the_generated_one() -> None:
    text = DOCS.read_text()
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    block = text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"
    assert block == column_table(), "run: python -m sysmon.schema, paste it between the markers"


def test_every_column_has_its_row_and_python_m_prints_the_table() -> None:
    table = column_table()
    for daily in schema.DAILY_FILES:
        for column in daily.columns[2:]:
            assert f"| `{daily.file_name}` | `{column.name}` |" in table
    printed = subprocess.run(
        [sys.executable, "-m", "sysmon.schema"], capture_output=True, text=True, check=True
    ).stdout
    assert printed == table


def test_a_column_changed_in_the_schema_changes_the_table() -> None:
    renamed = schema.DailyFile(
        "system.csv",
        (*schema.SYSTEM.columns[:2], schema.Column("cpu", "dec1", schema.Role.VALUE, "%", "gauge")),
    )
    table = column_table((renamed, *schema.DAILY_FILES[1:]))
    assert table != column_table()
    assert "| `system.csv` | `cpu` | `1.5` | value | gauge | % |  |" in table


def test_the_docs_series_table_is_the_generated_one() -> None:
    """Every exported family, as the export names it, is in the docs: made, not written."""
    text = DOCS.read_text()
    assert text.count(SERIES_BEGIN) == 1
    block = text[text.index(SERIES_BEGIN) : text.index(SERIES_END) + len(SERIES_END)] + "\n"
    assert block == series_table(), "run: python -m sysmon.schema series, paste it in"
    for family in FAMILIES:
        assert f"| `{family.name}" in block
    printed = subprocess.run(
        [sys.executable, "-m", "sysmon.schema", "series"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == block


def test_the_table_command_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    """`--help` or a typo printed the column table and exited 0; stdout on a full disk
    ended in a traceback."""
    command = [sys.executable, "-m", "sysmon.schema"]
    wrong = subprocess.run([*command, "serie"], capture_output=True, text=True, check=False)
    assert (wrong.returncode, wrong.stdout) == (2, "")
    assert wrong.stderr == "usage: python -m sysmon.schema [series]; got 'serie'\n"
    with Path("/dev/full").open("w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr == "python -m sysmon.schema: stdout: No space left on device\n"
