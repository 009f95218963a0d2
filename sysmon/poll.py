"""One poll of every running qube into the daily files (``sysmon once``).

The daemon runs the same :func:`poll_once` every tick.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import attrs
import structlog
import trio

from sysmon.collect.qrexec import Transport
from sysmon.collect.scrape import scrape_round
from sysmon.config import Config
from sysmon.protocol.admin import Discovery, DiscoveryError, QubeInfo, select_targets
from sysmon.records import ScrapeResult, TickOutcome
from sysmon.store.commit import commit_tick
from sysmon.store.daily import locked
from sysmon.store.state import load_state


class DiscoverySource(Protocol):
    """Where the list of qubes and our own name come from."""

    async def list_qubes(self) -> Discovery:
        """Every qube with its state.  Raises DiscoveryError."""

    async def own_name(self) -> str | None:
        """This qube's name, or None."""


@attrs.frozen
class PollReport:
    """What one poll did."""

    ts: datetime
    qubes: tuple[QubeInfo, ...]
    results: tuple[ScrapeResult, ...]
    outcome: TickOutcome


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def read_cursors(out_dir: Path) -> dict[str, str]:
    """Each qube's alert cursor as the handler's argument.

    Without them (unreadable state) the handlers send recent entries, and
    the commit drops those already filed: nothing is filed twice.
    """
    if not out_dir.exists():
        return {}
    try:
        with locked(out_dir):
            state = load_state(out_dir)
    except OSError as exc:
        structlog.get_logger().error("state_unreadable", error=str(exc))
        return {}
    return {vm: q.cursor.argument() for vm, q in state.qubes.items() if q.cursor is not None}


async def discover(
    config: Config, source: DiscoverySource, self_name: str | None = None
) -> tuple[Discovery, list[str]]:
    """The qubes dom0 lists, and those of them to poll.

    Ourselves excepted: ``self_name`` when known, else the config's, else
    QubesDB's.

    Raises:
        DiscoveryError: with a one-line reason, also when dom0 sent lines and
            none could be used (a format sysmon does not read is a failure,
            not "no qubes").
    """
    with trio.move_on_after(config.scrape_timeout) as scope:
        discovery = await source.list_qubes()
    if scope.cancelled_caught:
        raise DiscoveryError(f"admin.vm.List: no reply within {config.scrape_timeout:g} s")
    log = structlog.get_logger()
    for reason in discovery.rejected:
        log.warning("discovery_line_rejected", reason=reason)
    if discovery.unusable:
        raise DiscoveryError(
            f"admin.vm.List: none of the {discovery.lines} lines dom0 sent is usable "
            f"({discovery.rejected[0]})"
        )
    self_name = self_name or config.self_name or await source.own_name()
    # The vault is never polled: the handler would run as root in it and its
    # journal would flow out (the shipped policy denies it too).
    exclude = (*config.exclude, config.vault)
    return discovery, select_targets(discovery.qubes, self_name, exclude)


def log_results(results: Sequence[ScrapeResult]) -> None:
    """One canonical line per qube polled."""
    log = structlog.get_logger()
    for r in results:
        emit = log.info if r.status == "ok" else log.warning
        emit(
            "scrape_done",
            vm=r.vm,
            status=r.status,
            duration_ms=r.duration_ms,
            bytes=r.n_bytes,
            lines_ok=r.lines_ok,
            lines_rejected=r.lines_rejected,
            detail=r.detail or None,
        )


async def poll_once(
    config: Config,
    source: DiscoverySource,
    transport: Transport,
    *,
    now: Callable[[], datetime] = utc_now,
) -> PollReport:
    """Discover, poll every target once, write the rows.

    Raises:
        DiscoveryError: the qubes could not be listed; nothing was written.
    """
    discovery, targets = await discover(config, source)
    ts = now().astimezone(UTC).replace(microsecond=0)
    cursors = await trio.to_thread.run_sync(read_cursors, config.out_dir)
    results = await scrape_round(
        transport,
        targets,
        cursors,
        per_qube_timeout=config.scrape_timeout,
        concurrency=config.concurrency,
        addresses={q.name: q.address for q in discovery.qubes},
    )
    log_results(results)
    outcome = await trio.to_thread.run_sync(
        commit_tick, config.out_dir, ts, results, discovery.qubes
    )
    return PollReport(ts=ts, qubes=discovery.qubes, results=tuple(results), outcome=outcome)
