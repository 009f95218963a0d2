"""``sysmon demo``: the real pipeline on any Linux machine, no Qubes needed.

This machine is presented as a few qubes: discovery is a fixed list named
after the host, and each qube's "qrexec call" runs the real handler
locally.  Everything after that is the daemon a sys-monitor qube runs -- its
tick loop, health and backoff, limits, parser, rates, rules, rows, files and
state -- without dom0's stats stream and the nightly archive, which need
Qubes.
"""

from __future__ import annotations

import errno
import functools
import io
import math
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import trio

from sysmon import schema
from sysmon.collect.process import ProcessResult, run_bounded
from sysmon.commands.daemon import Collaborators, Daemon, PollReport
from sysmon.commands.notify import Notifier
from sysmon.config import Config
from sysmon.protocol.admin import Discovery, QubeInfo
from sysmon.schema.decode import Skipped, decode_untrusted
from sysmon.transform.rules import Rule, parse_rules

HANDLER_ENV = "SYSMON_HANDLER"


def find_handler() -> Path:
    """The handler: $SYSMON_HANDLER, the source tree, or the installed copy."""
    candidates = []
    if os.environ.get(HANDLER_ENV):
        candidates.append(Path(os.environ[HANDLER_ENV]))
    candidates += [
        Path(__file__).resolve().parents[2] / "handler" / "qubes.Metrics.Get",
        Path(sys.prefix) / "share" / "sysmon" / "qubes.Metrics.Get",
        Path("/etc/qubes-rpc/qubes.Metrics.Get"),
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("handler qubes.Metrics.Get not found (set SYSMON_HANDLER)")


def handler_interpreter() -> list[str]:
    """How to run the handler here: mawk as in a template, else this machine's awk.

    The handler names mawk on its first line (Debian ships it, the Salt state
    installs Fedora's); it is POSIX awk, so a machine without mawk runs it too
    (the demo's arguments are the collector's own, never option-like).
    """
    mawk = shutil.which("mawk")
    if mawk is not None:
        return [mawk, "-Wexec"]
    awk = shutil.which("awk")
    if awk is None:
        raise FileNotFoundError("no awk on this machine (the handler is an awk program)")
    return [awk, "-f"]


def demo_names(hostname: str | None = None) -> list[str]:
    """A few qube names made from this machine's name."""
    base = re.sub(r"[^a-zA-Z0-9_-]", "-", (hostname or socket.gethostname()).split(".")[0])
    if not base or not base[0].isalpha():
        base = "host" + base
    base = base[:20].rstrip("-") or "host"
    return [f"{base}-work", f"{base}-net", f"{base}-vault"]


@attrs.frozen
class LocalHandler:
    """A transport that runs the handler here instead of in a qube.

    Every demo qube is this machine, so each is given its own slice of the
    machine's interfaces and mounts (the i-th of every n, by name): their
    network and disk charts then differ.  CPU, memory and load are the
    machine's own, the same for all of them (the demo says so).
    """

    handler: Path
    names: tuple[str, ...] = ()
    interpreter: tuple[str, ...] = attrs.field(factory=lambda: tuple(handler_interpreter()))

    def metrics_argv(self, target: str, argument: str) -> list[str]:
        """The handler's command line, after the slice this qube sees (``i``, ``n``)."""
        i = self.names.index(target) if target in self.names else 0
        return [str(i), str(max(1, len(self.names))), *self.interpreter, str(self.handler)] + (
            [argument] if argument else []
        )

    async def call(
        self, argv: Sequence[str], *, max_stdout: int, env: Mapping[str, str] | None = None
    ) -> ProcessResult:
        """Run the handler bounded, as qrexec-client-vm would be; keep this qube's slice."""
        i, n = int(argv[0]), int(argv[1])
        result = await run_bounded(argv[2:], max_stdout=max_stdout, env=env)
        return attrs.evolve(result, stdout=slice_of(result.stdout, i, n))


def slice_of(output: bytes, i: int, n: int) -> bytes:
    """The handler's ``output`` with only the i-th of every n interfaces and mounts."""
    lines = output.split(b"\n")
    kept = set()
    for kind in (b"net: if=", b"disk: fs="):
        mine = sorted(line for line in lines if line.startswith(kind))
        kept |= set(mine[i::n])
    return b"\n".join(
        line for line in lines if not line.startswith((b"net: ", b"disk: ")) or line in kept
    )


@attrs.frozen
class DemoDiscovery:
    """dom0's list, made up: this machine's qubes, one halted, and ourselves."""

    names: tuple[str, ...]

    async def list_qubes(self) -> Discovery:
        """The made-up list."""
        qubes = [QubeInfo("dom0", "AdminVM", "Running")]
        qubes += [QubeInfo(name, "AppVM", "Running") for name in self.names]
        qubes += [
            QubeInfo("sys-monitor", "AppVM", "Running"),
            QubeInfo("untrusted", "AppVM", "Halted"),
        ]
        return Discovery(qubes=tuple(qubes))

    async def own_name(self) -> str | None:
        """We are sys-monitor."""
        return "sys-monitor"


def _print_poll(report: PollReport) -> None:
    counts = Counter(str(r.status) for r in report.results)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    rows = sum(report.outcome.written.values())
    extra = f"  (skipped: {report.outcome.skipped})" if report.outcome.skipped else ""
    print(
        f"{report.ts:%H:%M:%S}Z  polled {len(report.results)} qubes: {summary}; {rows} rows{extra}"
    )


def demo_rule(vm: str) -> Rule:
    """A rule that fires at the demo's second poll (its first CPU figure) and notifies."""
    (rule,) = parse_rules(
        [
            {
                "name": "demo-cpu",
                "file": "system",
                "expr": "cpu_user + cpu_system",
                "op": ">=",
                "value": 0,
                "vm": vm,
                "notify": True,
            }
        ],
        "demo",
    )
    return rule


def no_notifications() -> str | None:
    """Why no notification can be shown here, before trying; None: try."""
    if shutil.which("notify-send") is None:
        return "notify-send is not installed (Debian: libnotify-bin)"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS") and not (
        runtime and Path(runtime, "bus").exists()
    ):
        return (
            "no notification server can be reached "
            "(no session bus: DBUS_SESSION_BUS_ADDRESS is not set)"
        )
    return None


