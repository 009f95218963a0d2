"""``sysmon export``: day folders and vault archives into the time-series engines.

sys-monitor has no network, so its days leave only as ``monitor-DAY.tgz`` in the
vault.  This turns them -- read in place, never extracted, through the
schema's one bounded decoder -- into what the engines take in:

- ``--push URL``: straight into VictoriaMetrics' ``/api/v1/import`` over HTTP,
  a day per request, streamed (chunked, bounded memory), each series a JSON
  line with its values and times as arrays (``victoriametrics``); a day that
  fails is sent again, the ledger notes it only once the engine took it;
- ``openmetrics`` (``promtool tsdb create-blocks-from openmetrics``, or
  VictoriaMetrics' ``/api/v1/import/prometheus``): every numeric cell a sample
  (an empty cell none), families together (each family is spooled to a file of
  its own while the days are read once, then written whole), ``# EOF`` at the end;
- ``victoriametrics``: the JSON lines ``--push`` sends, for ``curl -T``;
- ``influx``: one line per row, a measurement per file;
- ``alerts-jsonl``: each alert a push body for Loki.

``-o DIR`` (an existing folder) writes a file per day, each whole or not at all.
The ``host`` label is the archive's own (its ``sysmon-meta.json``) or a day
folder's out_dir's ``host-id`` (made at sys-monitor's first tick), unless
``--host`` says otherwise; the ``host_name`` setting, when set, is a
``host_name`` label beside it.  A ledger (:mod:`.ledger`) of (host, day,
content hash) makes a second export of the same day -- or of the vault's
``monitor-DAY.2.tgz`` copy -- write nothing.  Labels, units and counter or
gauge come from the files' description (:mod:`sysmon.schema.exposition`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import IO, TextIO

from sysmon import schema
from sysmon.commands.export.ledger import Ledger, LedgerBusyError, default_ledger, held
from sysmon.commands.export.push import PushError, Target, push_days
from sysmon.commands.export.series import (
    FORMATS,
    MAX_LABEL_VALUES,
    MAX_QUBES,
    Counts,
    Day,
    day_pieces,
)
from sysmon.commands.progress import Progress
from sysmon.schema import exposition
from sysmon.store import identity
from sysmon.store.archive import META_NAME
from sysmon.store.days import ArchiveError, archive_day, day_members, day_units

__all__ = [
    "FORMATS",
    "MAX_LABEL_VALUES",
    "MAX_QUBES",
    "Counts",
    "Day",
    "ExportError",
    "Ledger",
    "default_ledger",
    "describe",
    "export",
    "main",
    "plan",
    "write_days",
]

_HOST = identity.HOST_LABEL
_FILES = {s.file_name: s for s in schema.DAILY_FILES}


class ExportError(Exception):
    """Nothing can be exported; the message says why."""


#: What a damaged archive (or an unreadable file) raises while it is read.
_UNREADABLE = (tarfile.TarError, EOFError, zlib.error, OSError)


def _read_meta(opener: Callable[[], IO[bytes]]) -> dict[str, object]:
    with opener() as f:
        text = f.read(4096)
    try:
        meta = json.loads(text)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def describe(path: Path, host: str | None, progress: Progress | None = None) -> Day:
    """The day at ``path``: its date, host (``host`` first, else its metadata), content hash.

    Raises:
        ExportError: no day in the name, or no host anywhere.
    """
    day = archive_day(path.name) if path.is_file() else None
    if path.is_dir():
        try:
            day = date.fromisoformat(path.name)
        except ValueError:
            day = None
    if day is None:
        raise ExportError(f"{path}: not a day folder or a monitor-YYYY-MM-DD.tgz")
    digest = hashlib.sha256()
    meta: dict[str, object] = {}
    progress = progress or Progress.quiet()
    read = 0
    try:
        for name, opener in day_members(path):
            if name == META_NAME:
                meta = _read_meta(opener)
            if name not in _FILES:
                continue
            digest.update(name.encode() + b"\0")
            with opener() as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    read += len(chunk)
                    progress.update(f"reading {day}", read, "bytes")
    except _UNREADABLE as exc:
        raise ExportError(f"{path}: cannot be read ({exc})") from None
    host_name = meta.get("host_name")
    try:
        if host is None:
            named = meta.get("host")
            host = named if isinstance(named, str) else None
            if host is None and path.is_dir():
                # sys-monitor makes it at its first tick (a folder of before: --host).
                host = identity.read_host_id(path.parent)
        if host_name is None and path.is_dir():
            host_name = identity.read_host_name(path.parent)
    except identity.IdentityError as exc:
        raise ExportError(f"{exc}: name the host with --host NAME") from None
    except OSError as exc:
        raise ExportError(f"{path}: the host identity cannot be read ({exc})") from None
    if host is None or not _HOST.fullmatch(host):
        raise ExportError(
            f"{path}: no host identity (an archive made before sysmon-meta.json, or a "
            "folder without its out_dir's host-id): name it with --host NAME"
        )
    if host_name is not None and not (isinstance(host_name, str) and _HOST.fullmatch(host_name)):
        raise ExportError(f"{path}: its host_name is not a label ({META_NAME} was replaced)")
    return Day(path, day, host, digest.hexdigest(), host_name)


def export(
    paths: list[Path],
    out: TextIO,
    *,
    fmt: str = "openmetrics",
    host: str | None = None,
    since: date | None = None,
    until: date | None = None,
    ledger: Ledger | None = None,
) -> Counts:
    """Export the days under ``paths`` to ``out``; return what was written.

    Raises:
        ExportError: a path that holds no day, a day without a host, an archive
            that cannot be read.
    """
    chosen, skipped = plan(paths, fmt=fmt, host=host, since=since, until=until, ledger=ledger)
    return write_days(chosen, out, fmt=fmt, ledger=ledger, skipped_days=skipped)


def plan(
    paths: list[Path],
    *,
    fmt: str,
    host: str | None,
    since: date | None,
    until: date | None,
    ledger: Ledger | None,
    progress: Progress | None = None,
) -> tuple[list[Day], int]:
    """The days to export, and how many the ledger (or a copy) left out.

    Every day is read whole here (its hash), so a damaged archive is found
    before anything is written.

    Raises:
        ExportError: as :func:`export`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if host is not None and not _HOST.fullmatch(host):
        raise ExportError(f"--host {host!r}: letters, digits, '_', '.', '-' (64 at most)")
    try:
        # Each path's own days: two machines' vault folders both hold monitor-DAY.tgz.
        units = list(dict.fromkeys(unit for path in paths for unit in day_units([path])))
    except ArchiveError as exc:
        raise ExportError(str(exc)) from None
    days = _one_per_host_day([describe(path, host, progress) for path in units])
    days = [
        d for d in days if (since is None or d.day >= since) and (until is None or d.day <= until)
    ]
    skipped = 0
    chosen: list[Day] = []
    for day in days:
        if ledger is not None and ledger.seen(day):
            skipped += 1
        elif any((d.host, d.day, d.digest) == (day.host, day.day, day.digest) for d in chosen):
            skipped += 1  # the same day twice in one run (a .2 copy)
        else:
            chosen.append(day)
    return chosen, skipped


