"""Doubles and helpers shared by the tests (and the benchmarks)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar, TypeVarTuple, Unpack

import attrs
import trio
import trio.testing
from conftest import ROOT

from sysmon.collect.process import ProcessResult
from sysmon.commands.daemon import Collaborators, Daemon
from sysmon.config import Config
from sysmon.protocol.admin import Discovery, QubeInfo
from sysmon.protocol.metrics import (
    AlertRecord,
    DiskRecord,
    NetRecord,
    Snapshot,
    SysRecord,
    render,
)
from sysmon.records import ScrapeResult, TickOutcome
from sysmon.store.commit import commit_tick
from sysmon.transform.tick import build_tick

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: A hostile handler's reply: impersonation, CSV breaking and formula injection.
LIAR_PAYLOAD = b"""sys: protocol=1 boot_id=liar-boot btime=1 mem_total_kb=5 vm=dom0
vm: dom0
net: if=eth0,dom0 rx_bytes=1 rx_errs=0 rx_drop=0 tx_bytes=1 tx_errs=0 tx_drop=0
net: if=-eth0 rx_bytes=1 rx_errs=0 rx_drop=0 tx_bytes=1 tx_errs=0 tx_drop=0
net: if=@evil rx_bytes=1 rx_errs=0 rx_drop=0 tx_bytes=1 tx_errs=0 tx_drop=0
disk: fs=+cmd mount=/x size_kb=10 used_kb=5 avail_kb=5
alert: 1700000000000000 evil: =HYPERLINK("http://x","y")
alert: 1700000000000001 dom0: pretend,"quoted"\r\x1b[2Jtext
alert: 1700000000000002 -cmd: +SUM(1)
"""


def write_tick(
    out_dir: Path,
    ts: datetime,
    results: Sequence[ScrapeResult],
    qubes: Sequence[QubeInfo] | None,
    *,
    sync: bool = True,
    **tick: object,
) -> TickOutcome:
    """Commit one tick of these results (``tick``: xen, notes, rules), as the daemon does."""
    plan = functools.partial(build_tick, ts=ts, results=results, qubes=qubes, **tick)  # type: ignore[arg-type]
    return commit_tick(out_dir, ts, plan, sync=sync)


def start_daemon(
    env: dict[str, str], out: Path, log: Path, interval: float = 1
) -> subprocess.Popen[bytes]:
    """``python -m sysmon run`` as a real process, its log lines into ``log``."""
    argv = [sys.executable, "-m", "sysmon", "run", "--interval", f"{interval:g}"]
    with log.open("ab") as sink:
        return subprocess.Popen(
            [*argv, "--out-dir", str(out)],
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@attrs.define
class FakeQubes:
    """Discovery plus transport: each qube "ok", "refused", ("slow", s), "hang", or
    "huge" (a reply near every per-poll cap: 200 interfaces, 100 long alerts)."""

    behaviours: dict[str, object]
    calls: dict[str, int] = attrs.field(factory=dict)
    #: The last arguments each qube was polled with (bounded: a simulated day
    #: must not grow the heap through its own fake).
    arguments: dict[str, deque[str]] = attrs.field(factory=dict)
    own_name_asked: int = 0

    async def list_qubes(self) -> Discovery:
        listed = [QubeInfo("dom0", "AdminVM", "Running")]  # dom0 lists itself first
        listed += [QubeInfo(n, "AppVM", "Running") for n in self.behaviours]
        return Discovery(tuple(listed))

    async def own_name(self) -> str | None:
        self.own_name_asked += 1
        return "sys-monitor"

    def metrics_argv(self, target: str, argument: str) -> list[str]:
        return [target, argument]

    async def call(
        self, argv: Sequence[str], *, max_stdout: int, env: Mapping[str, str] | None = None
    ) -> ProcessResult:
        vm = argv[0]
        n = self.calls[vm] = self.calls.get(vm, 0) + 1
        self.arguments.setdefault(vm, deque(maxlen=64)).append(argv[1])
        behaviour = self.behaviours[vm]
        if behaviour == "hang":
            await trio.sleep_forever()
        if behaviour == "refused":
            return ProcessResult(126, b"", b"Request refused\n")
        if isinstance(behaviour, tuple):
            await trio.sleep(behaviour[1])
        ticks = {f"cpu_ticks_{k}": n * v for k, v in (("user", 10), ("system", 5), ("idle", 85))}
        zero = {f"cpu_ticks_{k}": 0 for k in ("nice", "iowait", "irq", "softirq", "steal")}
        snap = Snapshot(
            SysRecord(
                boot_id="b-" + vm, protocol=1, mem_total_kb=1000, mem_avail_kb=600, **ticks, **zero
            ),
            (NetRecord("eth0", n * 100, 0, 0, n * 50, 0, 0),),
            None,
            (DiskRecord("/dev/xvdb", "/rw", 1000, 10 * n, 990 - 10 * n),),
            (),
            0,
            3,
            3,
            0,
        )
        if behaviour == "huge":
            wide = tuple(NetRecord(f"if{i:03d}-{'x' * 50}", n, 0, 0, n, 0, 0) for i in range(200))
            alerts = tuple(
                AlertRecord(1_700_000_000_000_000 + n * 1000 + i, "kernel", "x" * 1000)
                for i in range(100)
            )
            snap = attrs.evolve(snap, net=wide, alerts=alerts)
        # As the handler does: the flags before the cursor leave lines out.
        if argv[1].startswith(("nodisk.", "noalerts.nodisk.")):
            snap = attrs.evolve(snap, disk=())
        if "noalerts." in argv[1]:
            snap = attrs.evolve(snap, alerts=())
        return ProcessResult(0, render(snap), b"")


async def inline(fn: Callable[[Unpack[Ts]], T], /, *args: *Ts) -> T:
    """Offload that runs inline: a thread would let autojump_clock run ahead."""
    return fn(*args)


def daemon_on_virtual_time(
    tmp_path: Path,
    qubes: FakeQubes,
    start: datetime,
    *,
    overrides: dict[str, object] | None = None,
    **config: object,
) -> Daemon:
    """A Daemon on virtual time: wall clock from ``start``, real files without
    fsync, file work inline; ``overrides`` replace Daemon fields or its
    collaborators (``notify``, ``offload``...)."""
    # On the real clock each virtual second is a real one (a test that forgot
    # autojump_clock took 45 s for three 15 s runs).
    assert isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock), "autojump_clock"
    t0 = trio.current_time()
    uses: dict[str, object] = {
        "wall_now": lambda: start + timedelta(seconds=trio.current_time() - t0),
        "committer": functools.partial(commit_tick, sync=False),
        "notify": lambda _message: None,
        "offload": inline,
        "parse_offload": inline,
    }
    fields: dict[str, object] = {}
    for name, value in (overrides or {}).items():
        (uses if name in uses else fields)[name] = value
    collaborators = Collaborators(**uses)  # type: ignore[arg-type]
    return Daemon(Config(out_dir=tmp_path, **config), qubes, qubes, collaborators, **fields)  # type: ignore[arg-type]


async def run_for(c: Daemon, seconds: float) -> None:
    """Run the daemon's tick loop for ``seconds`` (virtual)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.tick_loop, nursery)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