def notification_line(rule: Rule, notifier: Notifier | None, why_not: str | None) -> str:
    """One line on what became of the demo rule's notification."""
    if why_not is not None:
        return f"notification: not shown, {why_not}; the rule's row is in alerts.csv"
    assert notifier is not None  # noqa: S101 -- made whenever why_not is None
    if notifier.sent:
        return f"notification: sent ({notifier.sent}), rule {rule.name} firing on {rule.vm}"
    if notifier.failed:
        return (
            f"notification: not shown, no notification server is running "
            f"({notifier.last_error}); the rule's row is in alerts.csv"
        )
    return f"notification: none, rule {rule.name} did not fire within the demo"


def latest_table(out_dir: Path, day_folder: Path) -> str:
    """The newest system.csv row of each qube, as a small table."""
    names = schema.SYSTEM.names
    latest: dict[str, dict[str, str]] = {}
    with (day_folder / "system.csv").open("rb") as f:
        for decoded in decode_untrusted(f, schema.SYSTEM, Skipped()):
            values = dict(zip(names, decoded.cells, strict=True))
            latest[values["vm"]] = values
    lines = [f"{'qube':<22} {'cpu_user%':>9} {'cpu_sys%':>8} {'load1':>6} {'mem_used_kb':>12}"]
    for vm, cells in sorted(latest.items()):
        lines.append(
            f"{vm:<22} {cells['cpu_user'] or '-':>9} {cells['cpu_system'] or '-':>8} "
            f"{cells['load1']:>6} {cells['mem_used_kb']:>12}"
        )
    lines.append(f"(files under {out_dir})")
    return "\n".join(lines)


