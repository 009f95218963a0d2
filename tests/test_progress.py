"""Progress on a terminal, quiet in a pipe (issue #28 item 3): export and report.

The terminal is a real pty (``pty.openpty()``) handed to the child as its
stderr; the pipe is ``capture_output``.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT, run_sysmon

from sysmon.commands.progress import EVERY, Progress
from sysmon.commands.report.read import ReportError, import_pandas
from sysmon.commands.report.render import import_pyplot


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_few_redraws_a_second_in_place():
    clock, out = Clock(), Terminal()
    progress = Progress("sysmon export", out, clock=clock)
    for i in range(1000):  # a thousand updates within one redraw interval
        clock.now = i * EVERY / 2000
        progress.update("day 1/2 2025-08-31", i * 100, "samples")
    assert out.getvalue().count("\r") == 1
    clock.now = 2.0
    progress.update("day 2/2 2025-09-01", 400_000, "samples", total=800_000)
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "\n" not in text
    last = text.rsplit("\r", 1)[1]
    assert last == "sysmon export: day 2/2 2025-09-01: 400,000 of 800,000 samples (50%), 200,000/s"
    progress.close()
    assert out.getvalue().endswith("\r")


def test_nothing_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress("sysmon export", out, clock=Clock())
    progress.update("day 1 of 1", 5, "samples")
    progress.close()
    assert out.getvalue() == ""


def test_no_control_characters_from_a_caller():
    out = Terminal()
    Progress("sysmon report", out, clock=Clock()).update("day \x1b]0;evil\x07\n", 1, "bytes")
    assert "\x1b" not in out.getvalue()
    assert "\n" not in out.getvalue()
    assert "0.0 MB" in out.getvalue()


def run_on_a_pty(*args: object, timeout: float = 120) -> tuple[int, str, bytes]:
    """``python -m sysmon ARGS`` with a pty as stderr: (exit status, stderr, stdout)."""
    return run_argv_on_a_pty([sys.executable, "-m", "sysmon", *map(str, args)], timeout)


def run_argv_on_a_pty(argv: list[str], timeout: float) -> tuple[int, str, bytes]:
    """``argv`` with a pty as stderr: (exit status, stderr, stdout)."""
    controller, terminal = pty.openpty()
    with tempfile.TemporaryFile() as stdout_file:
        child = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=stdout_file,
            stderr=terminal,
        )
        os.close(terminal)
        status, seen = _read_terminal(child, controller, timeout)
        stdout_file.seek(0)
        return status, seen.decode(errors="replace"), stdout_file.read()


def _read_terminal(
    child: subprocess.Popen[bytes], controller: int, timeout: float
) -> tuple[int, bytes]:
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                if child.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        status = child.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(controller)
        if child.poll() is None:
            child.kill()
            child.wait()
    return status, seen


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    done = run_sysmon("demo", "--duration", "2", "--interval", "1", "--out-dir", out, timeout=60)
    assert done.returncode == 0, done.stderr
    return out


def test_export_shows_progress_on_a_terminal(demo_out):
    status, stderr, stdout = run_on_a_pty("export", demo_out, "--no-ledger")
    assert status == 0, stderr
    # The first line is drawn at once (what follows comes a few times a second, if at all).
    assert re.search(
        r"\rsysmon export: (reading|day 1/1) \d{4}-\d\d-\d\d: [\d.,]+ (MB|samples)", stderr
    )
    assert stdout.endswith(b"# EOF\n")  # the progress never went to stdout
    # The summary starts on a clean line (the progress line cleared first).
    assert stderr.rstrip().rsplit("\r", 1)[-1].lstrip().startswith("sysmon export: 1 days")


def test_export_is_quiet_in_a_pipe(demo_out):
    done = run_sysmon("export", demo_out, "--no-ledger")
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert done.stderr.count("\n") == 1  # the summary, nothing else
    assert done.stderr.startswith("sysmon export: 1 days")


def test_report_shows_progress_on_a_terminal_and_is_quiet_in_a_pipe(demo_out, tmp_path):
    try:  # the report is an optional extra: skip without it, as test_report does
        import_pandas()
        import_pyplot()
    except ReportError:
        if IN_CI:
            raise
        pytest.skip("pandas or matplotlib not installed")
    status, stderr, _ = run_on_a_pty("report", demo_out, "--out", tmp_path / "tty")
    assert status == 0, stderr
    assert re.search(r"\rsysmon report: read day 1/1 \d{4}-\d\d-\d\d: [\d,]+ rows", stderr)
    done = run_sysmon("report", demo_out, "--out", tmp_path / "pipe", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert "sysmon report:" not in done.stderr


def test_the_realistic_generator_shows_progress_on_a_terminal_only(tmp_path):
    """bench/realistic.py takes a minute for a week: a line on a terminal, none in a pipe."""
    argv = [sys.executable, str(ROOT / "bench" / "realistic.py"), "--qubes", "2", "--days", "1"]
    status, stderr, stdout = run_argv_on_a_pty([*argv, str(tmp_path / "tty")], timeout=120)
    assert status == 0, stderr
    assert re.search(r"\rrealistic: day 1/1 2025-08-25: [\d,]+ of 17,280 polls", stderr)
    assert b"MB of CSV" in stdout
    done = subprocess.run(
        [*argv, str(tmp_path / "pipe")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
