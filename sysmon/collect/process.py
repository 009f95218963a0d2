"""Run a child process with bounded output.  The only module that spawns.

The caller owns the timeout: wrap :func:`run_bounded` in
``trio.move_on_after`` and check ``cancelled_caught``.  Whatever ends the
call -- normal exit, too much output, cancellation -- no process is left
behind: the child runs in its own session and the whole process group is
signalled (TERM, then KILL after ``kill_grace`` seconds).  trio's own
``run_process`` waits 5 s and warns instead, and signals only the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import attrs
import trio

DEFAULT_KILL_GRACE = 1.0
READ_CHUNK = 65536
#: Stderr read (and dropped past what is kept) before the child is killed:
#: qrexec hands a qube's service stderr to the caller, and draining it
#: without end held a core of sys-monitor for as long as the call lasted.
MAX_STDERR_DRAIN = 65536


@attrs.frozen
class ProcessResult:
    """How a child ended and what it printed (each stream capped).

    ``returncode`` is negative when a signal ended the child (-9 after our
    kill); ``stdout_overflow`` is set when it printed more than the cap, in
    which case it was killed and ``stdout`` holds the first bytes only;
    ``stderr_overflow`` when it wrote more than :data:`MAX_STDERR_DRAIN` to
    stderr, in which case it was killed too.
    """

    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_overflow: bool = False
    stderr_overflow: bool = False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: the group is already gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _reap(process: trio.Process, kill_grace: float) -> None:
    """TERM the group, give it ``kill_grace`` seconds, KILL it, wait."""
    _signal_group(process.pid, signal.SIGTERM)
    with trio.move_on_after(kill_grace):
        await process.wait()
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


@contextlib.asynccontextmanager
async def _child_in_own_session(
    argv: Sequence[str], env: Mapping[str, str] | None, kill_grace: float
) -> AsyncIterator[tuple[trio.Process, trio.abc.ReceiveStream, trio.abc.ReceiveStream]]:
    """Start ``argv`` (stdin closed) in a session of its own.

    Whatever ends the block, its whole process group is reaped and our ends
    of its pipes are closed.
    """
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(env) if env is not None else None,
    )
    assert process.stdout is not None  # noqa: S101 -- PIPE was asked for
    assert process.stderr is not None  # noqa: S101
    try:
        yield process, process.stdout, process.stderr
    except BaseException:
        with trio.CancelScope(shield=True):
            await _reap(process, kill_grace)
        raise
    finally:
        with trio.CancelScope(shield=True):
            await process.stdout.aclose()
            await process.stderr.aclose()


async def _wait_then_clear_group(process: trio.Process) -> None:
    await process.wait()
    # The child is gone; anything it left in its session could hold our
    # pipes open forever.
    _signal_group(process.pid, signal.SIGKILL)


def _exit_status(process: trio.Process) -> int:
    returncode = process.returncode
    assert returncode is not None  # noqa: S101 -- wait() returned
    return returncode


async def run_bounded(
    argv: Sequence[str],
    *,
    max_stdout: int,
    max_stderr: int = 4096,
    env: Mapping[str, str] | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE,
) -> ProcessResult:
    """Run ``argv`` with stdin closed; read stdout up to ``max_stdout`` bytes.

    Stderr: the first ``max_stderr`` bytes are kept, more is read and dropped
    (the child never blocks on a full pipe), and past :data:`MAX_STDERR_DRAIN`
    the child is killed.

    Raises:
        OSError: the program could not be started (for example not on PATH).

    Cancellation: the process group is terminated and reaped (at most
    ``kill_grace`` seconds more), then ``Cancelled`` propagates.
    """
    out = bytearray()
    err = bytearray()
    overflow = err_overflow = False
    async with _child_in_own_session(argv, env, kill_grace) as (process, stdout, stderr):

        async def read_stdout() -> None:
            nonlocal overflow
            while chunk := await stdout.receive_some(READ_CHUNK):
                out.extend(chunk)
                if len(out) > max_stdout:
                    overflow = True
                    del out[max_stdout:]
                    _signal_group(process.pid, signal.SIGKILL)
                    return

        async def read_stderr() -> None:
            nonlocal err_overflow
            drained = 0
            while chunk := await stderr.receive_some(READ_CHUNK):
                room = max_stderr - len(err)
                if room > 0:
                    err.extend(chunk[:room])
                drained += len(chunk)
                if drained > MAX_STDERR_DRAIN:
                    err_overflow = True
                    _signal_group(process.pid, signal.SIGKILL)
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stdout)
            nursery.start_soon(read_stderr)
            await _wait_then_clear_group(process)
    return ProcessResult(
        returncode=_exit_status(process),
        stdout=bytes(out),
        stderr=bytes(err),
        stdout_overflow=overflow,
        stderr_overflow=err_overflow,
    )


async def run_streaming(
    argv: Sequence[str],
    on_chunk: Callable[[bytes], None],
    *,
    kill_grace: float = DEFAULT_KILL_GRACE,
) -> int:
    """Run ``argv`` (stdin closed), handing each stdout chunk to ``on_chunk``.

    For event streams that never end by themselves (``admin.vm.Stats``).
    Returns the exit status once stdout closes and the child exits; stderr is
    drained and dropped.  ``on_chunk`` may raise to stop the stream.

    Raises:
        OSError: the program could not be started.

    Cancellation: as :func:`run_bounded`, the group is terminated and reaped.
    """
    async with _child_in_own_session(argv, None, kill_grace) as (process, stdout, stderr):

        async def drain_stderr() -> None:
            while await stderr.receive_some(READ_CHUNK):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain_stderr)
            while chunk := await stdout.receive_some(READ_CHUNK):
                on_chunk(bytes(chunk))
            await _wait_then_clear_group(process)
    return _exit_status(process)
