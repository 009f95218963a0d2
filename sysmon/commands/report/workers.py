"""The report's worker processes: the one place it starts them.

Reading and drawing are CPU-bound pure functions of a day or a picture, so
they go to a process per core (``concurrent.futures``; pandas and Agg hold
the GIL).  Results come back in the order asked, so a week is joined day by
day and its memory holds each point once.  The workers end with the report,
however it ends: SIGKILL too.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import itertools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any, TypeVar

Result = TypeVar("Result")


def how_many(workers: int | None, items: int) -> int:
    """Processes for ``items`` pieces of work: ``workers``, else a core each, at most ``items``."""
    return min(workers or os.cpu_count() or 1, items)


def in_order(
    work: Callable[..., Result],
    items: Sequence[Any],
    *shared: object,
    workers: int | None = None,
) -> Iterator[Result]:
    """``work(item, *shared)`` for each item, in order: here alone if one process will do."""
    processes = how_many(workers, len(items))
    if processes <= 1:
        for item in items:
            yield work(item, *shared)
        return
    with pool(processes) as others:
        yield from others.map(work, items, *(itertools.repeat(value) for value in shared))


#: prctl(2): the signal a process is sent when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1


def pool(processes: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``processes`` workers that end when this process does, however it ends.

    Made and given its first work in one thread: ``fork`` makes the whole pool
    at its first ``submit``, in the thread that submits (3.11 to 3.14), and the
    kernel ties a worker to that thread.  Only the main thread ends with the
    process, so only there are the workers tied.
    """
    return concurrent.futures.ProcessPoolExecutor(
        processes,
        # 3.14's default, forkserver, makes a worker the child of its server.
        mp_context=multiprocessing.get_context("fork"),
        initializer=_end_with,
        initargs=(os.getpid(), threading.current_thread() is threading.main_thread()),
    )


def _end_with(parent: int, tie: bool) -> None:
    """A worker's first step: it gets SIGKILL when ``parent``'s main thread ends.

    Left alive, a worker waited for ever on the pool's pipes (each worker holds
    both ends, so none sees EOF) and held the caller's stdout and stderr:
    ``sysmon report | tee x`` never ended.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the report's handler, not a worker's
    if tie and sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the report ended before the line above: no signal will come
        os._exit(1)


def end_on_sigterm(command: str, status: int) -> None:
    """SIGTERM ends this process at once: "COMMAND: terminated" on stderr, ``status``.

    Not by an exception: raised in the main thread, it could land inside the
    pool's own locks and hang its shutdown.  The workers end with the process
    (:func:`pool`), as they do when it is killed outright.
    """

    def end(_signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):  # stderr closed
            os.write(2, f"{command}: terminated\n".encode())
        os._exit(status)

    signal.signal(signal.SIGTERM, end)
