"""Command line: ``python -m sysmon once|run|status|top|archive|report|export|demo``.

Each command lives in :mod:`sysmon.commands`; this module parses, configures
logging and loads the configuration (errors exit 2, naming the key).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from sysmon import __version__
from sysmon.config import Config, ConfigError, load_config
from sysmon.logconfig import configure_logging

EXIT_USAGE = 2
#: 128 + SIGINT, as a shell reports a command Ctrl-C ended.
EXIT_INTERRUPTED = 130
#: 128 + SIGTERM.
EXIT_TERMINATED = 143


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.out_dir is not None:
        config = attrs.evolve(config, out_dir=args.out_dir)
    return config


def cmd_once(args: argparse.Namespace) -> int:
    """Poll every running qube once: one tick of the daemon's pipeline."""
    from sysmon.commands import once  # noqa: PLC0415 -- each command loads what it needs

    return once.main(_config(args))


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: poll every interval until SIGTERM."""
    from sysmon.commands import daemon  # noqa: PLC0415

    config = _config(args)
    if args.interval is not None:
        timeout = config.scrape_timeout
        if timeout >= args.interval:
            timeout = args.interval * 0.8
        config = attrs.evolve(config, interval=args.interval, scrape_timeout=timeout)
    return daemon.main(config)


def cmd_status(args: argparse.Namespace) -> int:
    """From the files alone: is it running, and how is each qube."""
    from sysmon.commands import status  # noqa: PLC0415
    from sysmon.commands.daemon import utc_now  # noqa: PLC0415

    config = _config(args)
    return status.main(config.out_dir, config.interval, utc_now())


def cmd_top(args: argparse.Namespace) -> int:
    """Every qube at a glance, live, from the files."""
    from sysmon.commands import top  # noqa: PLC0415

    if args.width is not None and args.width <= 0:
        print(f"sysmon top: --width must be above 0 columns, got {args.width}", file=sys.stderr)
        return EXIT_USAGE
    config = _config(args)
    return top.main(config.out_dir, config.interval, once_only=args.once, width=args.width)


def cmd_archive(args: argparse.Namespace) -> int:
    """Archive complete days now (and deliver them to the vault)."""
    from sysmon.commands import archive  # noqa: PLC0415
    from sysmon.commands.daemon import utc_now  # noqa: PLC0415

    config = _config(args)
    if config.out_dir.exists() and not config.out_dir.is_dir():
        print(f"sysmon archive: out_dir {config.out_dir}: not a folder", file=sys.stderr)
        return 1
    return archive.main(config, args, utc_now().date())


def cmd_report(args: argparse.Namespace) -> int:
    """An offline HTML page with charts from day folders and archives."""
    from sysmon.commands import report  # noqa: PLC0415
    from sysmon.commands.report.workers import end_on_sigterm  # noqa: PLC0415

    end_on_sigterm("sysmon report", EXIT_TERMINATED)
    return report.main(args.paths, args.out, args.vm, args.start, args.end)


def cmd_export(args: argparse.Namespace) -> int:
    """Day folders and archives as OpenMetrics, Influx lines or Loki pushes."""
    from sysmon.commands import export  # noqa: PLC0415

    return export.main(
        args.paths,
        fmt=args.format,
        host=args.host,
        start=args.start,
        end=args.end,
        output=args.output,
        ledger=args.ledger,
        use_ledger=not args.no_ledger,
        push=args.push,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon's pipeline against this machine presented as a few qubes."""
    from sysmon.commands import demo  # noqa: PLC0415

    return demo.main(args.out_dir.expanduser(), args.duration, args.interval)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="sysmon", description="Metrics for every qube of a Qubes OS system."
    )
    parser.add_argument("--version", action="version", version=f"sysmon {__version__}")
    parser.add_argument(
        "--log-format", choices=["json", "console"], help="default: console on a tty, else JSON"
    )
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument(
        "--config", type=Path, help="TOML file (default /etc/sysmon/sysmon.toml if present)"
    )
    files.add_argument("--out-dir", type=Path, help="where the day folders are (default ~/Monitor)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, **kwargs: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, **kwargs)  # type: ignore[arg-type]

    once = command("once", "poll every running qube once into the daily files", parents=[files])
    once.set_defaults(func=cmd_once, log_level=logging.WARNING)

    run = command("run", "the collector daemon: poll every interval until SIGTERM", parents=[files])
    run.add_argument("--interval", type=float, help="seconds between polls (default 10)")
    run.set_defaults(func=cmd_run, log_level=logging.INFO, log_stream="stdout")

    status = command(
        "status", "newest rows and each qube's last poll, from the files", parents=[files]
    )
    status.set_defaults(func=cmd_status, log_level=logging.WARNING)

    top = command(
        "top", "every qube live: status, CPU, memory, network, disk, last 30 min", parents=[files]
    )
    top.add_argument("--once", action="store_true", help="print the table once, as plain text")
    top.add_argument("--width", type=int, help="--once: columns (default: the terminal's, or 100)")
    top.set_defaults(func=cmd_top, log_level=logging.WARNING)

    archive = command(
        "archive", "archive complete UTC days and copy them to the vault", parents=[files]
    )
    archive.add_argument("--day", help="only this day (YYYY-MM-DD)")
    archive.add_argument("--no-copy", action="store_true", help="build and verify, do not copy")
    archive.add_argument("--force", action="store_true", help="deliver again a delivered day")
    archive.set_defaults(func=cmd_archive, log_level=logging.WARNING)

    report = command("report", "HTML page with charts from day folders and archives")
    report.add_argument("paths", type=Path, nargs="+", help="day folders, out_dirs, monitor-*.tgz")
    report.add_argument("--out", type=Path, default=Path("sysmon-report"))
    report.add_argument("--vm", action="append", help="only this qube (repeatable)")
    report.add_argument("--from", dest="start", help="UTC date or time, e.g. 2025-08-31T06:00")
    report.add_argument("--to", dest="end", help="UTC date or time")
    report.set_defaults(func=cmd_report, log_level=logging.WARNING)

    export = command("export", "day folders and archives for VictoriaMetrics, Prometheus, Loki")
    export.add_argument("paths", type=Path, nargs="+", help="day folders, out_dirs, monitor-*.tgz")
    export.add_argument(
        "--format",
        choices=("openmetrics", "victoriametrics", "influx", "alerts-jsonl"),
        default="openmetrics",
    )
    export.add_argument("--host", help="the host label (default: the archive's own identity)")
    export.add_argument("--from", dest="start", help="first UTC day, YYYY-MM-DD")
    export.add_argument("--to", dest="end", help="last UTC day, YYYY-MM-DD")
    export.add_argument(
        "-o", "--output", type=Path, help="write here, not to stdout (a folder: a file per day)"
    )
    export.add_argument(
        "--push",
        metavar="URL",
        help="into VictoriaMetrics over HTTP (http://HOST:8428), a day at a time",
    )
    export.add_argument("--ledger", type=Path, help="days exported before (default: XDG state)")
    export.add_argument("--no-ledger", action="store_true", help="export every day, remember none")
    export.set_defaults(func=cmd_export, log_level=logging.WARNING)

    demo = command("demo", "run the real pipeline on this machine, shown as a few qubes")
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
    if sys.stdout is None:  # started with fd 1 closed: every print would vanish
        print(f"sysmon {args.command}: standard output is closed", file=sys.stderr)
        return 1
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
    except BaseException as exc:
        if _only(exc, BrokenPipeError):
            # The reader went away (``sysmon demo | head``): stop quietly.  stdout
            # goes to /dev/null so that Python's own flush at exit cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        if _only(exc, KeyboardInterrupt):
            print(f"sysmon {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if _only(exc, OSError):
            # A file or folder the command cannot use (read-only, missing, full):
            # what and where, not a traceback.  Rows already written stay written.
            print(f"sysmon {args.command}: {_os_error(exc)}", file=sys.stderr)
            return 1
        raise


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is a ``kind``, alone or as every error of a nursery's group."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)


def _os_error(exc: BaseException) -> str:
    """The first OSError of ``exc`` as ``FILE: reason``."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)
