"""Two views of every qube: what it says about itself against Xen and its netvm.  Pure.

Each tick, per qube: its own CPU busy share (user + system over the tick,
on Xen's scale: a share of all its vCPUs) against Xen's ``cpu_usage``; the
memory it says it has (MemTotal) against what Xen gives it; and the bytes
it says it sent and received against what its netvm's ``vifN.M`` carried,
N being its Xen domain id as dom0 named it.  A gap over a threshold this
tick is the row's ``flag``; a gap that lasts ``sustain`` seconds is one
alert row for the qube, and its end another.  A gap is a signal, never a
verdict (docs/views.md): Xen also counts the guest kernel's and I/O time,
and a netvm can lie about its vifs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime

import attrs

from sysmon import schema
from sysmon.protocol.metrics import Snapshot
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import MAX_VIEW_VIFS, QubeView, Row, ScrapeResult, Status, ViewsState
from sysmon.transform.rates import cpu_percent, ticks_of
from sysmon.transform.rows import encode_row

#: A netvm's interface for the qube of Xen id N: ``vifN.M`` (Xen's netback
#: naming), no leading zeros; anything else is the netvm's own.
VIF_RE = re.compile(r"vif([1-9][0-9]{0,4})\.(0|[1-9][0-9]{0,3})")
DISAGREE = ("busy-but-silent", "cpu", "memory", "traffic")
#: Ticks with one view only (a failing qube is polled with backoff, up to
#: 5 min apart: collect/health.py) keep a disagreement going this long.
HOLD = 300.0
#: The interfaces a qube's own traffic is not counted on.
_NOT_TRAFFIC = frozenset({"lo"})


@attrs.frozen
class ViewsLimits:
    """What counts as a disagreement (config ``views_*``; docs/views.md says how they were set)."""

    cpu_gap: float = 30.0
    busy: float = 50.0
    mem_gap_percent: float = 25.0
    traffic_gap_kb: int = 1024
    traffic_gap_percent: float = 50.0
    sustain: float = 120.0


@attrs.frozen
class ViewsTick:
    """The rows of ``views.csv``, the alerts (vm, message), and the next state."""

    rows: tuple[Row, ...]
    alerts: tuple[tuple[str, str], ...]
    state: ViewsState


@attrs.frozen
class _Figures:
    cpu_self: float | None = None
    cpu_xen: float | None = None
    mem_self_kb: int | None = None
    mem_xen_kb: int | None = None
    net_self: int | None = None
    net_netvm: int | None = None
    silent: bool = False


#: The largest figure a views.csv cell holds: tailers read its integers as
#: int64 (Telegraf), and no interface honestly moves 8 EiB in a tick.
MAX_FIGURE = 2**63 - 1


def _delta(now: int | None, before: int | None) -> int | None:
    if now is None or before is None or now < before:
        return None  # a first sample, or a counter reset (a restart)
    if now - before > MAX_FIGURE:
        return None  # a jump no interface makes: no reading
    return now - before


def own_bytes(snap: Snapshot) -> int:
    """All bytes a qube says it sent and received, but on loopback and vifs it serves."""
    return sum(
        n.rx_bytes + n.tx_bytes
        for n in snap.net
        if n.interface not in _NOT_TRAFFIC and not VIF_RE.fullmatch(n.interface)
    )


def label_vifs(result: ScrapeResult, xids: Mapping[int, str]) -> ScrapeResult:
    """A netvm's ``vifN.M`` named by the qube dom0 says has id N: ``vif.M of QUBE``.

    The name holds across the qube's restarts (each boot's new N was a new
    name, spending the netvm's daily allowance and the export's label cap),
    and tells the traffic the netvm forwards from its own.  A handler cannot
    send a space, so no qube can forge such a name.
    """
    snap = result.snapshot
    if snap is None or not xids:
        return result
    net = []
    for n in snap.net:
        match = VIF_RE.fullmatch(n.interface)
        qube = xids.get(int(match.group(1))) if match else None
        if match and qube is not None and qube != result.vm:
            net.append(attrs.evolve(n, interface=f"vif.{match.group(2)} of {qube}"))
        else:
            net.append(n)
    return attrs.evolve(result, snapshot=attrs.evolve(snap, net=tuple(net)))


def vif_bytes(
    results: Sequence[ScrapeResult], xids: Mapping[int, str]
) -> dict[tuple[str, str, str], int]:
    """Each vif's bytes by (netvm, vif, qube), only for ids dom0 named.

    A vif whose id dom0 did not give to a running qube is nobody's, and so
    is one naming the netvm itself.  A qube has one netvm: when two claim
    vifs of the same qube in one tick, under any names, neither counts.
    """
    found: dict[tuple[str, str, str], int] = {}
    netvms: dict[str, set[str]] = {}
    for r in results:
        if r.snapshot is None:
            continue
        for n in r.snapshot.net:
            match = VIF_RE.fullmatch(n.interface)
            qube = xids.get(int(match.group(1))) if match else None
            if qube is None or qube == r.vm:
                continue
            found[(r.vm, n.interface, qube)] = n.rx_bytes + n.tx_bytes
            netvms.setdefault(qube, set()).add(r.vm)
    return {key: value for key, value in found.items() if len(netvms[key[2]]) == 1}


def _served(
    served_by: Mapping[str, str],
    read: dict[tuple[str, str, str], int],
    present: set[str],
    results: Sequence[ScrapeResult],
) -> dict[tuple[str, str, str], int]:
    """The vifs read from the netvm that serves each qube, as far as sysmon can tell.

    A qube's netvm is the one that last reported its vifs alone.  While that
    netvm runs but was not read this tick (backing off, in flight), another
    qube's claim is refused: it could otherwise fill the gap with made-up
    traffic.  Once it is read without them, or stops, the claim counts.
    """
    read_now = {r.vm for r in results if r.snapshot is not None}
    return {
        key: value
        for key, value in read.items()
        if (known := served_by.get(key[2], key[0])) == key[0]
        or known not in present
        or known in read_now
    }


def _flag(f: _Figures, limits: ViewsLimits) -> str:
    """This tick's word for the qube: the first disagreement found, or agree / one-view."""
    if f.silent and f.cpu_xen is not None and f.cpu_xen >= limits.busy:
        return "busy-but-silent"
    if f.cpu_self is not None and f.cpu_xen is not None and f.cpu_xen - f.cpu_self > limits.cpu_gap:
        return "cpu"
    mem_self, mem_xen = f.mem_self_kb, f.mem_xen_kb
    if mem_self is not None and mem_xen and _over(mem_xen - mem_self, mem_xen, limits):
        return "memory"
    if f.net_self is not None and f.net_netvm is not None:
        allowed = limits.traffic_gap_kb * 1024 + limits.traffic_gap_percent / 100 * max(
            f.net_self, f.net_netvm
        )
        if abs(f.net_netvm - f.net_self) > allowed:
            return "traffic"
    both = (f.cpu_self is not None and f.cpu_xen is not None) or (
        f.net_self is not None and f.net_netvm is not None
    )
    return "agree" if both else "one-view"