def _one_per_host_day(days: list[Day]) -> list[Day]:
    """A host's day once (a folder over its archive, the newest copy), by day.

    Only once the hosts are known: the same day of two hosts is two days.
    """
    by_key: dict[tuple[str, date], list[Day]] = {}
    for day in days:
        by_key.setdefault((day.host, day.day), []).append(day)
    kept: list[Day] = []
    for group in by_key.values():
        (path,) = day_units([d.path for d in group])  # one day: one unit
        kept.append(next(d for d in group if d.path == path))
    return sorted(kept, key=lambda d: d.day)


def write_days(
    chosen: list[Day],
    out: TextIO,
    *,
    fmt: str,
    ledger: Ledger | None,
    skipped_days: int = 0,
    progress: Progress | None = None,
) -> Counts:
    """Write the days :func:`plan` chose to ``out``; then remember them in ``ledger``."""
    counts = Counts(skipped_days=skipped_days)
    progress = progress or Progress.quiet()
    what = "samples" if fmt in {"openmetrics", "victoriametrics"} else "lines"
    with tempfile.TemporaryDirectory(prefix="sysmon-export-") as spool_dir, ExitStack() as stack:
        spools: dict[str, TextIO] = {}
        for n, day in enumerate(chosen, 1):
            stage = f"day {n}/{len(chosen)} {day.day}"
            for family, text in day_pieces(day, fmt, counts):
                progress.update(stage, counts.samples, what)  # a series: thousands of lines
                if fmt != "openmetrics":
                    out.write(text)
                    continue
                spool = spools.get(family)
                if spool is None:
                    path = Path(spool_dir) / f"{len(spools)}.om"
                    spool = spools[family] = stack.enter_context(path.open("w+", encoding="utf-8"))
                spool.write(text)
            counts.days += 1
        if fmt == "openmetrics":
            _write_families(out, spools, progress)
    out.flush()
    if ledger is not None:
        ledger.record(chosen)
    return counts


