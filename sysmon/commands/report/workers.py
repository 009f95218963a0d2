"""The report's worker processes: the one place it starts them.

Reading and drawing are CPU-bound pure functions of a day or a picture, so
they go to a process per core (``concurrent.futures``; pandas and Agg hold
the GIL).  Results come back in the order asked, so a week is joined day by
day and its memory holds each point once.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
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
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        yield from pool.map(work, items, *(itertools.repeat(value) for value in shared))


def pool(processes: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``processes`` workers, for work this process shares in."""
    return concurrent.futures.ProcessPoolExecutor(processes)
