"""``sysmon report``: an offline HTML page with charts, from day folders and archives.

Meant for an offline analysis qube, after restoring archives from the vault.
matplotlib is an optional extra (``pip install 'sysmon[report]'``, or
Debian's python3-matplotlib).  Everything read is treated as untrusted text:
it is parsed as numbers or HTML-escaped, never interpreted.
"""

from __future__ import annotations

import base64
import concurrent.futures
import csv
import html
import io
import math
import os
import sys
import tarfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import attrs

from sysmon import schema
from sysmon.protocol.text import strip_controls
from sysmon.records import Status
from sysmon.store.archive import archive_day
from sysmon.store.daily import day_folders

_NetKey = tuple[str, str]
_Sample = tuple[float, float, float]
#: Every daily file but qubes.csv, which the page does not draw.
FILES = tuple(s.file_name for s in schema.DAILY_FILES if s is not schema.QUBES)


class ReportError(Exception):
    """The report cannot be made; the message says why."""


@attrs.define
class Series:
    """Points of one line: times (epoch s) and values."""

    t: list[float] = attrs.field(factory=list)
    v: list[float] = attrs.field(factory=list)


@attrs.define
class Data:
    """What the report shows, per qube."""

    cpu: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    mem: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    rx: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    tx: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    tcp: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    disk: dict[tuple[str, str], Series] = attrs.field(factory=lambda: defaultdict(Series))
    xen_cpu: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    xen_mem: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    health: dict[str, dict[str, int]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    failures: dict[str, Series] = attrs.field(factory=lambda: defaultdict(Series))
    alerts: list[tuple[float, str, str]] = attrs.field(factory=list)
    rows: int = 0
    #: Rows that could not be read: a field over the csv module's limit, a
    #: time that is not one or outside 1970-2199.
    skipped: int = 0
    #: Interfaces or mounts past :data:`MAX_SERIES` of a qube, not drawn.
    cut_series: int = 0

    def count_skipped(self) -> None:
        """One more row that could not be read."""
        self.skipped += 1


def parse_when(text: str) -> float:
    """``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS][Z]`` (UTC) as epoch seconds."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"not a UTC date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    elif when.utcoffset():
        raise ReportError(f"not a UTC date or time: {text!r}")
    return when.timestamp()


#: Times a report can draw: 1970 up to 2200 (matplotlib has no year 0 or 10000).
_FIRST_T, _LAST_T = 0.0, 7_258_118_400.0
#: Lines one qube may have in one panel (mounts); a qube inventing names gets no more.
MAX_SERIES = 8
#: Qubes drawn per chart, the busiest first; the others are listed below it.
MAX_PANELS = 12


def _ts(text: str) -> float | None:
    ts = schema.parse_ts(text)
    if ts is None:
        return None
    t = ts.timestamp()
    return t if _FIRST_T <= t < _LAST_T else None


def _num(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_WANTED = (
    "cpu_user",
    "cpu_system",
    "mem_used_kb",
    "if",
    "rx_bytes",
    "tx_bytes",
    "tcp_established",
    "used_kb",
    "avail_kb",
    "mount",
    "cpu_usage",
    "memory_kb",
    "status",
    "msg",
)


def _sources(paths: Iterable[Path]) -> Iterator[tuple[str, str, IO[str]]]:
    """(day, file name, text stream) for every daily file under ``paths``."""
    for path in paths:
        if path.is_file() and path.name.endswith((".tgz", ".tar.gz")):
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    name = Path(member.name)
                    if not member.isfile() or name.name not in FILES:
                        continue
                    raw = tar.extractfile(member)
                    if raw is not None:
                        yield (
                            name.parent.name,
                            name.name,
                            io.TextIOWrapper(raw, "utf-8", errors="replace", newline=""),
                        )
        elif path.is_dir():
            days = (
                [path]
                if (path / "system.csv").exists()
                else sorted(p for p in path.iterdir() if p.is_dir())
            )
            for day in days:
                for file_name in FILES:
                    if (day / file_name).exists():
                        path_in_day = day / file_name
                        with path_in_day.open(encoding="utf-8", errors="replace", newline="") as f:
                            yield day.name, file_name, f
            archives = path / "archives"
            if path.is_dir() and archives.is_dir():
                yield from _sources(sorted(archives.glob("monitor-*.tgz")))
        else:
            raise ReportError(f"{path}: not a day folder, an out_dir or a monitor-*.tgz")


class _Progress:
    """A progress line on stderr, once reading takes more than a moment."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.shown = False

    def update(self, rows: int, what: str) -> None:
        if time.monotonic() - self.start < 1.0 or not sys.stderr.isatty():
            return
        self.shown = True
        sys.stderr.write(f"\rreading {what:<30} {rows:>12,} rows")
        sys.stderr.flush()

    def done(self, rows: int) -> None:
        if self.shown:
            sys.stderr.write(f"\rread {rows:,} rows{' ' * 40}\n")


def _read(
    paths: Iterable[Path], vms: set[str] | None, start: float, end: float
) -> tuple[
    Data, dict[tuple[str, float], list[float]], dict[_NetKey, _Sample], dict[_NetKey, _Sample]
]:
    """Read every file of ``paths`` once; keep what the charts need.

    Returns the data without network rates, the rates summed per qube and
    time within these files, and each interface's first and last counters
    (so that rates across two parts read apart can be joined).
    """
    data = Data()
    seen_days: set[tuple[str, str]] = set()
    last_net: dict[_NetKey, _Sample] = {}
    first_net: dict[_NetKey, _Sample] = {}
    net_sum: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0.0])
    progress = _Progress()
    mounts: Counter[str] = Counter()
    last_text, last_t = "", None
    for day, name, stream in _sources(paths):
        if (day, name) in seen_days:
            continue  # the same day from a folder and from its archive
        seen_days.add((day, name))
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None or "ts" not in header or "vm" not in header:
            continue
        columns = {column: i for i, column in enumerate(header)}
        width, ts_at, vm_at = len(header), columns["ts"], columns["vm"]
        # Column name -> position, resolved once per file: cells[...] per row.
        positions = {column: columns.get(column, width) for column in _WANTED}
        for cells in schema.readable_rows(reader, data.count_skipped):
            if len(cells) != width:
                data.skipped += 1
                continue
            cells.append("")  # what a column the file lacks reads as

            data.rows += 1
            if data.rows % 100_000 == 0:
                progress.update(data.rows, f"{day}/{name}")
            vm = cells[vm_at]
            if vms and vm not in vms:
                continue
            if cells[ts_at] != last_text:  # every row of a tick shares its ts
                last_text = cells[ts_at]
                last_t = _ts(last_text)
            t = last_t
            if t is None:
                data.skipped += 1
                continue
            if not start <= t <= end:
                continue
            if name == "system.csv":
                user, system = (
                    _num(cells[positions["cpu_user"]]),
                    _num(cells[positions["cpu_system"]]),
                )
                if user is not None and system is not None:
                    data.cpu[vm].t.append(t)
                    data.cpu[vm].v.append(user + system)
                used = _num(cells[positions["mem_used_kb"]])
                if used is not None:
                    data.mem[vm].t.append(t)
                    data.mem[vm].v.append(used / 1024)
            elif name == "network.csv":
                iface = cells[positions["if"]] or ""
                rx, tx = _num(cells[positions["rx_bytes"]]), _num(cells[positions["tx_bytes"]])
                if iface == "lo" or rx is None or tx is None:
                    continue
                prev = last_net.get((vm, iface))
                last_net[(vm, iface)] = (t, rx, tx)
                first_net.setdefault((vm, iface), (t, rx, tx))
                rate = None if prev is None else _rate(prev, (t, rx, tx))
                if rate is not None:
                    acc = net_sum[(vm, t)]
                    acc[0] += rate[0]
                    acc[1] += rate[1]
            elif name == "connections.csv":
                tcp = _num(cells[positions["tcp_established"]])
                if tcp is not None:
                    data.tcp[vm].t.append(t)
                    data.tcp[vm].v.append(tcp)
            elif name == "disk.csv":
                used, avail = _num(cells[positions["used_kb"]]), _num(cells[positions["avail_kb"]])
                if used is not None and avail is not None and used + avail > 0:
                    key = (vm, cells[positions["mount"]] or "?")
                    if key not in data.disk and mounts[vm] >= MAX_SERIES:
                        data.cut_series += 1
                        continue
                    if key not in data.disk:
                        mounts[vm] += 1
                    series = data.disk[key]
                    series.t.append(t)
                    series.v.append(100 * used / (used + avail))
            elif name == "xen.csv":
                usage, mem = (
                    _num(cells[positions["cpu_usage"]]),
                    _num(cells[positions["memory_kb"]]),
                )
                if usage is not None and mem is not None:
                    data.xen_cpu[vm].t.append(t)
                    data.xen_cpu[vm].v.append(usage)
                    data.xen_mem[vm].t.append(t)
                    data.xen_mem[vm].v.append(mem / 1024)
            elif name == "scrapes.csv":
                status = cells[positions["status"]] or "?"
                data.health[vm][status] += 1
                if status not in {Status.OK, Status.SKIPPED}:
                    data.failures[vm].t.append(t)
                    data.failures[vm].v.append(1)
            elif name == "alerts.csv":
                data.alerts.append((t, vm, cells[positions["msg"]] or ""))
    progress.done(data.rows)
    return data, dict(net_sum), first_net, last_net


