"""The report's page: per metric, which qube was busy when, on one screen.

Each chart is a heatmap (a row per qube, busiest first; time across; colour =
the value) over line charts of the few busiest, and a table of every qube
below it.  It reads the same for 3 qubes and for 400: at most
:data:`MAX_ROWS` rows and :data:`TOP_LINES` lines are drawn, every qube is
in the table.  Names come from qubes: drawn as plain text (never mathtext),
HTML-escaped on the page, cut to :data:`MAX_LABEL` characters.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from sysmon.commands.report.read import MAX_SERIES, Data, ReportError, Series
from sysmon.commands.report.workers import how_many, pool
from sysmon.protocol.names import share_of
from sysmon.protocol.text import strip_controls
from sysmon.store.fs import replace_atomically

#: Rows of a heatmap; the rest are in the table below it.
MAX_ROWS = 40
#: Lines drawn under a heatmap: the busiest qubes.
TOP_LINES = 5
#: Columns of a heatmap at most (a week at 10 s is 60,480 polls).
MAX_BINS = 700
#: Characters of a name or mount drawn on a chart.
MAX_LABEL = 36
#: Alerts listed on the page at most, shared between the qubes (:func:`listed_alerts`).
MAX_ALERTS_LISTED = 2000
#: Bin widths a heatmap may use (s): the first that gives at most MAX_BINS columns.
_WIDTHS = (
    1,
    2,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)


def import_pyplot() -> Any:
    """Pyplot on matplotlib's Agg backend, mathtext off; or a clear :class:`ReportError`."""
    try:
        import matplotlib as mpl  # noqa: PLC0415

        mpl.use("Agg")
        # Names come from qubes: drawn as plain text, never parsed as mathtext.
        mpl.rcParams["text.parse_math"] = False
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise ReportError(
            "sysmon report needs matplotlib: pip install 'sysmon[report]', "
            "or apt-get install python3-matplotlib"
        ) from None
    return plt


@attrs.frozen
class Chart:
    """One metric: a line per label (a qube, or a qube's mount)."""

    name: str
    title: str
    unit: str
    series: dict[str, Series]
    #: "mean": the value in a bin is the mean of its samples; "count": their number.
    kind: str = "mean"
    #: "linear", "log" (rates: a few busy qubes would wash out the rest) or "percent".
    scale: str = "linear"


@attrs.frozen
class Ranked:
    """A chart's labels with data, busiest first (sum of their values), then by name."""

    labels: tuple[str, ...]
    totals: dict[str, float]

    @classmethod
    def of(cls, series: dict[str, Series]) -> Ranked:
        """Rank the labels of ``series``."""
        totals = {k: float(s.v.sum()) for k, s in series.items() if len(s.t)}
        return cls(tuple(sorted(totals, key=lambda k: (-totals[k], k))), totals)


def charts_of(data: Data) -> list[Chart]:
    """The page's charts, in order."""
    net = {vm: Series(rx.t, rx.v + data.tx[vm].v) for vm, rx in data.rx.items()}
    disks = {
        f"{vm} {mount.replace(chr(92) + '040', ' ')}": s for (vm, mount), s in data.disk.items()
    }
    alerts: dict[str, list[float]] = defaultdict(list)
    for t, vm, _msg in data.alerts:
        alerts[vm].append(t)
    import numpy as np  # noqa: PLC0415

    return [
        Chart("cpu", "CPU used (user + system), seen from inside each qube", "% of its CPUs",
              data.cpu, scale="percent"),
        Chart("memory", "Memory used (total - available)", "MiB", data.mem),
        Chart("network", "Network traffic, received + sent (all interfaces but lo)", "KiB/s",
              net, scale="log"),
        Chart("disk", "Disk use per filesystem", "% used", disks, scale="percent"),
        Chart("connections", "Established TCP connections", "connections", data.tcp),
        Chart("xen_cpu", "CPU seen by Xen (admin.vm.Stats): compare with the qube's own",
              "% of its vCPUs", data.xen_cpu, scale="percent"),
        Chart("xen_memory", "Memory assigned by Xen", "MiB", data.xen_mem),
        Chart("failures", "Failed polls (timeout, refused, no-service, ...)", "failed polls",
              data.failures, kind="count"),
        Chart("alerts", "Alerts (journal notice+ and sysmon's own)", "alerts",
              {vm: Series(np.sort(np.array(ts)), np.ones(len(ts))) for vm, ts in alerts.items()},
              kind="count"),
    ]  # fmt: skip


