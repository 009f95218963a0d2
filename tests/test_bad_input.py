"""Bad input to the one-shot commands: exit status, one line naming what is wrong,
no traceback, nothing half-written, nothing lost.  Each runs ``python -m sysmon``
as a real child, as a user would."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, require_root, require_tool, run_on_small_tmpfs, run_sysmon

# Real processes on the real clock: left out of a default run (--run-slow).
pytestmark = pytest.mark.slow

START = datetime(2025, 8, 31, 22, 0, tzinfo=UTC)


def _realistic() -> ModuleType:
    """bench/realistic.py, the generator of realistic day folders."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import realistic  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return realistic


@pytest.fixture(scope="module", name="out")
def _out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small days (22:00 to 01:20 UTC) of two qubes, never archived."""
    out = tmp_path_factory.mktemp("bad-input") / "out"
    _realistic().generate(out, qubes=2, start=START, ticks=400, interval=30.0, seed=1)
    return out


def refused(done: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """The one line the command said; it exited ``status`` and named ``words``."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == status, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` and its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def run_read_only(folder: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """``python -m sysmon ARGS`` with ``folder`` read-only (a read-only bind mount in a
    mount namespace of its own: root ignores permission bits)."""
    require_root("a read-only bind mount")
    unshare = require_tool("unshare")
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    return subprocess.run(
        [unshare, "-m", "sh", "-c", script, str(folder), sys.executable, "-m", "sysmon"]
        + [str(a) for a in args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


DEMO = ("demo", "--duration", "2", "--interval", "0.5")
DEMO_ARGS = (sys.executable, "-m", "sysmon", "demo", "--duration", "60", "--interval", "0.5")


class TestOutDirIsAFile:
    def test_archive(self, tmp_path: Path) -> None:
        path = tmp_path / "a-file"
        path.write_text("mine\n")
        refused(run_sysmon("archive", "--no-copy", "--out-dir", path), 1, str(path), "folder")
        assert path.read_text() == "mine\n"

    def test_report(self, out: Path, tmp_path: Path) -> None:
        path = tmp_path / "a-file"
        path.write_text("mine\n")
        refused(run_sysmon("report", out, "--out", path, timeout=300), 1, str(path), "folder")
        assert path.read_text() == "mine\n"

    def test_demo(self, tmp_path: Path) -> None:
        path = tmp_path / "a-file"
        path.write_text("mine\n")
        refused(run_sysmon(*DEMO, "--out-dir", path), 1, str(path), "folder")
        assert path.read_text() == "mine\n"


class TestOutDirIsReadOnly:
    def test_archive(self, out: Path, tmp_path: Path) -> None:
        copy = tmp_path / "out"
        subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
        before = snapshot(copy)
        done = run_read_only(copy, "archive", "--no-copy", "--out-dir", copy)
        refused(done, 1, "Read-only file system")
        assert snapshot(copy) == before

    def test_report(self, out: Path, tmp_path: Path) -> None:
        folder = tmp_path / "ro"
        folder.mkdir()
        done = run_read_only(folder, "report", out, "--out", folder / "page")
        refused(done, 1, "Read-only file system", str(folder / "page"))
        assert snapshot(folder) == {}

    def test_demo(self, tmp_path: Path) -> None:
        """Not exit 0 with the rows of an earlier run shown as if just polled."""
        folder = tmp_path / "demo-out"
        assert run_sysmon(*DEMO, "--out-dir", folder).returncode == 0
        before = snapshot(folder)
        done = run_read_only(folder, *DEMO, "--out-dir", folder)
        refused(done, 1, "Read-only file system", str(folder))
        assert "(files under" not in done.stdout
        assert snapshot(folder) == before


def _corrupt_archives(out: Path, tmp_path: Path) -> list[Path]:
    garbage = tmp_path / "garbage" / "monitor-2025-09-01.tgz"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not gzip at all\n")
    built = run_sysmon("archive", "--no-copy", "--day", "2025-08-31", "--out-dir", out)
    assert built.returncode == 0, built.stderr
    whole = (out / "archives" / "monitor-2025-08-31.tgz").read_bytes()
    cut = tmp_path / "cut" / "monitor-2025-08-31.tgz"
    cut.parent.mkdir()
    cut.write_bytes(whole[: len(whole) // 2])
    flipped = tmp_path / "flipped" / "monitor-2025-08-31.tgz"
    flipped.parent.mkdir()
    middle = len(whole) // 2
    flipped.write_bytes(whole[:middle] + bytes([whole[middle] ^ 0xFF]) + whole[middle + 1 :])
    return [garbage, cut, flipped]


@pytest.fixture(name="corrupt")
def _corrupt(out: Path, tmp_path: Path) -> list[Path]:
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    return _corrupt_archives(copy, tmp_path)


def test_a_corrupt_archive_is_named_by_report(corrupt: list[Path], tmp_path: Path) -> None:
    for n, archive in enumerate(corrupt):
        page = tmp_path / f"page{n}"
        done = run_sysmon("report", archive, "--out", page, timeout=300)
        refused(done, 2, str(archive))
        assert not page.exists()


def test_a_corrupt_archive_is_named_by_export_and_the_output_file_is_kept(
    corrupt: list[Path], tmp_path: Path
) -> None:
    """The output file is opened only once the inputs read: a failed export leaves it as
    it was (it was emptied), and no temporary file beside it."""
    target = tmp_path / "exported" / "days.om"
    target.parent.mkdir()
    target.write_text("an earlier export\n")
    for archive in corrupt:
        done = run_sysmon("export", archive, "--no-ledger", "--host", "h", "-o", target)
        refused(done, 2, str(archive))
        assert target.read_text() == "an earlier export\n"
        assert list(target.parent.iterdir()) == [target]


def test_an_export_the_ledger_skips_whole_says_so_and_keeps_the_file(
    out: Path, tmp_path: Path
) -> None:
    """The second run of the same export left only "# EOF" in the file."""
    target, ledger = tmp_path / "days.om", tmp_path / "ledger"
    first = run_sysmon("export", out, "--host", "h", "--ledger", ledger, "-o", target)
    assert first.returncode == 0, first.stderr
    exported = target.read_text()
    assert exported.count("\n") > 100
    again = run_sysmon("export", out, "--host", "h", "--ledger", ledger, "-o", target)
    refused(again, 1, "exported before", "--no-ledger")
    assert target.read_text() == exported
    # The ledger's lock (one export at a time) stays beside it, empty.
    assert set(tmp_path.iterdir()) == {target, ledger, tmp_path / "ledger.lock"}


def test_an_export_into_a_missing_folder(out: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "days.om"
    refused(run_sysmon("export", out, "--host", "h", "--no-ledger", "-o", target), 1, str(target))


@pytest.mark.parametrize(
    "args",
    [
        ("--duration", "-1"),
        ("--duration", "nan"),
        ("--duration", "inf"),
        ("--interval", "0"),
        ("--interval", "-5"),
    ],
)
def test_demo_wants_positive_seconds(tmp_path: Path, args: tuple[str, str]) -> None:
    folder = tmp_path / "demo-out"
    refused(run_sysmon("demo", *args, "--out-dir", folder), 2, args[0])
    assert not folder.exists()


def test_ctrl_c_ends_the_demo_with_its_table(tmp_path: Path) -> None:
    """Ctrl-C printed 40 lines of exception group; now the demo stops like at the end
    of its duration, shows what it wrote, and exits 130 (killed by SIGINT)."""
    folder = tmp_path / "demo-out"
    child = subprocess.Popen(
        [*DEMO_ARGS, "--out-dir", str(folder)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if "polled 3 qubes" in line:
                break
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    done = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    refused(done, 130, "interrupted")
    assert f"(files under {folder})" in stdout


@pytest.mark.parametrize("width", ["0", "-5"])
def test_top_wants_a_positive_width(out: Path, width: str) -> None:
    """`--width 0` printed an empty first line and exited 1 (the rows were there);
    `--width -5` cut every line at 5 from its end."""
    done = run_sysmon("top", "--once", "--width", width, "--out-dir", out)
    refused(done, 2, "--width", width)
    assert done.stdout == ""


@pytest.mark.parametrize("args", [("top", "--once"), ("status",), ("run", "--interval", "1")])
def test_a_closed_stdout_is_named(out: Path, args: tuple[str, ...]) -> None:
    """`top --once >&-` and `run >&-` ended in an AttributeError's traceback (sys.stdout
    is None); `status >&-` said nothing."""
    closed = ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "sysmon"]
    done = subprocess.run(
        [*closed, *args, "--out-dir", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    refused(done, 1, f"sysmon {args[0]}", "standard output is closed")


def run_without_root_reads(*args: object) -> subprocess.CompletedProcess[str]:
    """``python -m sysmon ARGS`` as root without the capabilities that read past
    permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a mode 000 file is
    unreadable to it, as to the user it belongs to."""
    require_root("dropping root's capabilities")
    drop = "-dac_override,-dac_read_search"
    setpriv = [require_tool("setpriv"), f"--bounding-set={drop}", f"--inh-caps={drop}"]
    return subprocess.run(
        [*setpriv, sys.executable, "-m", "sysmon", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", [("status",), ("top", "--once")])
def test_an_unreadable_daily_file_is_named(out: Path, tmp_path: Path, args: tuple[str]) -> None:
    """It was shown as absent ("-", no poll recorded), the reason left out."""
    copy = tmp_path / "out"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)
    newest = max(copy.glob("20??-??-??")) / "scrapes.csv"
    newest.chmod(0)
    done = run_without_root_reads(*args, "--out-dir", copy)
    refused(done, 1, str(newest), "Permission denied")


FULL_DISK_REPORT = """
import json, sys
from pathlib import Path
from sysmon.cli import main
page = Path(sys.argv[1]) / "page"
status = main(["report", sys.argv[2], "--out", str(page)])
whole = {p.name: p.read_bytes().endswith(b"IEND\\xaeB`\\x82" if p.suffix == ".png" else b"</html>")
         for p in page.iterdir()}