def _write_families(out: TextIO, spools: dict[str, TextIO], progress: Progress) -> None:
    """Each family whole, in the table's order, then ``# EOF``."""
    order = [(f.name, f.kind, f.help) for f in exposition.FAMILIES]
    order += [
        (o.name, "gauge", f"1 when the row's {o.column.name} is the label's")
        for o in exposition.ONE_HOTS
    ]
    order.append((exposition.CUT_FAMILY, "gauge", exposition.CUT_HELP))
    total = sum(spool.tell() for spool in spools.values())  # each is at its end
    done = 0
    for name, kind, help_text in order:
        spool = spools.get(name)
        if spool is None:
            continue
        out.write(exposition.openmetrics_header(name, kind, help_text))
        spool.seek(0)
        while chunk := spool.read(1 << 20):
            out.write(chunk)
            done += len(chunk)  # characters: the bytes but for a name's UTF-8
            progress.update("writing the families", done, "bytes", total=total)
    out.write("# EOF\n")


def _write_file(
    output: Path,
    chosen: list[Day],
    *,
    fmt: str,
    ledger: Ledger | None,
    skipped_days: int,
    progress: Progress | None = None,
) -> Counts:
    """Write ``output`` whole or not at all.

    A temporary file beside it is renamed over it only when complete: a
    failure leaves ``output`` as it was, and no partial file.
    """
    fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            counts = write_days(
                chosen, out, fmt=fmt, ledger=None, skipped_days=skipped_days, progress=progress
            )
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if ledger is not None:
        ledger.record(chosen)  # only once the file is in place
    return counts


#: A per-day file's suffix, by format.
SUFFIXES = {
    "openmetrics": "om",
    "victoriametrics": "jsonl",
    "influx": "lp",
    "alerts-jsonl": "loki.jsonl",
}


def _write_per_day(
    folder: Path,
    chosen: list[Day],
    *,
    fmt: str,
    ledger: Ledger | None,
    skipped_days: int,
    progress: Progress,
) -> Counts:
    """A file per day in ``folder`` (``HOST-DAY.om``...), each whole, noted once in place."""
    total = Counts(skipped_days=skipped_days)
    for day in chosen:
        output = folder / f"{day.host}-{day.day.isoformat()}.{SUFFIXES[fmt]}"
        total.add(
            _write_file(output, [day], fmt=fmt, ledger=ledger, skipped_days=0, progress=progress)
        )
    return total


