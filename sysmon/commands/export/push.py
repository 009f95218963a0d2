"""``sysmon export --push URL``: days straight into VictoriaMetrics' import API over HTTP.

One POST per day to ``/api/v1/import`` (or the path the URL names), its
body streamed with chunked transfer a megabyte at a time as the day is read:
memory stays bounded whatever the day's size, and the engine parses while
sysmon reads.  Each series is one JSON line with its values and times as
arrays -- a fraction of the bytes of a line per sample.  A day the engine did
not take (refused, reset, a 5xx) is sent again, at most :data:`TRIES` times;
the ledger notes a day only after the engine answered 2xx for all of it
(a 2xx before the body was sent whole is no acceptance).  A
retried day may send samples the engine already holds: run VictoriaMetrics
with ``-dedup.minScrapeInterval=1s`` and they are stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

import attrs

from sysmon.commands.export.ledger import Ledger
from sysmon.commands.export.series import Counts, Day, day_pieces
from sysmon.commands.progress import Progress

#: Attempts per day, and the seconds waited before each retry.
TRIES = 3
BACKOFF = (1.0, 4.0)
#: Bytes sent per chunk.
CHUNK = 1 << 20
#: Seconds a connection, a send or the engine's whole answer may take.
TIMEOUT = 300.0
#: What an engine may answer about an error, at most (shown on one line).
_ANSWER = 300


#: Where VictoriaMetrics takes JSON lines (single node).
DEFAULT_PATH = "/api/v1/import"


class PushError(Exception):
    """A day the engine did not take; the message says why, on one line."""


class _RetryableError(Exception):
    """Worth another attempt: the engine was unreachable or failed on its side."""


def _without_user(url: str) -> str:
    """``url`` as a message may show it: what comes before an ``@`` (a user, a password) cut."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, _ = head.partition("://")
    return f"{scheme}{sep}...@{tail}" if sep else f"...@{tail}"


@attrs.frozen
class Target:
    """Where days are pushed."""

    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        """``http[s]://host[:port][/path]``; no path: ``/api/v1/import``.

        Raises:
            PushError: not such a URL.
        """
        shown = _without_user(url)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise PushError(f"--push {shown!r}: {exc}") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise PushError(f"--push {shown!r}: not an http:// or https:// URL with a host")
        if "@" in parts.netloc or parts.fragment:
            raise PushError(f"--push {shown!r}: no user, password or #fragment, please")
        path = parts.path if parts.path not in {"", "/"} else DEFAULT_PATH
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def engine(self) -> str:
        """The engine's name for its ledger: host and port, and a digest of any other path.

        Two tenants of one cluster (``/insert/N/...``), or one path with other
        labels, are two engines; the default path keeps the name ledgers had.
        """
        name = f"{self.host}-{self.port or ''}"
        if self.path != DEFAULT_PATH:
            name += "-" + hashlib.sha256(self.path.encode()).hexdigest()[:12]
        return name

    def __str__(self) -> str:
        """The URL as messages show it: a query (it may carry a token) as ``?...``."""
        port = f":{self.port}" if self.port else ""
        path, query, _ = self.path.partition("?")
        return f"{self.scheme}://{self.host}{port}{path}{'?...' if query else ''}"

    def connect(self) -> http.client.HTTPConnection:
        """A connection (not opened yet)."""
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=TIMEOUT)


def _body(pieces: Iterator[tuple[str, str]], sent: Callable[[int], None]) -> Iterator[bytes]:
    """The day's text in chunks of about :data:`CHUNK` bytes."""
    buffer: list[str] = []
    size = 0
    for _, text in pieces:
        buffer.append(text)
        size += len(text)
        if size >= CHUNK:
            data = "".join(buffer).encode()
            buffer, size = [], 0
            sent(len(data))
            yield data
    if buffer:
        data = "".join(buffer).encode()
        sent(len(data))
        yield data


