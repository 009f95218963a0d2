"""``sysmon report``: an offline HTML page with charts, from day folders and archives.

Meant for an offline analysis qube, after restoring archives from the vault.
pandas and matplotlib are an optional extra (``pip install 'sysmon[report]'``,
or Debian's python3-pandas and python3-matplotlib).  :mod:`.read` reads every
day once, a day per process; :mod:`.render` draws the page.
"""

from __future__ import annotations

import errno
import sys
import tempfile
from pathlib import Path

from sysmon.commands.progress import Progress
from sysmon.commands.report.read import ReportError, load, parse_when, units
from sysmon.commands.report.render import render
from sysmon.commands.report.summary import draw_views, render_summary, summarize


def main(
    paths: list[Path], out: Path, vms: list[str] | None, start: str | None, end: str | None
) -> int:
    """``sysmon report``: exit 2 with the reason when there is nothing to draw."""
    try:
        since = parse_when(start) if start else float("-inf")
        until = parse_when(end) if end else float("inf")
    except ReportError as exc:
        print(f"sysmon report: {exc}", file=sys.stderr)
        return 2
    try:
        # Before reading days for minutes: the page's folder must be one we can write.
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(out))
        with tempfile.TemporaryFile(dir=out if out.exists() else out.parent):
            pass
    except OSError as exc:
        print(f"sysmon report: --out {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # On a terminal only: a pipe or a log gets the page's name alone.
    progress = Progress("sysmon report")
    try:
        data = load(paths, set(vms) if vms else None, since, until, progress=progress)
        if data.rows == 0:
            raise ReportError("no sysmon rows in " + ", ".join(map(str, paths)))
        progress.update("gathering what needs attention", data.rows, "rows")
        summary = summarize(units(paths), set(vms) if vms else None, since, until)
        progress.update("drawing the charts", data.rows, "rows")
        page = render(data, out, render_summary(summary, draw_views(summary, out)))
    except ReportError as exc:
        progress.close()
        print(f"sysmon report: {exc}", file=sys.stderr)
        return 2
    progress.close()
    print(f"{page} ({data.rows:,} rows)")
    return 0
