"""``sysmon once``: one tick of the daemon's pipeline, without the loops.

Discover, plan, scrape, commit -- rules and sysmon's notes included -- exactly
as :meth:`sysmon.commands.daemon.Daemon.poll` does every interval, then one
line per qube and a total.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import trio

from sysmon.collect.qrexec import DiscoverySource, Qrexec, QrexecDiscovery, Transport
from sysmon.commands.daemon import Collaborators, Daemon, Offload, PollReport, utc_now
from sysmon.config import Config
from sysmon.protocol.admin import DiscoveryError
from sysmon.records import Status


async def run_once(
    config: Config,
    source: DiscoverySource,
    transport: Transport,
    *,
    now: Callable[[], datetime] = utc_now,
    offload: Offload = trio.to_thread.run_sync,
) -> PollReport:
    """One tick at the current second.

    Raises:
        DiscoveryError: the qubes could not be listed; nothing was written.
    """
    uses = Collaborators(wall_now=now, notify=lambda _message: None, offload=offload)
    daemon = Daemon(config, source, transport, uses)
    return await daemon.poll(now().astimezone(UTC).replace(microsecond=0))


def print_report(report: PollReport, out_dir: Path) -> None:
    """One line per qube, then a total."""
    for r in report.results:
        detail = f"  {r.detail}" if r.detail and r.status is not Status.OK else ""
        print(f"{r.vm:<32} {r.status:<10} {r.duration_ms:>6} ms {r.n_bytes:>8} B{detail}")
    failed = [r for r in report.results if r.status is not Status.OK]
    rows = sum(report.outcome.written.values())
    ok = len(report.results) - len(failed)
    print(
        f"{len(report.results)} qubes polled: {ok} ok, {len(failed)} not ok; "
        f"{rows} rows under {out_dir}"
    )
    if report.outcome.skipped:
        print(f"nothing written: {report.outcome.skipped}")
    for error in report.outcome.errors:
        print(f"write error: {error}", file=sys.stderr)


def main(config: Config) -> int:
    """``sysmon once``: exit 0 when the tick ran (even if qubes failed)."""
    try:
        report = trio.run(
            run_once, config, QrexecDiscovery(), Qrexec(), strict_exception_groups=True
        )
    except DiscoveryError as exc:
        print(f"sysmon once: discovery failed: {exc}", file=sys.stderr)
        return 1
    print_report(report, config.out_dir)
    return 1 if report.outcome.skipped or report.outcome.errors else 0