def _rate(prev: _Sample, cur: _Sample) -> tuple[float, float] | None:
    # Rates only from two samples in order with counters that did not go
    # back (a restart or a reset): no negative spikes.
    if cur[0] <= prev[0] or cur[1] < prev[1] or cur[2] < prev[2]:
        return None
    dt = cur[0] - prev[0]
    return (cur[1] - prev[1]) / dt / 1024, (cur[2] - prev[2]) / dt / 1024


def _units(paths: Iterable[Path]) -> list[Path]:
    """Day folders and archives, one per day (a folder wins over its archive), by day."""
    by_day: dict[str, Path] = {}
    for path in paths:
        if path.is_file():
            day = archive_day(path.name)
            by_day.setdefault(day.isoformat() if day else path.name, path)
        elif path.is_dir() and (path / "system.csv").exists():
            by_day[path.name] = path
        elif path.is_dir():
            archives = path / "archives"
            if archives.is_dir():
                for tgz in sorted(archives.glob("monitor-*.tgz")):
                    if (day := archive_day(tgz.name)) is not None:
                        by_day.setdefault(day.isoformat(), tgz)
            for folder_day in day_folders(path):
                by_day[folder_day.isoformat()] = path / folder_day.isoformat()
        else:
            raise ReportError(f"{path}: not a day folder, an out_dir or a monitor-*.tgz")
    return [by_day[day] for day in sorted(by_day)]


