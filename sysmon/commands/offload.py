"""How blocking work leaves the event loop: one seam, typed by the work it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Offload(Protocol):
    """Runs ``fn(*args)`` away from the event loop and returns what it returned.

    ``trio.to_thread.run_sync`` in the daemon and the archive; inline in
    tests on virtual time (a thread would let the autojump clock run ahead).
    The result has ``fn``'s own type: a caller narrows nothing.
    """

    async def __call__(self, fn: Callable[[Unpack[Ts]], T], /, *args: *Ts) -> T:
        """``fn(*args)``, run elsewhere."""
        ...
