"""Log events are named once, in sysmon.events, and the modules log by those names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sysmon import events

SYSMON = Path(events.__file__).resolve().parent
LOG_METHODS = {"debug", "info", "warning", "error", "critical", "exception"}
#: Modules still logging by literal (not yet moved to the names here).
NOT_YET = {"collect/xen.py"}


def literal_events(path: Path) -> list[str]:
    """Event names a module passes to a logger as string literals."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LOG_METHODS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
        # _log_by_status(event, status, ...) in the daemon
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id.startswith("_log")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.append(str(node.args[0].value))
    return found


def test_names_are_unique_snake_case_words() -> None:
    """One name per event, in the journal's snake_case."""
    names = [v for k, v in vars(events).items() if k.isupper() and isinstance(v, str)]
    assert len(names) == len(set(names)) == len(events.ALL)
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", n) for n in names)


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(SYSMON.rglob("*.py")) if str(p.relative_to(SYSMON)) not in NOT_YET],
    ids=lambda p: str(p.relative_to(SYSMON)),
)
def test_modules_log_by_the_declared_names(path: Path) -> None:
    """No event name is a string literal at the call: a typo cannot start a new event."""
    assert literal_events(path) == []


def test_the_check_is_not_vacuous(tmp_path: Path) -> None:
    """A literal event name is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text('import structlog\nstructlog.get_logger().info("tick_dune", qubes=1)\n')
    assert literal_events(bad) == ["tick_dune"]


def test_the_modules_not_yet_moved_use_declared_names() -> None:
    """Until they log by constant, their literals are still names declared here."""
    for name in NOT_YET:
        assert set(literal_events(SYSMON / name)) <= events.ALL
