"""A progress line for the long commands (export, report): on a terminal only.

One line on stderr, rewritten in place with ``\\r``, at most once every
:data:`EVERY` seconds; nothing at all when stderr is a pipe or a file, so a
pipeline or a log sees only the command's own summary.  The words are
sysmon's own -- a stage, counts, a rate -- never text read from a file; what
a caller passes is shown printable characters only, cut to the terminal's
width (a line that wraps cannot be rewritten in place).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Seconds between two redraws: a few a second reads as live, costs nothing.
EVERY = 0.25
#: A rate is shown once it is measured over this long (not one chunk's burst).
RATE_AFTER = 0.5


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # closed, or not a real stream
        return False


def _width(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return max(40, columns or 80) - 1


def _number(n: float, unit: str) -> str:
    return f"{n / 1e6:,.1f}" if unit == "bytes" else f"{n:,.0f}"


def _unit(unit: str) -> str:
    return "MB" if unit == "bytes" else unit


class Progress:
    """What a long command is doing, told on a terminal, silent elsewhere."""

    def __init__(
        self,
        command: str,
        stream: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool | None = None,
    ) -> None:
        self.command = command
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.shown = 0  # characters of the line on screen
        self.last = -math.inf
        #: Per unit, when it was first counted and the count then: the rate's origin.
        self.origin: dict[str, tuple[float, float]] = {}

    @classmethod
    def quiet(cls) -> Progress:
        """One that never writes (a caller that wants none)."""
        return cls("", enabled=False)

    def update(
        self,
        stage: str,
        done: float | None = None,
        unit: str = "rows",
        *,
        total: float | None = None,
    ) -> None:
        """Tell ``stage`` with ``done`` (a running count of ``unit``), if it is time to."""
        if not self.enabled:
            return
        now = self.clock()
        if done is not None:
            start, base = self.origin.setdefault(unit, (now, done))
        if now - self.last < EVERY:
            return
        self.last = now
        text = f"{self.command}: {stage}"
        if done is not None:  # "12.5 of 40.0 MB (31%), 8.2 MB/s", "400,000 samples, 200,000/s"
            text += f": {_number(done, unit)}"
            if total:
                text += f" of {_number(total, unit)}"
            text += f" {_unit(unit)}"
            if total:
                text += f" ({min(100.0, 100 * done / total):.0f}%)"
            if now - start >= RATE_AFTER:
                rate = _number((done - base) / (now - start), unit)
                text += f", {rate} MB/s" if unit == "bytes" else f", {rate}/s"
        self._draw(text)

    def _draw(self, text: str) -> None:
        line = "".join(c if c.isprintable() else "?" for c in text)[: _width(self.stream)]
        try:
            self.stream.write("\r" + line.ljust(self.shown))
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the work goes on
            self.enabled = False
            return
        self.shown = max(self.shown, len(line))

    def close(self) -> None:
        """Clear the line, so what is printed next starts on a clean one."""
        if self.enabled and self.shown:
            try:
                self.stream.write("\r" + " " * self.shown + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self.shown = 0
