"""Hypothesis strategies for protocol records."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from sysmon.protocol.metrics import (
    SYS_INT_KEYS,
    AlertRecord,
    ConnRecord,
    DiskRecord,
    NetRecord,
    Snapshot,
    SysRecord,
)
from sysmon.protocol.parse import IDENT_RE

counters = st.integers(min_value=0, max_value=2**64 - 1)
# Plain decimals with at most two places survive text and back exactly.
gauges = st.integers(min_value=0, max_value=10**8).map(lambda n: n / 100)
idents = st.from_regex(IDENT_RE, fullmatch=True)
clean_chars = st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs"))


@st.composite
def sys_records(draw: st.DrawFn) -> SysRecord:
    values: dict[str, object] = {}
    for key in SYS_INT_KEYS:
        if draw(st.booleans()):
            values[key] = draw(counters)
    for key in ("load1", "load5", "load15"):
        if draw(st.booleans()):
            values[key] = draw(gauges)
    if draw(st.booleans()):
        values["boot_id"] = draw(st.from_regex(r"[A-Za-z0-9-]{1,64}", fullmatch=True))
    return SysRecord(**values)  # type: ignore[arg-type]


net_records = st.builds(
    NetRecord,
    interface=idents,
    rx_bytes=counters,
    rx_errs=counters,
    rx_drop=counters,
    tx_bytes=counters,
    tx_errs=counters,
    tx_drop=counters,
)
conn_records = st.builds(
    ConnRecord,
    tcp_established=st.none() | counters,
    udp_sockets=st.none() | counters,
)
disk_records = st.builds(
    DiskRecord, fs=idents, mount=idents, size_kb=counters, used_kb=counters, avail_kb=counters
)
alert_records = st.builds(
    AlertRecord,
    ts_us=st.integers(min_value=0, max_value=2**63 - 1),
    identifier=st.from_regex(r"[A-Za-z0-9._\[\]-]{1,40}", fullmatch=True),
    message=st.text(clean_chars, max_size=300),
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    net = tuple(draw(st.lists(net_records, max_size=5, unique_by=lambda n: n.interface)))
    disk = tuple(draw(st.lists(disk_records, max_size=5, unique_by=lambda d: (d.fs, d.mount))))
    alerts = tuple(draw(st.lists(alert_records, max_size=5)))
    conn = draw(st.none() | conn_records)
    sys = draw(sys_records())
    n_lines = 1 + len(net) + len(disk) + len(alerts) + (conn is not None)
    return Snapshot(
        sys=sys,
        net=net,
        conn=conn,
        disk=disk,
        alerts=alerts,
        n_bytes=0,
        lines_total=n_lines,
        lines_ok=n_lines,
        lines_rejected=0,
    )


def records_only(snapshot: Snapshot) -> Snapshot:
    """The snapshot without its byte count, for comparing round trips."""
    return attrs.evolve(snapshot, n_bytes=0)
