"""Shared fixtures: paths, required tools, hypothesis profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "handler" / "qubes.Metrics.Get"
FIXTURES = ROOT / "tests" / "fixtures"
IN_CI = os.environ.get("CI") == "true"
#: .ci/run sets this inside the Debian 13 root it builds, which takes nothing
#: from PyPI: what cannot be there is named here with the reason.
IN_DEBIAN_ROOT = os.environ.get("SYSMON_TEST_ROOT", "")
NOT_IN_DEBIAN_ROOT = {
    "salt-call": (
        "Salt is not packaged in Debian 13 and this root takes nothing from PyPI; "
        "the Salt tests run on the newest releases and on Debian 12, and the packages "
        "Salt installs are installed into this root from the host (test_packages.py)"
    ),
    "npm": (
        "the dashboard's types (@grafana/schema) come from the npm registry, which this "
        "root takes nothing from; they are checked on the host"
    ),
}

settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if IN_CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow: real processes on the real clock, Salt, "
        "packages, engines (.ci/run always does)",
    )
    parser.addoption(
        "--run-week-files",
        action="store_true",
        help="run docs/integrations.md's file lines on the generator's whole week, not "
        "one day of it (about 10 minutes of CPU and 28 GB of disk more)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A developer's default run leaves the slow tests out, by an explicit switch."""
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (.ci/run does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def handler_interpreter() -> str:
    """The interpreter the handler's first line names (mawk)."""
    return HANDLER.read_text().split("\n", 1)[0].removeprefix("#!").split()[0]


def require_tool(name: str) -> str:
    """Path of tool ``name``; skip the test without it, but fail in CI.

    .ci/run installs every tool the suite uses, so a missing one there is a
    broken CI, not a reason to pass quietly: in its Debian root too, whether
    or not the caller said CI=true (``sudo .ci/run`` drops it), or the engine
    tests would skip there unseen.
    """
    if IN_DEBIAN_ROOT and name in NOT_IN_DEBIAN_ROOT:
        pytest.skip(f"not in the {IN_DEBIAN_ROOT} root: {NOT_IN_DEBIAN_ROOT[name]}")
    path = shutil.which(name) or (name if Path(name).is_file() else None)
    if path is None:
        if IN_DEBIAN_ROOT:  # built by .ci/run with every tool but those named above
            pytest.fail(f"{name} is missing from the {IN_DEBIAN_ROOT} root (.ci/run's list)")
        if IN_CI:
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} not installed")
    return path


def listening(path: Path) -> bool:
    """Whether a Unix socket listens at ``path`` (as bound: the same string)."""
    with Path("/proc/net/unix").open() as table:
        next(table)
        for line in table:
            fields = line.rstrip("\n").split(None, 7)
            if len(fields) == 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
                return True
    return False


def wait_listening(path: Path, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Until ``process`` listens at ``path``: its file appears at bind(), before
    listen(), and a connect between the two is refused."""
    deadline = time.monotonic() + timeout
    while not listening(path):
        assert process.poll() is None, f"{process.args!r} exited {process.returncode}"
        assert time.monotonic() < deadline, f"nothing listened at {path} in {timeout} s"
        time.sleep(0.02)


#: ``python3 -c ASK_AGENT SOCKET ARGUMENT``: asks the agent's socket what qrexec
#: 4.3 asks for a poll from sys-monitor, and prints the answer (run by another
#: Python too: the one in a Debian root, or a namespace's).
ASK_AGENT = """
import socket, sys
with socket.socket(socket.AF_UNIX) as conn:
    conn.settimeout(30)
    conn.connect(sys.argv[1])
    conn.sendall(("qubes.Metrics.Get+" + sys.argv[2] + " sys-monitor\\0").encode())
    conn.shutdown(socket.SHUT_WR)
    while chunk := conn.recv(65536):
        sys.stdout.buffer.write(chunk)
"""


def require_root(why: str) -> None:
    """Skip without root, but fail in CI, which runs as root."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail(f"{why} needs root (CI runs as root)")
        pytest.skip(f"{why} needs root")


def run_on_small_tmpfs(
    script: str, size: str, tmp_path: Path, *, then: str = "", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the Python ``script`` with a fresh tmpfs of ``size`` as its first
    argument, in a mount namespace of its own: a real full disk, no fake.
    ``then`` is a shell command run after it (the tmpfs path is ``$1``)."""
    require_tool("unshare")
    require_root("a tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    program = tmp_path / "script.py"
    program.write_text(script)
    shell = f'mount -t tmpfs -o size={size} tmpfs "$1" && {sys.executable} {program} "$1"'
    if then:
        shell += f" && {then}"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", shell, "sh", str(mnt)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_sysmon(
    *args: object, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m sysmon ARGS`` from this checkout, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "sysmon", *map(str, args)],
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` on the real clock until true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(name="public_tmp")
def _public_tmp() -> Iterator[Path]:
    """A folder an unprivileged user can reach: a qube's user, the tcpdump user.

    Not under pytest's own folder: that is root-only, and any pytest started beside
    this one makes it so again, whatever a test opened.
    """
    path = Path(tempfile.mkdtemp(prefix="sysmon-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