@attrs.frozen
class Bins:
    """The time axis shared by every chart: ``count`` bins of ``width`` s from ``start``."""

    start: float
    width: float
    count: int

    @classmethod
    def spanning(cls, data: Data) -> Bins | None:
        """Bins over every point of ``data``; None when it has none."""
        ends = [
            (float(s.t.min()), float(s.t.max()))
            for chart in data.lines().values()
            for s in chart.values()
            if len(s.t)
        ] + [(t, t) for t, _vm, _msg in data.alerts]
        if not ends:
            return None
        first, last = min(a for a, _ in ends), max(b for _, b in ends)
        width = next((w for w in _WIDTHS if (last - first) / w < MAX_BINS), _WIDTHS[-1])
        if last == first:  # a lone instant: ten minutes around it, not years
            middle = (first + last) / 2
            first, last = middle - 300, middle + 300
        start = first - first % width
        return cls(start, float(width), int((last - start) // width) + 1)

    def coarse_enough(self, np: Any, series: dict[str, Series]) -> Bins:
        """These bins, or wider ones (same span) when the series are sampled sparser.

        Disk lines come once a minute: a column must not fall between two samples.
        """
        gaps = [float(np.median(np.diff(s.t))) for s in series.values() if len(s.t) > 2]
        spacing = float(np.median(gaps)) if gaps else 0.0
        if spacing <= self.width:
            return self
        width = next((w for w in _WIDTHS if w >= spacing), _WIDTHS[-1])
        start = self.start - self.start % width
        end = self.start + self.width * self.count
        return Bins(start, float(width), int((end - start) // width) + 1)

    def matrix(self, np: Any, series: Series, kind: str) -> Any:
        """The series per bin: mean or count; NaN where it has no sample (count 0)."""
        index = ((series.t - self.start) // self.width).astype(int).clip(0, self.count - 1)
        counts = np.bincount(index, minlength=self.count).astype(float)
        counts[counts == 0] = np.nan
        if kind == "count":
            return counts
        return np.bincount(index, weights=series.v, minlength=self.count) / counts

    def edges(self, np: Any) -> Any:
        """Bin edges as matplotlib dates."""
        seconds = self.start + self.width * np.arange(self.count + 1)
        return seconds / 86400.0  # matplotlib's epoch is 1970-01-01, in days


def _label(text: str) -> str:
    shown = strip_controls(text)
    return shown if len(shown) <= MAX_LABEL else shown[: MAX_LABEL - 1] + "…"


def _time_axis(ax: Any, bins: Bins) -> None:
    """Ticks a person reads at once: times of day for a day or less, days for more."""
    import matplotlib.dates as mdates  # noqa: PLC0415

    span = bins.width * bins.count
    locator: Any
    if span <= 3600:
        fmt, locator = "%H:%M:%S", mdates.AutoDateLocator(tz=UTC, maxticks=8)  # type: ignore[no-untyped-call]
    elif span <= 2 * 86400:
        fmt, locator = "%H:%M", mdates.AutoDateLocator(tz=UTC, maxticks=10)  # type: ignore[no-untyped-call]
    else:
        every = max(1, round(span / 86400 / 10))
        fmt, locator = "%a %d %b", mdates.DayLocator(tz=UTC, interval=every)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=UTC))  # type: ignore[no-untyped-call]
    first = datetime.fromtimestamp(bins.start, tz=UTC)
    last = datetime.fromtimestamp(bins.start + span, tz=UTC)
    days = f"{first:%Y-%m-%d}" + ("" if first.date() == last.date() else f" to {last:%Y-%m-%d}")
    ax.set_xlabel(f"UTC, {days}")


@attrs.frozen(eq=False)
class Picture:
    """What one chart's PNG is drawn from: its bins' values, a few thousand numbers.

    Made from the series in the main process (:func:`plan`), painted anywhere
    (:func:`paint`): a worker process is sent this, not the week's points.
    """

    chart: Chart  # its series left out: see :func:`plan`
    bins: Bins
    labels: tuple[str, ...]  # the heatmap's rows, busiest first
    shown: int  # labels with data (the rest are in the table)
    grid: Any  # a row of bins per label
    #: The colour scale: (log, lowest, highest).
    norm: tuple[bool, float, float]
    log: bool  # the lines on a log scale
    #: The busiest few: label and values per bin.
    lines: tuple[tuple[str, Any], ...]


def plan(chart: Chart, bins: Bins) -> tuple[Picture | None, Ranked]:
    """The chart's :class:`Picture` (None when no qube has data) and its ranking."""
    import numpy as np  # noqa: PLC0415

    ranked = Ranked.of(chart.series)
    if not ranked.labels:
        return None, ranked
    log = chart.scale == "log" and any((chart.series[k].v > 0).any() for k in ranked.labels)
    if chart.kind == "mean":
        bins = bins.coarse_enough(np, chart.series)
    rows = ranked.labels[:MAX_ROWS]
    grid = np.vstack([bins.matrix(np, chart.series[k], chart.kind) for k in rows])
    top = float(np.nanmax(grid)) if np.isfinite(grid).any() else 1.0
    norm: tuple[bool, float, float]
    if chart.scale == "percent":  # 0 to the highest seen: 2% and 9% must look apart
        norm = (False, 0.0, min(100.0, top) if top > 0 else 1.0)
    elif log and top > 0:
        positive = grid[grid > 0]
        norm = (True, max(float(np.nanpercentile(positive, 1)), top * 1e-6), top)
        grid = np.where(grid > 0, grid, np.nan)
    else:
        norm = (False, 0.0, top if top > 0 else 1.0)
    lines = tuple(
        (k, bins.matrix(np, chart.series[k], chart.kind)) for k in ranked.labels[:TOP_LINES]
    )
    picture = Picture(
        attrs.evolve(chart, series={}), bins, rows, len(ranked.labels), grid, norm, log, lines
    )
    return picture, ranked


def draw(plt: Any, chart: Chart, bins: Bins) -> tuple[bytes | None, Ranked]:
    """The chart's PNG (None when no qube has data) and its ranking."""
    picture, ranked = plan(chart, bins)
    return (None if picture is None else paint(plt, picture)), ranked


def paint(plt: Any, picture: Picture) -> bytes:
    """The PNG of a :class:`Picture`."""
    import numpy as np  # noqa: PLC0415
    from matplotlib.colors import LogNorm, Normalize  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: PLC0415

    chart, bins, rows, grid, log = (
        picture.chart, picture.bins, picture.labels, picture.grid, picture.log
    )  # fmt: skip
    norm: Any = (LogNorm if picture.norm[0] else Normalize)(*picture.norm[1:])
    heat_height = 0.6 + 0.22 * len(rows)
    fig, (heat, lines) = plt.subplots(
        2, 1, sharex=True, figsize=(11, heat_height + 2.8), constrained_layout=True,
        gridspec_kw={"height_ratios": [heat_height, 2.4]},
    )  # fmt: skip
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")  # grey: no sample
    edges = bins.edges(np)
    image = heat.pcolormesh(edges, np.arange(len(rows) + 1), grid, cmap=cmap, norm=norm)
    heat.set_ylim(len(rows), 0)
    heat.set_yticks(np.arange(len(rows)) + 0.5)
    heat.set_yticklabels([_label(k) for k in rows], fontsize=8)
    per_bin = "count" if chart.kind == "count" else "mean"
    blank = "none" if chart.kind == "count" else "no sample"
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")  # mathtext is off: no 10^x
    fig.colorbar(image, ax=heat, label=chart.unit, pad=0.01, format=plain)
    more = f" (the first {MAX_ROWS} drawn, all in the table)" if picture.shown > MAX_ROWS else ""
    heat.set_title(
        f"{picture.shown} with data, busiest first{more}"
         f"; a column is the {per_bin} over {_duration(bins.width)}; grey: {blank}",
        loc="left", fontsize=9,
    )  # fmt: skip
    middles = (edges[:-1] + edges[1:]) / 2
    highest = 0.0
    for k, values in picture.lines:
        highest = max(highest, float(np.nanmax(values)) if np.isfinite(values).any() else 0.0)
        style = "o" if chart.kind == "count" or np.isfinite(values).sum() == 1 else "-"
        lines.plot(middles, values, style, markersize=3, linewidth=1.0, label=_label(k))
    lines.set_ylabel(chart.unit)
    if log:  # not when nothing moved: a log scale has no 0
        lines.set_yscale("log")
        lines.yaxis.set_major_formatter(plain)
        lines.yaxis.set_minor_formatter(NullFormatter())
    else:  # from 0, with room above the highest line (a flat one is not hidden in the frame)
        lines.set_ylim(0, highest * 1.15 if highest > 0 else 1.0)
    lines.grid(alpha=0.3)
    lines.legend(  # above the lines, under the heatmap: it hides no point
        loc="lower left",
        bbox_to_anchor=(0.0, 1.0),
        fontsize=8,
        ncol=TOP_LINES,
        frameon=False,
        title=f"the busiest {min(TOP_LINES, picture.shown)}:",
        title_fontsize=8,
        alignment="left",
    )
    lines.set_xlim(edges[0], edges[-1])
    _time_axis(lines, bins)
    fig.suptitle(chart.title, fontsize=12, x=0.01, ha="left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _paint_here(picture: Picture) -> bytes:
    """:func:`paint` in a worker process."""
    return paint(import_pyplot(), picture)


def paint_all(pictures: list[Picture], workers: int | None = None) -> list[bytes]:
    """The PNGs of ``pictures``, on ``workers`` cores (default: all; Agg draws on one).

    This process paints its share too, beside ``workers - 1`` others: its
    caches (fonts, text layouts) are warm, a worker's are made for it.
    """
    workers = how_many(workers, len(pictures))
    plt = import_pyplot()
    if workers <= 1:
        return [paint(plt, picture) for picture in pictures]
    with pool(workers - 1) as others:
        theirs = {
            i: others.submit(_paint_here, picture)
            for i, picture in enumerate(pictures)
            if i % workers
        }
        mine = {i: paint(plt, p) for i, p in enumerate(pictures) if not i % workers}
        return [mine[i] if i in mine else theirs[i].result() for i in range(len(pictures))]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def _table(chart: Chart, ranked: Ranked) -> str:
    """Every qube of the chart: mean, peak, samples; busiest first."""
    head = "total" if chart.kind == "count" else "mean"
    rows = [
        (
            f"<details><summary>All {len(ranked.labels)} in a table</summary><table>"
            f"<tr><th>#</th><th>name</th><th>{head}</th><th>peak</th><th>samples</th></tr>"
        )
    ]
    for i, k in enumerate(ranked.labels, 1):
        s = chart.series[k]
        value = ranked.totals[k] if chart.kind == "count" else ranked.totals[k] / len(s.v)
        rows.append(
            f"<tr><td>{i}</td><td>{html.escape(strip_controls(k))}</td><td>{value:,.1f}</td>"
            f"<td>{float(s.v.max()):,.1f}</td><td>{len(s.v):,}</td></tr>"
        )
    rows.append("</table></details>")
    return "".join(rows)


def listed_alerts(
    alerts: list[tuple[float, str, str]], limit: int = MAX_ALERTS_LISTED
) -> list[tuple[float, str, str]]:
    """The alerts the page lists, in time order: each qube's newest, ``limit`` at most.

    The room is shared: a qube with fewer alerts than its share has all of
    them listed, the others the same number each (the newest), and what is
    left of the room one more each, those whose next alert is the newest
    first (all of it so, when there are more qubes than room).  A qube
    flooding its journal cannot push another qube's alerts off the page.
    """
    by_vm: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    for alert in sorted(alerts):
        by_vm[share_of(alert[1])].append(alert)  # disposables: one share
    quota, left, qubes = None, limit, len(by_vm)
    for n in sorted(len(kept) for kept in by_vm.values()):
        if n > left // qubes:
            quota = left // qubes
            break
        left, qubes = left - n, qubes - 1
    if quota is None:
        return sorted(alerts)
    capped = [kept for kept in by_vm.values() if len(kept) > quota]
    capped.sort(key=lambda kept: kept[-quota - 1], reverse=True)  # next alert, newest first
    extra = left - quota * len(capped)  # what rounding down left, fewer than the qubes
    whole = [alert for kept in by_vm.values() if len(kept) <= quota for alert in kept]
    cut = [
        alert for i, kept in enumerate(capped) for alert in kept[len(kept) - quota - (i < extra) :]
    ]
    return sorted(whole + cut)


def identical(data: Data) -> list[list[str]]:
    """Qubes whose CPU series are the same points: one machine under several names."""
    groups: dict[bytes, list[str]] = defaultdict(list)
    for vm, s in data.cpu.items():
        if len(s.t) > 1:
            groups[hashlib.sha256(s.t.tobytes() + s.v.tobytes()).digest()].append(vm)
    return [sorted(vms) for vms in groups.values() if len(vms) > 1]


def write_whole(path: Path, data: bytes) -> None:
    """``path`` with all of ``data``, or left as it was: a full disk leaves no cut file.

    The error names ``path`` (a failed ``write`` has no file name of its own).
    """
    try:
        # 0o666 less the umask, as a page and charts were always written.
        replace_atomically(path, data, sync=False, mode=0o666)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def render(data: Data, out: Path, summary: str = "", *, workers: int | None = None) -> Path:
    """Write the PNG charts and one self-contained ``index.html`` into ``out``.

    ``summary``: the first screen's HTML (summary.py), above the charts.
    ``workers``: processes drawing them (default: one per core).
    """
    import_pyplot()  # before any work: a missing matplotlib is said at once
    out.mkdir(parents=True, exist_ok=True)
    bins = Bins.spanning(data)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sysmon report</title>",
        (
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
            "td:nth-child(n+3){text-align:right}img{max-width:100%}</style></head><body>"
        ),
        f"<h1>sysmon report</h1><p>{data.rows:,} rows read. All times UTC.</p>",
        summary,
    ]  # fmt: skip
    if data.skipped or data.cut_series:
        parts.append(
            f"<p>{data.skipped:,} rows skipped (unreadable, or a time outside 1970-2199); "
            f"{data.cut_series:,} rows of mounts past {MAX_SERIES} per qube not drawn.</p>"
        )
    for vms in identical(data):
        names = ", ".join(html.escape(vm) for vm in vms)
        parts.append(
            f"<p><b>{names} report identical CPU series</b>: they are one machine under "
            "several names (as the qubes of <code>sysmon demo</code> are), so their charts "
            "are alike.</p>"
        )
    parts.append("<h2>Poll health</h2><table><tr><th>qube</th><th>status counts</th></tr>")
    for vm, counts in sorted(data.health.items()):
        shown = ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(counts.items()))
        parts.append(f"<tr><td>{html.escape(vm)}</td><td>{shown}</td></tr>")
    parts.append("</table>")
    charts = charts_of(data)
    planned = [plan(chart, bins) if bins else (None, Ranked.of({})) for chart in charts]
    pngs = iter(paint_all([p for p, _ in planned if p is not None], workers))
    for chart, (picture, ranked) in zip(charts, planned, strict=True):
        parts.append(f"<h2 id='{chart.name}'>{html.escape(chart.title)}</h2>")
        if picture is None:
            parts.append("<p>No data.</p>")
            continue
        png = next(pngs)
        write_whole(out / f"{chart.name}.png", png)
        encoded = base64.b64encode(png).decode()
        parts.append(f"<img alt='{chart.name}' src='data:image/png;base64,{encoded}'>")
        parts.append(_table(chart, ranked))
    listed = listed_alerts(data.alerts)
    parts.append(f"<h2 id='alert-list'>Alerts ({len(data.alerts):,})</h2>")
    if len(listed) < len(data.alerts):
        parts.append(
            f"<p>{len(listed):,} listed: the newest of each qube, {MAX_ALERTS_LISTED:,} "
            "at most, shared between the qubes.</p>"
        )
    parts.append("<table><tr><th>poll (UTC)</th><th>qube</th><th>message</th></tr>")
    for t, vm, msg in listed:
        when = datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        parts.append(
            f"<tr><td>{when}</td><td>{html.escape(vm)}</td><td>{html.escape(msg)}</td></tr>"
        )
    parts.append("</table></body></html>")
    page = out / "index.html"
    write_whole(page, "\n".join(parts).encode())
    return page