def _read_plain(
    unit: Path, vms: set[str] | None, start: float, end: float
) -> tuple[
    dict[str, Any],
    dict[tuple[str, float], list[float]],
    dict[_NetKey, _Sample],
    dict[_NetKey, _Sample],
]:
    """:func:`_read` for one day, in a form a worker process can send back."""
    data, net_sum, first, last = _read([unit], vms, start, end)
    plain = {f.name: getattr(data, f.name) for f in attrs.fields(Data)}
    for name, value in plain.items():
        if isinstance(value, defaultdict):
            plain[name] = {
                k: dict(v) if isinstance(v, defaultdict) else v for k, v in value.items()
            }
    return plain, net_sum, first, last


def load(
    paths: Iterable[Path],
    vms: set[str] | None,
    start: float,
    end: float,
    *,
    workers: int | None = None,
) -> Data:
    """Read every day once, several days at a time; keep what the charts need."""
    units = _units(paths)
    workers = min(workers or os.cpu_count() or 1, len(units))
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            n = len(units)
            parts = list(pool.map(_read_plain, units, [vms] * n, [start] * n, [end] * n))
    else:
        parts = [_read_plain(unit, vms, start, end) for unit in units]
    data = Data()
    net_sum: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0.0])
    last_seen: dict[_NetKey, _Sample] = {}
    for plain, day_net, first, last in parts:
        for name in ("cpu", "mem", "tcp", "disk", "xen_cpu", "xen_mem", "failures"):
            target = getattr(data, name)
            for key, series in plain[name].items():
                target[key].t.extend(series.t)
                target[key].v.extend(series.v)
        for vm, counts in plain["health"].items():
            for status, n in counts.items():
                data.health[vm][status] += n
        data.alerts.extend(plain["alerts"])
        data.rows += plain["rows"]
        data.skipped += plain["skipped"]
        data.cut_series += plain["cut_series"]
        for key, value in day_net.items():
            acc = net_sum[key]
            acc[0] += value[0]
            acc[1] += value[1]
        # The first sample of a day makes a rate with the day before's last.
        for key, sample in first.items():
            rate = _rate(last_seen[key], sample) if key in last_seen else None
            if rate is not None:
                acc = net_sum[(key[0], sample[0])]
                acc[0] += rate[0]
                acc[1] += rate[1]
        last_seen.update(last)
    for (vm, t), (rx, tx) in sorted(net_sum.items(), key=lambda item: item[0][1]):
        data.rx[vm].t.append(t)
        data.rx[vm].v.append(rx)
        data.tx[vm].t.append(t)
        data.tx[vm].v.append(tx)
    return data