def main(out_dir: Path, duration: float, interval: float) -> int:
    """``sysmon demo``, with its arguments checked first.

    Exit 2 for seconds that are not positive, 1 for an out dir it cannot write
    (found before polling: an earlier run's rows are never shown as new).
    """
    for option, seconds in (("--duration", duration), ("--interval", interval)):
        if not (math.isfinite(seconds) and seconds > 0):
            # The wording of Config's own check, which `run` gives for the same value.
            name = option.removeprefix("--")
            print(
                f"sysmon demo: {option}: {name} must be above 0 seconds, got {seconds:g}",
                file=sys.stderr,
            )
            return 2
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(out_dir))
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        print(f"sysmon demo: --out-dir {out_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return trio.run(
        functools.partial(run_demo, out_dir, duration, interval), strict_exception_groups=True
    )


async def _stop_on_ctrl_c(scope: trio.CancelScope, stopped: list[bool]) -> None:
    """Ctrl-C ends the demo as its duration would (then the table, exit 130)."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            stopped.append(True)
            scope.cancel()


async def run_demo(out_dir: Path, duration: float, interval: float) -> int:
    """Run the daemon on this machine, as a few qubes, for ``duration`` s."""
    handler = find_handler()
    # A line per poll as it happens, into a pipe too (``| tee``, ``| head``).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    names = demo_names()
    rule = demo_rule(names[0])
    config = Config(
        out_dir=out_dir,
        interval=interval,
        scrape_timeout=min(8.0, interval * 0.8),
        rules=(rule,),
    )
    print(f"sysmon demo: {', '.join(names)} are this machine, polled with {handler}")
    print(
        "  (they share its CPU, memory and load; each sees its own slice of the"
        " machine's interfaces and mounts)"
    )
    print(
        f"writing daily CSV files under {out_dir}/<UTC day>/"
        f" every {interval:g} s for {duration:g} s"
    )
    print(
        f"rule {rule.name} ({rule.describe()} on {rule.vm}) fires at the second poll"
        " and shows a desktop notification"
    )
    why_not = no_notifications()
    notifier = None
    if why_not is None:
        notifier = Notifier(
            config.rules,
            config.notify_every,
            config.notify_burst,
            config.notify_timeout,
            log_failures=False,
        )
    reports: list[PollReport] = []

    def on_tick(report: PollReport) -> None:
        _print_poll(report)
        reports.append(report)

    daemon = Daemon(
        config,
        DemoDiscovery(tuple(names)),
        LocalHandler(handler, tuple(names)),
        Collaborators(notify=lambda _message: None),
        on_tick=on_tick,
        notifier=notifier,
    )
    interrupted: list[bool] = []
    async with trio.open_nursery() as ticks:  # ticks under way finish after the deadline
        with trio.move_on_after(duration) as scope:
            async with trio.open_nursery() as watch:
                watch.start_soon(_stop_on_ctrl_c, scope, interrupted)
                await daemon.tick_loop(ticks)
    written = [r for r in reports if sum(r.outcome.written.values())]
    print(notification_line(rule, notifier, why_not))
    if written:
        print()
        print(latest_table(out_dir, out_dir / f"{written[-1].ts:%Y-%m-%d}"))
    if interrupted:
        print(f"sysmon demo: interrupted after {len(reports)} polls", file=sys.stderr)
        return 130
    if not reports:
        print(
            f"sysmon demo: no poll within --duration {duration:g} s"
            f" (polls start on the clock's multiples of --interval {interval:g} s)",
            file=sys.stderr,
        )
        return 1
    if not written:
        errors = [e for r in reports for e in r.outcome.errors] or ["(see the log)"]
        print(f"sysmon demo: no rows written under {out_dir}: {errors[0]}", file=sys.stderr)
        return 1
    return 0
