"""Imports point one way: from the commands down to the pure leaves.

protocol -> (schema, records) -> collect, transform, store -> config ->
commands -> cli.  The file layer is handed what to write and never imports
the poller or the transforms; nothing pure imports trio.  The commands that
read the files (report, export, status, top) read them through the codec and
the store, never the poller or the transforms, and commands import each other
only along the arrows listed here.  Read from the
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


def test_only_the_reports_workers_start_worker_processes():
    """Worker processes (the report's reading and drawing, a core each) start in
    report/workers.py alone; the daemon, a long-lived trio process, starts none."""
    pools = {
        module_name(p)
        for p in MODULES
        if {"concurrent.futures", "multiprocessing"} & imports(p)
        or "ProcessPoolExecutor" in p.read_text()
    }
    assert pools == {"sysmon.commands.report.workers"}


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


#: The commands that read what the daemon wrote: through the codec (sysmon.schema)
#: and the store's read API, never the poller or the transforms.
READERS = ("sysmon.commands.report", "sysmon.commands.export", "sysmon.commands.status",
           "sysmon.commands.top")  # fmt: skip
NOT_READ_SIDE = {"sysmon.collect", "sysmon.transform"}
#: Imports a reader still makes that this rule forbids, each to go (issue #25, item 3).
PENDING: set[tuple[str, str]] = set()  # the export's exposition went beside the codec
#: The arrows allowed between commands (a shared helper, progress, is no command).
BETWEEN_COMMANDS = {
    ("sysmon.commands.top", "sysmon.commands.status"),  # the same tail of today's files
    ("sysmon.commands.daemon", "sysmon.commands.archive"),  # the nightly archive
    ("sysmon.commands.once", "sysmon.commands.daemon"),  # one tick of the daemon's
    ("sysmon.commands.demo", "sysmon.commands.daemon"),
    ("sysmon.commands.daemon", "sysmon.commands.notify"),  # a rule's desktop notification
    ("sysmon.commands.demo", "sysmon.commands.notify"),  # says when none can be shown
}
#: Helpers of several commands, no command of their own.
SHARED = {"sysmon.commands.progress", "sysmon.commands.offload"}


def command_of(name: str) -> str:
    """The command a module belongs to: ``sysmon.commands.report`` for its read.py."""
    return ".".join(name.split(".")[:3])


def read_side(name: str, imported: set[str]) -> list[str]:
    """What reader module ``name`` imports of the poller or the transforms."""
    return sorted(
        i for i in imported
        if part_of(i) in NOT_READ_SIDE and (command_of(name), i) not in PENDING
    )  # fmt: skip


def other_commands(name: str, imported: set[str]) -> list[str]:
    """The commands module ``name`` imports besides its own, not in :data:`BETWEEN_COMMANDS`."""
    own = command_of(name)
    return sorted(
        i for i in imported
        if i.startswith("sysmon.commands.") and command_of(i) not in {own, *SHARED}
        and (own, command_of(i)) not in BETWEEN_COMMANDS
    )  # fmt: skip


COMMANDS = [p for p in MODULES if module_name(p).startswith("sysmon.commands.")]


@pytest.mark.parametrize(
    "path", [p for p in COMMANDS if command_of(module_name(p)) in READERS], ids=module_name
)
def test_readers_never_import_the_poller_or_the_transforms(path):
    assert read_side(module_name(path), imports(path)) == []


@pytest.mark.parametrize("reader", READERS)
def test_each_reader_reads_through_the_codec_and_the_store(reader):
    """The command as a whole imports the codec and the store's read API."""
    found = set()
    for path in COMMANDS:
        if command_of(module_name(path)) == reader:
            found |= {part_of(i) for i in imports(path)}
    assert {"sysmon.schema", "sysmon.store"} <= found, reader


@pytest.mark.parametrize("path", COMMANDS, ids=module_name)
def test_commands_import_each_other_only_as_listed(path):
    assert other_commands(module_name(path), imports(path)) == []


def test_the_pending_exceptions_are_still_there():
    """An exception that is no longer needed is taken off the list."""
    for reader, imported in PENDING:
        found = set().union(*(imports(p) for p in COMMANDS if command_of(module_name(p)) == reader))
        assert imported in found, f"{reader} no longer imports {imported}: drop it from PENDING"


@pytest.mark.parametrize(
    ("name", "source", "check"),
    [
        ("sysmon.commands.report.read", "from sysmon.transform.rules import Rule\n", read_side),
        ("sysmon.commands.status", "import sysmon.collect.process\n", read_side),
        ("sysmon.commands.status", "from sysmon.commands.daemon import Daemon\n", other_commands),
        ("sysmon.commands.report.render", "from sysmon.commands.top import main\n", other_commands),
    ],
)
def test_a_reader_or_command_arrow_is_caught(tmp_path, name, source, check):
    """The read side's and the commands' rules are not vacuous."""
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    assert check(name, imports(bad)) != []


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


#: Modules tested in another module's tests (the one that drives them), not a
#: ``test_<module>.py`` of their own.
TESTED_WITH = {
    "sysmon.__main__": "test_bad_input.py",  # python -m sysmon, as a user runs it
    "sysmon.cli": "test_bad_input.py",  # every command's exit status and one line
    "sysmon.logconfig": "test_daemon_process.py",  # JSON lines from the real daemon
    "sysmon.records": "test_rows.py",
    "sysmon.protocol.metrics": "test_parse.py",
    "sysmon.protocol.xen_events": "test_xen.py",
    "sysmon.collect.qrexec": "test_fakequbes.py",  # against the recorded qrexec
    "sysmon.transform.tick": "test_daemon.py",
    "sysmon.store.fs": "test_commit.py",
    "sysmon.store.identity": "test_host_identity.py",
    "sysmon.schema.files": "test_schema.py",
    "sysmon.schema.exposition": "test_export.py",
    "sysmon.schema.__main__": "test_table.py",
    "sysmon.commands.offload": "test_daemon.py",
    "sysmon.commands.report.render": "test_report.py",
    "sysmon.commands.report.workers": "test_report.py",  # one process against two
    "sysmon.commands.export.ledger": "test_export.py",
    "sysmon.commands.export.series": "test_export.py",
    "sysmon.commands.export.push": "test_export.py",
}


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__init__.py"], ids=module_name)
def test_every_module_has_its_tests(path):
    """A test module of its own, or the one named in TESTED_WITH (which exists)."""
    tests = Path(__file__).parent
    own = tests / f"test_{path.stem}.py"
    named = TESTED_WITH.get(module_name(path))
    if named is None:
        assert own.is_file(), f"{module_name(path)}: no {own.name}, nor a TESTED_WITH entry"
    else:
        assert not own.is_file(), f"{own.name} exists: drop {module_name(path)} from TESTED_WITH"
        assert (tests / named).is_file(), named