def _import_pyplot() -> Any:
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


MAX_POINTS = 1500


def downsample(series: Series, max_points: int = MAX_POINTS) -> Series:
    """At most ``max_points``: the mean of each run of neighbouring points."""
    n = len(series.t)
    if n <= max_points:
        return series
    step = math.ceil(n / max_points)
    out = Series()
    for i in range(0, n, step):
        chunk_t, chunk_v = series.t[i : i + step], series.v[i : i + step]
        out.t.append(sum(chunk_t) / len(chunk_t))
        out.v.append(sum(chunk_v) / len(chunk_v))
    return out


def _panels(
    plt: Any,
    title: str,
    unit: str,
    groups: dict[str, list[tuple[str, Series]]],
    *,
    points: bool = False,
) -> bytes | None:
    """One panel per qube, shared UTC time axis; each line labelled.

    ``points`` draws separate events (marks, no line between them).
    """
    busy = _by_activity(groups)
    if not busy:
        return None
    groups = {vm: groups[vm] for vm in sorted(busy[:MAX_PANELS])}
    fig, axes = plt.subplots(
        len(groups),
        1,
        sharex=True,
        figsize=(11, 1.9 * len(groups) + 0.9),
        squeeze=False,
        constrained_layout=True,
    )
    for ax, (vm, lines) in zip(axes[:, 0], groups.items(), strict=True):
        for label, full in lines:
            series = downsample(full)
            times = [datetime.fromtimestamp(t, tz=UTC) for t in series.t]
            shown = strip_controls(label)
            if points or len(series.t) == 1:  # a lone sample is a mark, not an empty line
                ax.plot(times, series.v, "o", markersize=3, label=shown)
            else:
                ax.plot(times, series.v, linewidth=0.9, label=shown)
        ax.set_ylabel(unit)
        ax.set_title(strip_controls(vm), loc="left", fontsize=10, fontweight="bold")
        ax.grid(alpha=0.3)
        top = max((max(s.v) for _, s in lines if s.v), default=1.0)
        ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
        if len(lines) > 1:
            ax.legend(loc="upper right", fontsize=8, ncol=min(4, len(lines)))
    axes[-1, 0].set_xlabel("time (UTC)")
    span = [t for lines in groups.values() for _, series in lines for t in series.t]
    if max(span) - min(span) < 600:  # matplotlib would widen a single instant to years
        middle = datetime.fromtimestamp((max(span) + min(span)) / 2, tz=UTC)
        axes[-1, 0].set_xlim(middle - timedelta(minutes=5), middle + timedelta(minutes=5))
    import matplotlib.dates as mdates  # noqa: PLC0415

    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    axes[-1, 0].xaxis.set_major_locator(locator)
    axes[-1, 0].xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
    )
    fig.suptitle(f"{title} — UTC", fontsize=13)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _by_activity(groups: dict[str, list[tuple[str, Series]]]) -> list[str]:
    """The qubes of a chart with data, busiest first (sum of their values), then by name."""
    return sorted(
        (vm for vm, lines in groups.items() if any(s.t for _, s in lines)),
        key=lambda vm: (-sum(sum(s.v) for _, s in groups[vm]), vm),
    )


def _not_drawn(groups: dict[str, list[tuple[str, Series]]]) -> list[str]:
    """The qubes of a chart past the :data:`MAX_PANELS` busiest."""
    return sorted(_by_activity(groups)[MAX_PANELS:])