print(json.dumps({"status": status, "whole": whole}))
"""


@pytest.mark.parametrize("size", ["150k", "700k"])
def test_report_on_a_full_disk_leaves_no_half_file(out: Path, tmp_path: Path, size: str) -> None:
    """A full disk left a cut network.png (150k) or index.html (700k), and its error
    ("[Errno 28] No space left on device") named no file."""
    script = FULL_DISK_REPORT.replace("sys.argv[2]", repr(str(out)))
    done = run_on_small_tmpfs(script, size, tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 1
    assert all(result["whole"].values()), result["whole"]
    assert "index.html" not in result["whole"]
    line = refused(subprocess.CompletedProcess([], 1, "", done.stderr), 1, "No space left")
    assert "/page/" in line, line


@pytest.mark.parametrize("term", ["dumb", "unknown-terminal"])
def test_top_on_a_terminal_that_cannot_move_the_cursor(out: Path, term: str) -> None:
    """On TERM=dumb top drew its lines run together on one row, refreshed each second,
    and exited 0 at `q`: now it says the terminal cannot be drawn on, as for an unknown
    TERM, and exits 2."""
    leader, follower = os.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "sysmon", "top", "--out-dir", str(out)],
            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": term},
            stdin=follower,
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stderr = child.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            child.kill()
            stderr = child.communicate()[1]
    finally:
        os.close(follower)
        os.close(leader)
    done = subprocess.CompletedProcess(child.args, child.returncode, "", stderr)
    refused(done, 2, "cannot draw on this terminal", f"TERM={term}")


def test_a_config_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    """`--config FIFO` waited for ever for a writer to the FIFO."""
    fifo = tmp_path / "sysmon.toml"
    os.mkfifo(fifo)
    done = run_sysmon("status", "--config", fifo, "--out-dir", tmp_path, timeout=60)
    refused(done, 2, str(fifo), "not a regular file (a FIFO)")


def test_demo_with_no_poll_in_its_duration_says_so_on_stderr(tmp_path: Path) -> None:
    """Exit 1 with "no tick within the duration" on stdout: the reason was not where
    `2>` or a terminal's red text puts it, nor said what to change."""
    done = run_sysmon("demo", "--duration", "0.1", "--interval", "60", "--out-dir", tmp_path)
    refused(done, 1, "--duration 0.1", "--interval 60")