def _over(gap: int, of: int, limits: ViewsLimits) -> bool:
    return abs(gap) * 100 > limits.mem_gap_percent * of


def _words(vm: str, flag: str, f: _Figures) -> str:
    """Both figures of the disagreement, in sysmon's words."""
    if flag == "busy-but-silent":
        return f"Xen sees {vm} at {f.cpu_xen:.0f}% CPU while its own report does not come"
    if flag == "cpu":
        return f"Xen sees {vm} at {f.cpu_xen:.1f}% CPU, {vm} reports {f.cpu_self:.1f}%"
    if flag == "memory":
        return f"Xen gives {vm} {f.mem_xen_kb} kB, {vm} reports {f.mem_self_kb} kB"
    return f"its netvm carried {f.net_netvm} bytes for {vm} in a tick, {vm} reports {f.net_self}"


def compare(
    previous: ViewsState,
    *,
    ts: datetime,
    results: Sequence[ScrapeResult],
    xen: Sequence[DomainStats],
    xids: Mapping[int, str],
    limits: ViewsLimits = ViewsLimits(),
) -> ViewsTick:
    """This tick's ``views.csv`` rows and alerts, and the next state."""
    now = float(int(ts.timestamp()))
    by_xen = {d.vm: d for d in xen}
    by_result = {r.vm: r for r in results}
    present = set(by_result) | set(by_xen)
    read = _served(previous.served_by, vif_bytes(results, xids), present, results)
    served_by = {q: n for q, n in previous.served_by.items() if q in present and n in present}
    served_by |= {qube: netvm for netvm, _vif, qube in read}
    # A netvm not polled this tick keeps its last figures (while it runs).
    vifs = {k: v for k, v in previous.vifs.items() if k[0] in present and k[0] not in by_result}
    vifs.update({key: (value, now) for key, value in read.items()})
    if len(vifs) > MAX_VIEW_VIFS:  # only hostile qubes name so many: the few-vif netvms first
        per_netvm = Counter(key[0] for key in vifs)
        kept = sorted(vifs, key=lambda key: (per_netvm[key[0]], key))[:MAX_VIEW_VIFS]
        vifs = {key: vifs[key] for key in kept}
    carried: dict[str, int] = {}
    unusable: set[str] = set()
    for key, value in read.items():
        qube, last = key[2], previous.vifs.get(key)
        mine = previous.qubes.get(qube)
        step = _delta(value, last[0]) if last else None
        if step is None or last is None or mine is None or last[1] != mine.sampled:
            # A new vif, a reset, or not over the ticks of the qube's own figure.
            unusable.add(qube)
        else:
            carried[qube] = carried.get(qube, 0) + step
            if carried[qube] > MAX_FIGURE:
                unusable.add(qube)
    rows: list[Row] = []
    alerts: list[tuple[str, str]] = []
    qubes: dict[str, QubeView] = {}
    for vm in sorted(set(by_result) | set(by_xen)):
        before = previous.qubes.get(vm, QubeView())
        result = by_result.get(vm)
        domain = by_xen.get(vm)
        view, figures = _figures(vm, result, domain, before, now)
        if vm in carried and vm not in unusable and figures.net_self is not None:
            figures = attrs.evolve(figures, net_netvm=carried[vm])
        flag = _flag(figures, limits)
        view, alert = _sustain(vm, view, flag, figures, now, limits)
        if alert:
            alerts.append((vm, alert))
        qubes[vm] = view
        rows.append(
            encode_row(
                schema.VIEWS,
                {
                    "ts": ts,
                    "vm": vm,
                    "cpu_self": figures.cpu_self,
                    "cpu_xen": figures.cpu_xen,
                    "cpu_gap": _minus(figures.cpu_xen, figures.cpu_self),
                    # Compared as sent, written only if a tailer can read it:
                    # a qube's MemTotal of 2**64 would cost its row Xen's view.
                    "mem_self_kb": _fits(figures.mem_self_kb),
                    "mem_xen_kb": _fits(figures.mem_xen_kb),
                    "net_self_bytes": figures.net_self,
                    "net_netvm_bytes": figures.net_netvm,
                    "flag": flag,
                },
            )
        )
    return ViewsTick(tuple(rows), tuple(alerts), ViewsState(qubes, vifs, served_by))


