"""run_bounded with real children on the real clock (fail_after guards hangs)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from sysmon.collect.process import run_bounded

GUARD = 10  # seconds: a hang fails the test instead of the suite


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it only waits to be reaped by its parent.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_gone(pid: int) -> bool:
    for _ in range(100):
        if not alive(pid):
            return True
        await trio.sleep(0.02)
    return False


class TestRunBounded:
    async def test_output_and_exit_code(self):
        with trio.fail_after(GUARD):
            result = await run_bounded(
                ["sh", "-c", "echo out; echo err >&2; exit 3"], max_stdout=100
            )
        assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
        assert not result.stdout_overflow

    async def test_stdin_is_closed(self):
        with trio.fail_after(GUARD):
            result = await run_bounded(["cat"], max_stdout=100)
        assert result.returncode == 0
        assert result.stdout == b""

    async def test_stdout_cap_kills_the_child(self):
        """100 MB from a qube: read up to the cap, then the child is killed."""
        with trio.fail_after(GUARD):
            result = await run_bounded(["sh", "-c", "head -c 104857600 /dev/zero"], max_stdout=4096)
        assert result.stdout_overflow
        assert len(result.stdout) == 4096

    async def test_stderr_capped_and_drained(self):
        """Stderr past what is kept (but under the drain cap) neither blocks nor fills memory."""
        with trio.fail_after(GUARD):
            result = await run_bounded(
                ["sh", "-c", "head -c 60000 /dev/zero >&2; echo done"],
                max_stdout=100,
                max_stderr=64,
            )
        assert result.stdout == b"done\n"
        assert len(result.stderr) == 64
        assert not result.stderr_overflow

    async def test_a_stderr_flood_kills_the_child(self):
        """A qube's service writing stderr without end (qrexec passes it to us).

        Drained to the end, it held a core of sys-monitor for as long as the
        call was allowed (2.1 s of CPU in 4 s); past the drain cap the call is
        killed, as for stdout.
        """
        with trio.fail_after(GUARD):
            result = await run_bounded(["sh", "-c", "yes >&2"], max_stdout=100, max_stderr=64)
        assert result.stderr_overflow
        assert result.returncode < 0
        assert result.stderr == b"y\n" * 32

    async def test_missing_program_is_oserror(self):
        with pytest.raises(OSError):
            await run_bounded(["/nonexistent/qrexec-client-vm"], max_stdout=10)

    async def test_timeout_kills_the_whole_group_even_ignoring_term(self, tmp_path):
        """A TERM-ignoring child and its grandchild are gone once the call returns."""
        pids = tmp_path / "pids"
        script = f"trap '' TERM; sleep 100 & echo $! > {pids}; echo $$ >> {pids}; wait"
        with trio.fail_after(GUARD):
            with trio.move_on_after(0.5) as scope:
                await run_bounded(["sh", "-c", script], max_stdout=100, kill_grace=0.3)
        assert scope.cancelled_caught
        for pid in map(int, pids.read_text().split()):
            assert await wait_gone(pid), pid

    async def test_grandchild_holding_the_pipe_does_not_hang(self, tmp_path):
        """The child exits but left a grandchild with our stdout: we still return."""
        pid_file = tmp_path / "pid"
        script = f"sleep 100 & echo $! > {pid_file}; echo done"
        with trio.fail_after(GUARD):
            result = await run_bounded(["sh", "-c", script], max_stdout=100)
        assert result.stdout == b"done\n"
        assert await wait_gone(int(pid_file.read_text()))

    async def test_killed_by_signal_is_negative(self):
        with trio.fail_after(GUARD):
            result = await run_bounded(["sh", "-c", "kill -KILL $$"], max_stdout=10)
        assert result.returncode == -signal.SIGKILL
