"""Imports point one way: from the commands down to the pure leaves.

protocol -> (schema, records) -> collect, transform, store -> config ->
commands -> cli.  The file layer is handed what to write and never imports
the poller or the transforms; nothing pure imports trio.  Read from the
source with ``ast``, so an arrow that runs back up fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SYSMON = Path(__file__).resolve().parent.parent / "sysmon"

#: What each part may import of sysmon (besides itself).
ALLOWED: dict[str, set[str]] = {
    "sysmon.events": set(),  # the log events' names: a leaf any part may name
    "sysmon.protocol": set(),
    "sysmon.schema": {"sysmon.protocol", "sysmon.records", "sysmon.events"},
    "sysmon.records": {"sysmon.protocol", "sysmon.events"},
    "sysmon.collect": {"sysmon.protocol", "sysmon.records", "sysmon.events"},
    "sysmon.transform": {"sysmon.protocol", "sysmon.records", "sysmon.schema", "sysmon.events"},
    "sysmon.store": {"sysmon.protocol", "sysmon.records", "sysmon.schema", "sysmon.events"},
    "sysmon.config": {"sysmon.protocol", "sysmon.records", "sysmon.transform", "sysmon.events"},
    "sysmon.logconfig": {"sysmon.events"},
    "sysmon.commands": {
        "sysmon",  # the root holds only __version__
        "sysmon.protocol",
        "sysmon.schema",
        "sysmon.records",
        "sysmon.collect",
        "sysmon.transform",
        "sysmon.store",
        "sysmon.config",
        "sysmon.events",
    },
    "sysmon.cli": {
        "sysmon",
        "sysmon.commands",
        "sysmon.config",
        "sysmon.logconfig",
        "sysmon.events",
    },
    "sysmon.__main__": {"sysmon.cli"},
    "sysmon": set(),
}
#: Parts that must not touch trio, files or processes.
PURE = ("sysmon.protocol", "sysmon.schema", "sysmon.records", "sysmon.transform", "sysmon.events")
IMPURE_MODULES = {"trio", "subprocess", "os", "socket", "tarfile", "fcntl", "shutil"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SYSMON.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(name: str) -> str:
    """The layer a module belongs to: its package, or itself at the root."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "sysmon":
            for alias in node.names:  # a submodule, or a name of the package itself
                is_module = (SYSMON / alias.name).is_dir() or (SYSMON / f"{alias.name}.py").exists()
                found.add(f"sysmon.{alias.name}" if is_module else "sysmon")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = sorted(SYSMON.rglob("*.py"))


def upward(name: str, imported: set[str]) -> list[str]:
    """What module ``name`` imports that is not its own part or below it."""
    part = part_of(name)
    assert part in ALLOWED, f"{name}: a part the layer map does not know"
    allowed = ALLOWED[part] | {part}
    return sorted(i for i in imported if i.startswith("sysmon") and part_of(i) not in allowed)


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_down(path):
    """Each module imports only its own part and the parts below it."""
    assert upward(module_name(path), imports(path)) == [], module_name(path)


@pytest.mark.parametrize(
    "path",
    [p for p in MODULES if part_of(module_name(p)) in PURE],
    ids=module_name,
)
def test_pure_parts_do_no_io(path):
    """protocol, schema, records and transform import no trio, no files, no processes."""
    assert imports(path) & IMPURE_MODULES == set()


def test_only_one_module_spawns_processes():
    """collect/process.py is the only spawner."""
    spawners = {
        module_name(p)
        for p in MODULES
        if {"subprocess"} & imports(p)
        or "open_process" in p.read_text()
        or "run_process" in p.read_text()
    }
    assert spawners == {"sysmon.collect.process"}


#: Inside the store, each module does one job: the read side (finding days)
#: writes nothing, delivery and retention stand apart from building archives.
STORE_APART: dict[str, set[str]] = {
    "sysmon.store.days": {
        "sysmon.store.archive",
        "sysmon.store.commit",
        "sysmon.store.delivery",
        "sysmon.store.retention",
        "sysmon.store.state",
    },
    "sysmon.store.delivery": {
        "sysmon.store.archive",
        "sysmon.store.commit",
        "sysmon.store.retention",
    },
    "sysmon.store.retention": {"sysmon.store.archive", "sysmon.store.commit"},
}


@pytest.mark.parametrize("name", sorted(STORE_APART))
def test_store_modules_keep_to_their_job(name):
    """days, delivery and retention import none of the store modules above them."""
    path = SYSMON.parent / (name.replace(".", "/") + ".py")
    assert imports(path) & STORE_APART[name] == set()


def test_store_apart_is_not_vacuous(tmp_path):
    """A read-side module importing the delivery markers is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from sysmon.store.delivery import is_delivered\n")
    assert imports(bad) & STORE_APART["sysmon.store.days"] != set()


@pytest.mark.parametrize(
    ("name", "source"),
    [
        ("sysmon.store.commit", "from sysmon.transform.rows import build_tick_rows\n"),
        ("sysmon.protocol.admin", "from sysmon.collect.qrexec import Qrexec\n"),
        ("sysmon.transform.rows", "import sysmon.commands.daemon\n"),
        ("sysmon.cli", "from sysmon.collect.xen import XenFollower\n"),
    ],
)
def test_an_arrow_up_is_caught(tmp_path, name, source):
    """The check is not vacuous: each of these arrows fails it."""
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    assert upward(name, imports(bad)) != []
