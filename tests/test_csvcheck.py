"""The strict reader the other tests check sysmon's files with: it must catch what it is for."""

from __future__ import annotations

from pathlib import Path

import pytest
from csvcheck import read_strict


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_a_formula_cell_is_caught(tmp_path: Path, start: str) -> None:
    """A text cell a spreadsheet would run fails the check, for every OWASP character
    (the list is the checker's own: with the code's, removing one from the code
    removed it from the check too)."""
    path = tmp_path / "alerts.csv"
    path.write_bytes(f'ts,vm,msg\n2025-09-01T00:00:00Z,work,"{start}1+1"\n'.encode())
    with pytest.raises(AssertionError):
        read_strict(path)


def test_a_neutralised_cell_passes(tmp_path: Path) -> None:
    path = tmp_path / "alerts.csv"
    path.write_text("ts,vm,msg\n2025-09-01T00:00:00Z,work,'=1+1\n")
    assert read_strict(path) == [{"ts": "2025-09-01T00:00:00Z", "vm": "work", "msg": "'=1+1"}]
