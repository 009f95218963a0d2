"""structlog set-up: JSON lines for journald, a console renderer on a tty."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    *, json_output: bool | None = None, stream: TextIO | None = None, level: int = logging.INFO
) -> None:
    """Configure structlog once, at start-up (never bind at module scope).

    ``json_output`` None means JSON unless ``stream`` is a terminal.
    """
    stream = stream if stream is not None else sys.stdout
    if json_output is None:
        json_output = not stream.isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json_output:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