def _fits(value: int | None) -> int | None:
    return value if value is None or value <= MAX_FIGURE else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _figures(
    vm: str, result: ScrapeResult | None, domain: DomainStats | None, before: QubeView, now: float
) -> tuple[QubeView, _Figures]:
    """The qube's own figures (deltas from ``before``) and Xen's."""
    del vm
    view = before  # not polled this tick: the last counters stand, as in system.csv
    cpu_self = mem_self = net_self = None
    snap = result.snapshot if result is not None else None
    if snap is not None and snap.sys is not None and result is not None:
        ticks = ticks_of(snap.sys)
        same_boot = before.boot_id is not None and before.boot_id == snap.sys.boot_id
        cpu = cpu_percent(before.cpu_ticks if same_boot else None, ticks)
        cpu_self = cpu.user + cpu.system if cpu is not None else None
        mem_self = snap.sys.mem_total_kb
        total = own_bytes(snap)
        net_self = _delta(total, before.net_bytes) if same_boot else None
        view = attrs.evolve(
            view, cpu_ticks=ticks, net_bytes=total, boot_id=snap.sys.boot_id, sampled=now
        )
    silent = result is not None and result.status not in {
        Status.OK,
        Status.SKIPPED,
        Status.OVER_BUDGET,
    }
    return view, _Figures(
        cpu_self=cpu_self,
        cpu_xen=float(domain.cpu_usage) if domain and domain.cpu_usage is not None else None,
        mem_self_kb=mem_self,
        mem_xen_kb=_xen_memory(domain),
        net_self=net_self,
        silent=silent,
    )


def _xen_memory(domain: DomainStats | None) -> int | None:
    """What Xen gives the qube: 4.4's usable assignment where sent, else memory_kb."""
    if domain is None:
        return None
    return domain.memory_assigned_usable or domain.memory_kb


def _sustain(
    vm: str, view: QubeView, flag: str, f: _Figures, now: float, limits: ViewsLimits
) -> tuple[QubeView, str | None]:
    """Where the qube's disagreement stands after this tick, and an alert when it turns.

    A disagreement is told once it has lasted ``sustain`` seconds, and its
    end once the views have agreed that long; a tick with one view only
    changes nothing, unless none disagreed for :data:`HOLD` seconds.  A run
    that began after ``now`` (the clock was ahead, and was put back) begins
    again at ``now``.
    """
    if flag in DISAGREE:
        since = view.disagree_since
        if (
            since is None
            or since > now  # begun ahead of a clock since put back: would hold the alert
            or (
                view.last_disagree is not None
                and now - view.last_disagree > max(HOLD, limits.sustain)
            )
        ):
            since = now
        view = attrs.evolve(view, disagree_since=since, last_disagree=now, agree_since=None)
        if not view.alerted and now - since >= limits.sustain:
            message = (
                f"sysmon: views {flag}: {_words(vm, flag, f)}, for {now - since:.0f} s; "
                "a signal to look into, not a verdict (docs/views.md)"
            )
            return attrs.evolve(view, alerted=True), message
        return view, None
    if flag == "agree":
        since = view.agree_since
        if since is None or since > now:  # as above: the end is told, not held off
            since = now
        view = attrs.evolve(view, agree_since=since, disagree_since=None)
        if view.alerted and now - since >= limits.sustain:
            message = (
                f"sysmon: views agree again for {vm} "
                f"(Xen {_num(f.cpu_xen)}% CPU, {vm} {_num(f.cpu_self)}%)"
            )
            return attrs.evolve(view, alerted=False), message
    return view, None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
