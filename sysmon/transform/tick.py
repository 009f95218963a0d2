"""A tick's plan: the rows of its poll results, where the rules and the views stand.  Pure.

:func:`build_tick` is what the commit is handed (bound to this tick's
results): the commit loads the state under its lock and calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import attrs

from sysmon import schema
from sysmon.protocol.admin import QubeInfo
from sysmon.protocol.xen_events import DomainStats
from sysmon.records import AlertBatch, Budget, ScrapeResult, State, TickRows
from sysmon.transform.rows import DEFAULT_BUDGET, alert_row, build_tick_rows, spend_alerts
from sysmon.transform.rules import Rule, evaluate
from sysmon.transform.views import ViewsLimits, compare, label_vifs


def build_tick(
    previous: State,
    *,
    ts: datetime,
    results: Sequence[ScrapeResult],
    qubes: Sequence[QubeInfo] | None,
    xen: Sequence[DomainStats] = (),
    notes: Sequence[tuple[str, str]] = (),
    rules: Sequence[Rule] = (),
    me: str = "sys-monitor",
    budget: Budget = DEFAULT_BUDGET,
    listed: Sequence[QubeInfo] = (),
    views: ViewsLimits | None = None,
    xids: Mapping[int, str] | None = None,
) -> TickRows:
    """Every row of the tick, its alerts, the rules' alerts and next state.

    ``notes`` are sysmon's own alerts, (vm, message), filed with the tick
    under ``me``; so is the news that the clock stepped back past rows
    already written (the commit writes such a tick only after a large step).
    ``listed`` is dom0's list of this tick (each qube's class and UUID);
    ``views``, when dom0's stats stream is followed, the limits to compare
    the two views with (:mod:`sysmon.transform.views`: views.csv, which
    rules can name too, and its alerts), from where ``previous`` left them;
    ``xids`` name a netvm's vifs by the qube they serve.
    """
    behind = previous.last_ts - int(ts.timestamp())
    if behind >= 0:
        notes = [*notes, (me, f"sysmon: clock stepped back {behind} s; rows resume at this tick")]
    seen = None
    if views is not None:  # on the vifs' own names: the labels below are for the rows
        seen = compare(previous.views, ts=ts, results=results, xen=xen, xids=xids or {},
                       limits=views)  # fmt: skip
    results = [label_vifs(r, xids) for r in results] if xids else results
    built = build_tick_rows(
        ts, results, qubes, previous.qubes, xen, notes, budget, listed=listed, pools=previous.pools
    )
    view_alerts: tuple[AlertBatch, ...] = ()
    if seen is not None:
        told = {vm for vm, _ in seen.alerts}
        # A qube told of moves on only once its row is written (the commit
        # puts the batch's view in): a row a full disk cut is told again.
        kept = {vm: view for vm, view in seen.state.qubes.items() if vm not in told}
        kept |= {vm: previous.views.qubes[vm] for vm in told if vm in previous.views.qubes}
        view_alerts = tuple(
            AlertBatch(vm, (alert_row(ts, vm, message),), None, view=seen.state.qubes[vm])
            for vm, message in seen.alerts
        )
        built = attrs.evolve(
            built,
            rows={**built.rows, schema.VIEWS.file_name: seen.rows},
            views=attrs.evolve(seen.state, qubes=kept),
        )
    fired, rule_state = evaluate(rules, float(int(ts.timestamp())), built.rows, previous.rules)
    rule_alerts = tuple(
        AlertBatch(vm, (alert_row(ts, vm, message),), None) for vm, message in fired
    )
    built = spend_alerts(built, rule_alerts, listed)  # a qube's rules' alerts are its share too
    return attrs.evolve(
        built, alerts=built.alerts + view_alerts + rule_alerts, rule_state=rule_state
    )


@attrs.frozen
class TickPlan:
    """One tick's plan: its results bound, waiting for the state the commit loads.

    Calling it is :func:`build_tick` on that state; it satisfies
    ``sysmon.store.commit.Plan`` without the store importing this module.
    """

    ts: datetime
    results: Sequence[ScrapeResult]
    qubes: Sequence[QubeInfo] | None
    xen: Sequence[DomainStats] = ()
    notes: Sequence[tuple[str, str]] = ()
    rules: Sequence[Rule] = ()
    me: str = "sys-monitor"
    budget: Budget = DEFAULT_BUDGET
    listed: Sequence[QubeInfo] = ()
    views: ViewsLimits | None = None
    xids: Mapping[int, str] | None = None

    def __call__(self, previous: State, /) -> TickRows:
        """Every row of the tick and the state after it, from ``previous``."""
        # Its fields are build_tick's keywords, one for one.
        return build_tick(previous, **attrs.asdict(self, recurse=False))