def render(data: Data, out: Path) -> Path:
    """Write the PNG charts and one self-contained ``index.html`` into ``out``."""
    plt = _import_pyplot()
    out.mkdir(parents=True, exist_ok=True)
    charts: list[tuple[str, str, bytes | None, list[str]]] = []

    def one(
        name: str,
        title: str,
        unit: str,
        groups: dict[str, list[tuple[str, Series]]],
        *,
        points: bool = False,
    ) -> None:
        png = _panels(plt, title, unit, groups, points=points)
        charts.append((name, title, png, _not_drawn(groups)))
        if png is not None:
            (out / f"{name}.png").write_bytes(png)

    one(
        "cpu",
        "CPU used (user + system) per qube",
        "% of its CPUs",
        {vm: [("cpu", s)] for vm, s in data.cpu.items()},
    )
    one(
        "memory",
        "Memory used per qube (total - available)",
        "MiB",
        {vm: [("used", s)] for vm, s in data.mem.items()},
    )
    net: dict[str, list[tuple[str, Series]]] = defaultdict(list)
    for vm, s in data.rx.items():
        net[vm].append(("received", s))
    for vm, s in data.tx.items():
        net[vm].append(("sent", s))
    one("network", "Network rate per qube (all interfaces but lo)", "KiB/s", net)
    disks: dict[str, list[tuple[str, Series]]] = defaultdict(list)
    for (vm, mount), s in data.disk.items():
        disks[vm].append((mount.replace("\\040", " "), s))
    one("disk", "Disk use per filesystem", "% used", disks)
    one(
        "connections",
        "Established TCP connections",
        "connections",
        {vm: [("tcp", s)] for vm, s in data.tcp.items()},
    )
    one(
        "xen_cpu",
        "Hypervisor view: CPU (admin.vm.Stats)",
        "% of its vCPUs",
        {vm: [("cpu", s)] for vm, s in data.xen_cpu.items()},
    )
    one(
        "xen_memory",
        "Hypervisor view: memory assigned by Xen",
        "MiB",
        {vm: [("memory", s)] for vm, s in data.xen_mem.items()},
    )
    one(
        "failures",
        "Failed polls (timeout, refused, no-service, ...)",
        "failed polls",
        {vm: [("failed", s)] for vm, s in data.failures.items()},
        points=True,
    )

    per_hour: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for t, vm, _msg in data.alerts:
        per_hour[vm][t - t % 3600] += 1
    timeline = {
        vm: [("alerts", Series(t=sorted(hours), v=[float(hours[h]) for h in sorted(hours)]))]
        for vm, hours in per_hour.items()
    }
    one(
        "alerts",
        "Alerts per hour (journal notice+ and sysmon's own)",
        "alerts / hour",
        timeline,
        points=True,
    )

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sysmon report</title>",
        (
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
            "img{max-width:100%}</style></head><body>"
        ),
        f"<h1>sysmon report</h1><p>{data.rows:,} rows read. All times UTC.</p>",
        "<h2>Poll health</h2><table><tr><th>qube</th><th>status counts</th></tr>",
    ]
    for vm, counts in sorted(data.health.items()):
        shown = ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(counts.items()))
        parts.append(f"<tr><td>{html.escape(vm)}</td><td>{shown}</td></tr>")
    parts.append("</table>")
    if data.skipped or data.cut_series:
        parts.append(
            f"<p>{data.skipped:,} rows skipped (unreadable, or a time outside 1970-2199); "
            f"{data.cut_series:,} rows of interfaces or mounts past {MAX_SERIES} per qube "
            "not drawn.</p>"
        )
    for name, title, png, rest in charts:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if png is None:
            parts.append("<p>No data.</p>")
        else:
            encoded = base64.b64encode(png).decode()
            parts.append(f"<img alt='{name}' src='data:image/png;base64,{encoded}'>")
        if rest:
            shown = ", ".join(html.escape(vm) for vm in rest)
            parts.append(
                f"<p>The {MAX_PANELS} busiest qubes are drawn; {len(rest)} more: {shown}</p>"
            )
    parts.append(
        f"<h2>Alerts ({len(data.alerts)})</h2><table>"
        "<tr><th>poll (UTC)</th><th>qube</th><th>message</th></tr>"
    )
    for t, vm, msg in sorted(data.alerts)[-2000:]:
        when = datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        parts.append(
            f"<tr><td>{when}</td><td>{html.escape(vm)}</td><td>{html.escape(msg)}</td></tr>"
        )
    parts.append("</table></body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def main(
    paths: list[Path], out: Path, vms: list[str] | None, start: str | None, end: str | None
) -> int:
    """``sysmon report``: exit 2 with the reason when there is nothing to draw."""
    try:
        since = parse_when(start) if start else float("-inf")
        until = parse_when(end) if end else float("inf")
        data = load(paths, set(vms) if vms else None, since, until)
        if data.rows == 0:
            raise ReportError("no sysmon rows in " + ", ".join(map(str, paths)))
        page = render(data, out)
    except ReportError as exc:
        print(f"sysmon report: {exc}", file=sys.stderr)
        return 2
    print(f"{page} ({data.rows:,} rows)")
    return 0