@pytest.fixture(scope="module", name="busy")
def _busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days of eight qubes every 10 s: the report's workers read for seconds."""
    out = tmp_path_factory.mktemp("busy") / "out"
    _realistic().generate(out, qubes=8, start=START, ticks=3 * 8640, interval=10.0, seed=2)
    return out


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command's name (state first); None once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


#: Indexes in :func:`_stat`'s fields (proc(5) numbers them from 1, with the pid and name).
_STATE, _PPID, _SESSION, _STARTED = 0, 1, 3, 19


def _processes() -> dict[int, list[str]]:
    """Every process and its :func:`_stat` fields."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = fields
    return found


def _workers(report: int, cmdline: bytes) -> dict[int, str]:
    """The report's worker processes, each with its start time (a PID used again later is
    not it): its children forked with its command line, not fc-list nor another program."""
    found = {}
    for pid, fields in _processes().items():
        if fields[_PPID] != str(report) or fields[_STATE] == "Z":
            continue
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                found[pid] = fields[_STARTED]
        except OSError:
            continue  # gone meanwhile
    return found


def _running(workers: dict[int, str]) -> list[int]:
    """Those of ``workers`` still running: a zombie no one has reaped yet has ended."""
    return [
        pid
        for pid, started in workers.items()
        if (fields := _stat(pid)) is not None
        and fields[_STARTED] == started
        and fields[_STATE] != "Z"
    ]


def _to_eof(child: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes] | None:
    """``child``'s stdout and stderr, read until both are at EOF -- every process holding
    them has ended -- or None if they are not within ``timeout`` seconds."""
    assert child.stdout is not None
    assert child.stderr is not None
    got = {child.stdout.fileno(): b"", child.stderr.fileno(): b""}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for fd in got:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for key, _ in selector.select(left):
                if chunk := os.read(key.fd, 65536):
                    got[key.fd] += chunk
                else:
                    selector.unregister(key.fd)
    return got[child.stdout.fileno()], got[child.stderr.fileno()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_report_takes_its_workers_along(
    busy: Path, tmp_path: Path, signum: signal.Signals
) -> None:
    """Killed (`kill PID`, or -9), a report left its worker processes blocked for ever on
    the pool's pipes, holding the caller's stdout and stderr: `sysmon report | tee x`
    never ended.  SIGTERM also says so in one line and exits 143."""
    from sysmon.commands.report.read import units  # noqa: PLC0415 -- pandas, for this test only
    from sysmon.commands.report.reduce import shares  # noqa: PLC0415
    from sysmon.commands.report.workers import how_many  # noqa: PLC0415

    # The pool that reads the days (and the one that sums them up) is this big; the
    # one that draws has one fewer, the report drawing its share itself.
    pool = how_many(None, len(shares(units([busy]))))
    if pool < 2:
        pytest.skip("one core: the report reads in its own process, with no worker")
    args = [sys.executable, "-m", "sysmon", "report", str(busy), "--out", str(tmp_path / "page")]
    # Its workers' command line: as forked, not started anew (fc-list's is not).  Known
    # from its argv: /proc has it empty until exec(2) has set it up.
    cmdline = b"".join(os.fsencode(arg) + b"\0" for arg in args)
    child = subprocess.Popen(
        args,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        # The signal once the pool is whole: not while it is being forked, nor between pools.
        while len(workers := _workers(child.pid, cmdline)) != pool:
            assert child.poll() is None, f"the report ended before its {pool} workers were seen"
            assert time.monotonic() < deadline, f"no pool of {pool} within 120 s: {workers}"
            time.sleep(0.01)
        os.kill(child.pid, signum)
        ends = _to_eof(child, timeout=90)
        assert ends is not None, (
            f"its stdout and stderr still open 90 s after {signum.name}: workers "
            f"{sorted(workers)}, of which still running {_running(workers)}"
        )
        for _ in range(100):  # EOF: each has closed its files, if not yet quite ended
            if not _running(workers):
                break
            time.sleep(0.1)
        assert _running(workers) == [], f"of workers {sorted(workers)}"
        child.wait(timeout=60)
    finally:
        for pid, fields in _processes().items():  # whatever the report started is ended
            if fields[_SESSION] == str(child.pid) and fields[_STATE] != "Z":
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(pid, signal.SIGKILL)
        child.wait()
        assert child.stdout is not None
        assert child.stderr is not None
        child.stdout.close()
        child.stderr.close()
    if signum == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL
        return
    done = subprocess.CompletedProcess(child.args, child.returncode, "", ends[1].decode())
    refused(done, 128 + signal.SIGTERM, "sysmon report: terminated")
    assert ends[0] == b""