def _line(text: str) -> str:
    """An engine's words on one short line, no control characters (they reach a terminal)."""
    return " ".join("".join(c if c.isprintable() else " " for c in text[:_ANSWER]).split())


def _answer(response: http.client.HTTPResponse) -> str:
    return _line(response.read(_ANSWER).decode("utf-8", "replace"))


def _answer_within(connection: http.client.HTTPConnection) -> tuple[http.client.HTTPResponse, str]:
    """The engine's response and its first words, within :data:`TIMEOUT` s in all.

    The socket's timeout bounds each read only: an engine trickling its
    answer a byte at a time (or "100 Continue" forever) is cut here.
    """
    sock = connection.sock
    late = threading.Event()

    def cut() -> None:
        late.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(TIMEOUT, cut)
    timer.start()
    try:
        response = connection.getresponse()
        return response, _answer(response)
    except (OSError, http.client.HTTPException):
        if late.is_set():
            raise _RetryableError(f"no whole answer within {TIMEOUT:g} s") from None
        raise
    finally:
        timer.cancel()


def _post(target: Target, day: Day, counts: Counts, progress: Progress, stage: str) -> None:
    """Send one day; return once the engine took it.

    Raises:
        _RetryableError: worth another attempt.
        PushError: not.
    """
    done = 0

    def sent(n: int) -> None:
        nonlocal done
        done += n
        progress.update(stage, done, "bytes")

    connection = target.connect()
    try:
        body = _body(day_pieces(day, "victoriametrics", counts), sent)
        try:
            connection.request(
                "POST",
                target.path,
                body=body,
                headers={"Content-Type": "application/stream+json"},
                encode_chunked=True,
            )
        except OSError as exc:  # refused, reset, a timeout: maybe the engine is restarting
            if connection.sock is None:  # never connected
                raise _RetryableError(str(exc.strerror or exc)) from None
            try:  # an engine that stopped reading may have said why
                response, answer = _answer_within(connection)
            except (OSError, http.client.HTTPException):
                raise _RetryableError(str(exc.strerror or exc)) from None
            if 200 <= response.status < 300:  # not for this day: it never got it whole
                raise _RetryableError(
                    f"HTTP {response.status} before the day was sent whole, then "
                    + str(exc.strerror or exc)
                ) from None
        else:
            response, answer = _answer_within(connection)
        if 200 <= response.status < 300:
            return
        what = f"HTTP {response.status} {_line(response.reason)}" + (
            f": {answer}" if answer else ""
        )
        if response.status >= 500 or response.status == 429:
            raise _RetryableError(what)
        raise PushError(what)
    except http.client.HTTPException as exc:
        raise _RetryableError(_line(f"{type(exc).__name__} {exc}")) from None
    except OSError as exc:
        raise _RetryableError(str(exc.strerror or exc)) from None
    finally:
        connection.close()


def push_days(
    chosen: list[Day],
    target: Target,
    *,
    ledger: Ledger | None,
    skipped_days: int = 0,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Counts:
    """Push each day; note it in ``ledger`` once the engine took it.

    Raises:
        PushError: a day the engine did not take after :data:`TRIES` attempts
            (the days before it are in the engine and the ledger).
    """
    progress = progress or Progress.quiet()
    total = Counts(skipped_days=skipped_days)
    for n, day in enumerate(chosen, 1):
        stage = f"day {n}/{len(chosen)} {day.day} to {target.host}"
        for attempt in range(TRIES):
            counts = Counts()
            try:
                _post(target, day, counts, progress, stage)
                break
            except _RetryableError as exc:
                if attempt + 1 == TRIES:
                    raise PushError(f"{day.day}: {target}: {exc} ({TRIES} attempts)") from None
                sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
            except PushError as exc:
                raise PushError(f"{day.day}: {target}: {exc}") from None
        counts.days = 1
        total.add(counts)
        if ledger is not None:
            ledger.record([day])
    return total
