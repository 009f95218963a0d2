"""The hypervisor's view: follow dom0's ``admin.vm.Stats`` stream for the whole run.

qubesd sends a ``vm-stats`` event per running domain every few seconds; the
follower keeps each domain's latest and the daemon writes them once per tick
to xen.csv.  It reconnects with backoff; a policy refusal (126) or qubesd's
empty refusal disables it with one log line.  A stream that breaks the
framing -- qubesd's own ``2\\0`` error frame included -- is logged and
reopened, never fatal.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

import attrs
import structlog
import trio

from sysmon.collect.process import run_streaming
from sysmon.collect.qrexec import Qrexec
from sysmon.protocol.admin import EXIT_REFUSED
from sysmon.protocol.xen_events import DomainStats, EventReader, EventStreamError, domain_stats

#: Runs dom0's admin.vm.Stats stream, feeding each chunk; returns its exit code.
StatsStream = Callable[[Callable[[bytes], None]], Awaitable[int]]
STALE_AFTER = 30.0
#: Domains remembered at most: a stream naming ever-new domains cannot grow memory.
MAX_DOMAINS = 1024
MAX_BACKOFF = 60.0


async def qrexec_stats_stream(on_chunk: Callable[[bytes], None]) -> int:
    """``qrexec-client-vm dom0 admin.vm.Stats``, streamed."""
    return await run_streaming(Qrexec().service_argv("dom0", "admin.vm.Stats"), on_chunk)


@attrs.define
class XenFollower:
    """dom0's stats stream, followed; the latest event of each domain kept."""

    stream: StatsStream = qrexec_stats_stream
    latest: dict[str, tuple[float, DomainStats]] = attrs.field(factory=dict)

    async def run(self) -> None:
        """Follow the stream until cancelled, or until policy refuses it."""
        log = structlog.get_logger()
        delay = 1.0
        while True:
            reader = EventReader()
            received = 0
            broken: str | None = None

            with trio.CancelScope() as scope:

                def on_chunk(chunk: bytes, reader: EventReader = reader) -> None:
                    nonlocal received, broken
                    received += len(chunk)
                    now = trio.current_time()
                    try:
                        events = reader.feed_untrusted(chunk)
                    except EventStreamError as exc:
                        broken = str(exc)
                        scope.cancel()  # the stream is reopened from a clean state
                        return
                    for event in events:
                        stats = domain_stats(event)
                        if stats is None:
                            continue
                        if stats.vm in self.latest or len(self.latest) < MAX_DOMAINS:
                            self.latest[stats.vm] = (now, stats)

                try:
                    code: int | None = await self.stream(on_chunk)
                except OSError as exc:
                    log.warning("xen_stats_disabled", reason=f"cannot run qrexec-client-vm: {exc}")
                    return
            if broken is not None:
                log.warning("xen_stats_broken", error=broken)
                code = None
            elif code == EXIT_REFUSED:
                log.warning(
                    "xen_stats_disabled", reason="admin.vm.Stats refused by policy (exit 126)"
                )
                return
            elif code == 0 and received == 0:
                log.warning(
                    "xen_stats_disabled", reason="qubesd refused admin.vm.Stats (empty reply)"
                )
                return
            if received and broken is None:
                delay = 1.0
            log.info("xen_stats_reconnecting", exit=code, in_seconds=delay)
            await trio.sleep(delay)
            delay = min(MAX_BACKOFF, delay * 2)

    def fresh(self, now: float, listed: Collection[str]) -> list[DomainStats]:
        """The latest stats of each domain dom0 listed, by name.

        Domains silent for a while, or not listed, are forgotten: only
        domains dom0 listed reach xen.csv, one row each per tick.
        """
        for vm in [
            vm
            for vm, (seen, _) in self.latest.items()
            if now - seen > STALE_AFTER or vm not in listed
        ]:
            del self.latest[vm]  # stopped, or never a qube
        return [stats for _, stats in sorted(self.latest.values(), key=lambda item: item[1].vm)]
