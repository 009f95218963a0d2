"""Command line: ``python -m sysmon once|demo ...``."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from sysmon import __version__
from sysmon.collect.qrexec import Qrexec, QrexecDiscovery
from sysmon.config import Config, ConfigError, load_config
from sysmon.logconfig import configure_logging
from sysmon.poll import PollReport, poll_once
from sysmon.protocol.admin import DiscoveryError

EXIT_FAILED = 1
EXIT_USAGE = 2


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if getattr(args, "out_dir", None) is not None:
        config = attrs.evolve(config, out_dir=args.out_dir.expanduser())
    return config


def print_report(report: PollReport, out_dir: Path) -> None:
    """One line per qube, then a total."""
    for r in report.results:
        detail = f"  {r.detail}" if r.detail and r.status != "ok" else ""
        print(f"{r.vm:<32} {r.status:<10} {r.duration_ms:>6} ms {r.n_bytes:>8} B{detail}")
    failed = [r for r in report.results if r.status != "ok"]
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


def cmd_once(args: argparse.Namespace) -> int:
    """Poll every running qube once."""
    config = _config(args)
    try:
        report = trio.run(
            functools.partial(poll_once, config, QrexecDiscovery(), Qrexec()),
            strict_exception_groups=True,
        )
    except DiscoveryError as exc:
        print(f"sysmon once: discovery failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print_report(report, config.out_dir)
    return EXIT_FAILED if report.outcome.skipped or report.outcome.errors else 0


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: poll every interval until SIGTERM."""
    from sysmon.daemon import Collector  # noqa: PLC0415 -- keeps `once` light

    config = _config(args)
    if args.interval is not None:
        config = attrs.evolve(config, interval=args.interval)
        if config.scrape_timeout >= config.interval:
            config = attrs.evolve(config, scrape_timeout=config.interval * 0.8)
    collector = Collector(
        config, QrexecDiscovery(), Qrexec(), own_name=config.self_name or "sys-monitor"
    )
    trio.run(collector.serve, strict_exception_groups=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """From the files alone: is it running, and how is each qube."""
    from sysmon.poll import utc_now  # noqa: PLC0415
    from sysmon.status import build_status, render_status  # noqa: PLC0415

    config = _config(args)
    report = build_status(config.out_dir, utc_now(), config.interval)
    print(render_status(report))
    return 0 if report.healthy else EXIT_FAILED


def cmd_archive(args: argparse.Namespace) -> int:
    """Archive complete days now (and deliver them to the vault)."""
    from datetime import date  # noqa: PLC0415

    from sysmon.archiver import run_archive  # noqa: PLC0415
    from sysmon.poll import utc_now  # noqa: PLC0415

    config = _config(args)
    days = None
    if args.day is not None:
        try:
            days = [date.fromisoformat(args.day)]
        except ValueError:
            print(f"sysmon archive: --day wants YYYY-MM-DD, got {args.day!r}", file=sys.stderr)
            return EXIT_USAGE
    today = utc_now().date()
    report = trio.run(
        functools.partial(
            run_archive, config, today, days=days, copy=not args.no_copy, force=args.force
        ),
        strict_exception_groups=True,
    )
    for outcome in report.days:
        print(f"{outcome.day}  {outcome.status:<9}  {outcome.detail}")
    if not report.days:
        print("nothing to archive: every complete day is delivered")
    for day in report.pruned.folders:
        print(f"{day}  pruned     day folder removed (delivered, past retention)")
    if report.pruned.low_on_space_undelivered:
        print("warning: disk low and only undelivered days are left", file=sys.stderr)
    failed = [o for o in report.days if o.status not in {"delivered", "built", "already"}]
    if failed:
        print(f"sysmon archive: {failed[0].day}: {failed[0].detail}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """An offline HTML page with charts from day folders and archives."""
    from sysmon.report import ReportError, load, parse_when, render  # noqa: PLC0415

    try:
        start = parse_when(args.start) if args.start else float("-inf")
        end = parse_when(args.end) if args.end else float("inf")
        data = load(args.paths, set(args.vm) if args.vm else None, start, end)
        if data.rows == 0:
            raise ReportError("no sysmon rows in " + ", ".join(map(str, args.paths)))
        page = render(data, args.out)
    except ReportError as exc:
        print(f"sysmon report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{page} ({data.rows:,} rows)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the real pipeline against this machine presented as a few qubes."""
    from sysmon.demo import run_demo  # noqa: PLC0415 -- only the demo needs it

    return trio.run(
        functools.partial(run_demo, args.out_dir.expanduser(), args.duration, args.interval),
        strict_exception_groups=True,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sysmon", description="Metrics for every qube of a Qubes OS system."
    )
    parser.add_argument("--version", action="version", version=f"sysmon {__version__}")
    parser.add_argument(
        "--log-format", choices=["json", "console"], help="default: console on a tty, else JSON"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    once = sub.add_parser("once", help="poll every running qube once into the daily files")
    once.add_argument(
        "--config", type=Path, help="TOML file (default /etc/sysmon/sysmon.toml if present)"
    )
    once.add_argument("--out-dir", type=Path, help="where the day folders go (default ~/Monitor)")
    once.set_defaults(func=cmd_once, log_level=logging.WARNING)

    run = sub.add_parser("run", help="the collector daemon: poll every interval until SIGTERM")
    run.add_argument(
        "--config", type=Path, help="TOML file (default /etc/sysmon/sysmon.toml if present)"
    )
    run.add_argument("--out-dir", type=Path, help="where the day folders go (default ~/Monitor)")
    run.add_argument("--interval", type=float, help="seconds between polls (default 10)")
    run.set_defaults(func=cmd_run, log_level=logging.INFO, log_stream="stdout")

    status = sub.add_parser("status", help="newest rows and each qube's last poll, from the files")
    status.add_argument("--config", type=Path, help="TOML file (for out_dir and interval)")
    status.add_argument(
        "--out-dir", type=Path, help="where the day folders are (default ~/Monitor)"
    )
    status.set_defaults(func=cmd_status, log_level=logging.WARNING)

    archive = sub.add_parser("archive", help="archive complete UTC days and copy them to the vault")
    archive.add_argument("--day", help="only this day (YYYY-MM-DD)")
    archive.add_argument("--no-copy", action="store_true", help="build and verify, do not copy")
    archive.add_argument("--force", action="store_true", help="deliver again a delivered day")
    archive.add_argument("--config", type=Path, help="TOML file (for out_dir, vault, retention)")
    archive.add_argument(
        "--out-dir", type=Path, help="where the day folders are (default ~/Monitor)"
    )
    archive.set_defaults(func=cmd_archive, log_level=logging.WARNING)

    report = sub.add_parser("report", help="HTML page with charts from day folders and archives")
    report.add_argument("paths", type=Path, nargs="+", help="day folders, out_dirs, monitor-*.tgz")
    report.add_argument("--out", type=Path, default=Path("sysmon-report"))
    report.add_argument("--vm", action="append", help="only this qube (repeatable)")
    report.add_argument("--from", dest="start", help="UTC date or time, e.g. 2025-08-31T06:00")
    report.add_argument("--to", dest="end", help="UTC date or time")
    report.set_defaults(func=cmd_report, log_level=logging.WARNING)

    demo = sub.add_parser(
        "demo", help="run the real pipeline on this machine, shown as a few qubes"
    )
    demo.add_argument("--out-dir", type=Path, default=Path("demo-out"))
    demo.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    demo.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls (default 5)"
    )
    demo.set_defaults(func=cmd_demo, log_level=logging.WARNING)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sysmon`` and ``python -m sysmon``."""
    args = build_parser().parse_args(argv)
    json_output = None if args.log_format is None else args.log_format == "json"
    # The daemon logs to stdout for journald; one-shot commands keep stdout
    # for their results and log to stderr.
    stream = sys.stdout if getattr(args, "log_stream", "stderr") == "stdout" else sys.stderr
    configure_logging(json_output=json_output, stream=stream, level=args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"sysmon: {exc}", file=sys.stderr)
        return EXIT_USAGE
