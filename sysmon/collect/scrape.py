"""Poll qubes for their metrics: one qube, or a round of them at once.

:func:`scrape_qube` has no timeout of its own; :func:`scrape_round` gives
each qube ``per_qube_timeout`` seconds (after it got a concurrency slot) and
turns every way a qube can fail into a status word, so that one qube can
neither stall nor break the others' polls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio

from sysmon.collect.qrexec import Transport
from sysmon.protocol.admin import CallOutcome, classify_exit
from sysmon.protocol.metrics import Snapshot
from sysmon.protocol.parse import DEFAULT_LIMITS, Limits, MetricsParseError, parse_metrics_untrusted
from sysmon.records import ScrapeResult, Status

_STDERR_SHOWN = 200
#: Replies up to this size are parsed on the event loop (a normal one, about
#: 1 KB, takes 0.06 ms).  A larger one -- a qube filling its caps costs about
#: 16 ms, 300 times more -- goes to a worker thread, one at a time, so it
#: cannot hold the loop the other qubes' polls run on.
PARSE_INLINE_MAX = 16 * 1024
_PARSE_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("parse")


#: How a large reply is parsed off the loop: in a worker thread by default,
#: inline in tests on virtual time (a thread would let autojump_clock run ahead).
ParseOffload = Callable[[Callable[[bytes, Limits], Snapshot], bytes, Limits], Awaitable[Snapshot]]


async def in_worker_thread(
    parse: Callable[[bytes, Limits], Snapshot], stdout: bytes, limits: Limits
) -> Snapshot:
    """One parse at a time in a worker thread."""
    try:
        limiter = _PARSE_LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(1)
        _PARSE_LIMITER.set(limiter)
    return await trio.to_thread.run_sync(parse, stdout, limits, limiter=limiter)


async def _parse(stdout: bytes, limits: Limits, offload: ParseOffload) -> Snapshot:
    """``parse_metrics_untrusted``, off the event loop for a large reply."""
    if len(stdout) <= PARSE_INLINE_MAX:
        return parse_metrics_untrusted(stdout, limits)
    return await offload(parse_metrics_untrusted, stdout, limits)


def _stderr_excerpt(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace").strip()
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text[:_STDERR_SHOWN]


async def scrape_qube(
    transport: Transport,
    vm: str,
    cursor: str,
    limits: Limits = DEFAULT_LIMITS,
    *,
    address: str | None = None,
    parse_offload: ParseOffload = in_worker_thread,
) -> ScrapeResult:
    """Call ``qubes.Metrics.Get`` in ``vm`` and parse the reply.  No timeout.

    ``address`` is the qrexec target (``uuid:U`` on Qubes 4.3); the result
    is filed under ``vm``, the name dom0 listed, whatever the reply says.
    """
    start = trio.current_time()

    def result(status: Status, **fields: object) -> ScrapeResult:
        duration_ms = round((trio.current_time() - start) * 1000)
        return ScrapeResult(vm=vm, status=status, duration_ms=duration_ms, **fields)  # type: ignore[arg-type]

    try:
        proc = await transport.call(
            transport.metrics_argv(address or vm, cursor), max_stdout=limits.max_bytes
        )
    except OSError as exc:
        return result(Status.ERROR, detail=f"cannot run the qrexec client: {exc.strerror or exc}")
    outcome = classify_exit(proc.returncode)
    stderr = _stderr_excerpt(proc.stderr)
    n_bytes = len(proc.stdout)
    if proc.stderr_overflow:
        # Killed for it: whatever stdout holds is a cut answer.
        return result(Status.TOO_BIG, n_bytes=n_bytes, detail="over caps: stderr")
    if proc.stdout_overflow:
        n_bytes += 1  # at least one byte over the cap; the rest was never read
    elif outcome is CallOutcome.REFUSED:
        return result(Status.REFUSED, detail=stderr or "refused (exit 126)")
    elif outcome is CallOutcome.NO_SERVICE:
        return result(
            Status.NO_SERVICE, detail=stderr or "no qubes.Metrics.Get in the qube (exit 127)"
        )
    elif outcome is not CallOutcome.OK:
        return result(
            Status.ERROR,
            n_bytes=n_bytes,
            detail=f"exit {proc.returncode}" + (f": {stderr}" if stderr else ""),
        )
    try:
        snapshot = await _parse(proc.stdout, limits, parse_offload)
    except MetricsParseError as exc:
        return result(
            Status.TOO_BIG if proc.stdout_overflow else Status.BAD_OUTPUT,
            n_bytes=n_bytes,
            lines_rejected=exc.lines_rejected,
            detail=str(exc),
        )
    status = Status.TOO_BIG if proc.stdout_overflow or snapshot.over_caps else Status.OK
    caps = set(snapshot.over_caps) | ({"bytes"} if proc.stdout_overflow else set())
    return result(
        status,
        n_bytes=n_bytes,
        lines_ok=snapshot.lines_ok,
        lines_rejected=snapshot.lines_rejected,
        snapshot=snapshot,
        detail=("over caps: " + ",".join(sorted(caps)))
        if caps
        else "; ".join(snapshot.reject_reasons),
    )


async def scrape_round(
    transport: Transport,
    vms: Sequence[str],
    cursors: Mapping[str, str],
    *,
    per_qube_timeout: float,
    concurrency: int,
    limits: Limits = DEFAULT_LIMITS,
    on_result: Callable[[ScrapeResult], None] | None = None,
    addresses: Mapping[str, str] | None = None,
    parse_offload: ParseOffload = in_worker_thread,
) -> list[ScrapeResult]:
    """Poll ``vms`` concurrently, at most ``concurrency`` at a time.

    Every qube gets exactly one result, in the order of ``vms``.  A qube
    that overruns ``per_qube_timeout`` is killed and gets ``timeout``.
    ``on_result`` hears of each result as soon as it is known.
    ``addresses`` maps a name to its qrexec target (default: the name).
    """
    addresses = addresses or {}
    limiter = trio.CapacityLimiter(concurrency)
    results: dict[str, ScrapeResult] = {}

    async def one(vm: str) -> None:
        async with limiter:
            start = trio.current_time()
            with trio.move_on_after(per_qube_timeout) as scope:
                results[vm] = await scrape_qube(
                    transport,
                    vm,
                    cursors.get(vm, ""),
                    limits,
                    address=addresses.get(vm),
                    parse_offload=parse_offload,
                )
            if scope.cancelled_caught:
                results[vm] = ScrapeResult(
                    vm=vm,
                    status=Status.TIMEOUT,
                    duration_ms=round((trio.current_time() - start) * 1000),
                    detail=f"no reply within {per_qube_timeout:g} s",
                )
            if on_result is not None:
                on_result(results[vm])

    async with trio.open_nursery() as nursery:
        for vm in vms:
            nursery.start_soon(one, vm)
    return [results[vm] for vm in vms]