def main(
    paths: list[Path],
    *,
    fmt: str,
    host: str | None,
    start: str | None,
    end: str | None,
    output: Path | None,
    ledger: Path | None,
    use_ledger: bool,
    push: str | None = None,
) -> int:
    """``sysmon export``: exit 2 with the reason when nothing can be exported."""
    try:
        since = date.fromisoformat(start) if start else None
        until = date.fromisoformat(end) if end else None
    except ValueError as exc:
        print(f"sysmon export: --from/--to: {exc}", file=sys.stderr)
        return 2
    target = None
    if push is not None:
        if output is not None or fmt not in {"openmetrics", "victoriametrics"}:
            print("sysmon export: --push sends its own format: no -o or --format", file=sys.stderr)
            return 2
        fmt = "victoriametrics"
        try:
            target = Target.parse(push)
        except PushError as exc:
            print(f"sysmon export: {exc}", file=sys.stderr)
            return 2
    if target is None and output is None and sys.stdout is None:  # run with >&-
        print("sysmon export: stdout: closed (-o FILE writes a file)", file=sys.stderr)
        return 1
    engine = target.engine if target is not None else ""
    book_path = (ledger or default_ledger(engine, fmt)) if use_ledger else None
    with ExitStack() as stack:
        if book_path is not None:
            try:
                stack.enter_context(held(book_path))
            except LedgerBusyError as exc:
                print(f"sysmon export: {exc}", file=sys.stderr)
                return 1
            except OSError as exc:
                print(f"sysmon export: ledger {book_path}: {exc.strerror or exc}", file=sys.stderr)
                return 2
        book = Ledger(book_path) if book_path is not None else None  # read once it is ours
        return _run(
            paths,
            fmt=fmt,
            host=host,
            since=since,
            until=until,
            output=output,
            book=book,
            target=target,
        )


def _run(
    paths: list[Path],
    *,
    fmt: str,
    host: str | None,
    since: date | None,
    until: date | None,
    output: Path | None,
    book: Ledger | None,
    target: Target | None,
) -> int:
    """``sysmon export`` once its arguments are read and its ledger (if any) is held."""
    # On a terminal only: a pipe or a log gets the summary line alone.
    progress = Progress("sysmon export")
    try:
        chosen, skipped = plan(
            paths, fmt=fmt, host=host, since=since, until=until, ledger=book, progress=progress
        )
    except ExportError as exc:
        progress.close()
        print(f"sysmon export: {exc}", file=sys.stderr)
        return 2
    if not chosen and skipped and book is not None:
        progress.close()
        # Not an empty export over the last one: nothing is written at all.
        print(
            f"sysmon export: nothing to export: all {skipped} days were exported before "
            f"(ledger {book.path}; --no-ledger exports them again)",
            file=sys.stderr,
        )
        return 1
    try:
        if target is not None:
            counts = push_days(chosen, target, ledger=book, skipped_days=skipped, progress=progress)
        elif output is None:
            counts = write_days(
                chosen, sys.stdout, fmt=fmt, ledger=book, skipped_days=skipped, progress=progress
            )
        elif output.is_dir():
            counts = _write_per_day(
                output, chosen, fmt=fmt, ledger=book, skipped_days=skipped, progress=progress
            )
        else:
            counts = _write_file(
                output, chosen, fmt=fmt, ledger=book, skipped_days=skipped, progress=progress
            )
    except PushError as exc:
        progress.close()
        print(f"sysmon export: --push: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        progress.close()
        print(f"sysmon export: {output or 'stdout'}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    progress.close()
    what = "samples" if fmt in {"openmetrics", "victoriametrics"} else "lines"
    where = f" into {target}" if target is not None else ""
    print(
        f"sysmon export: {counts.days} days{where}, {counts.samples:,} {what}; "
        f"{counts.skipped_days} days exported before (ledger), "
        f"{counts.unreadable:,} rows unreadable, {counts.cut:,} rows past the label caps",
        file=sys.stderr,
    )
    return 0
