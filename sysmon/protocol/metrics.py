"""Protocol v1 of ``qubes.Metrics.Get``: the records and how they are written.

Pure: no I/O.  The parser lives in :mod:`sysmon.protocol.parse`; this
module holds the records it produces and :func:`render`, the inverse of the
parser, used by tests and by fake qubes.  The wire format is described in
``docs/protocol.md``.
"""

from __future__ import annotations

import attrs

#: The ``sys:`` keys the collector understands, with their kind.  Keys a qube
#: sends beyond these are ignored so that the protocol can grow.
#: The cumulative CPU ticks of /proc/stat's ``cpu`` line, in its order.
CPU_TICK_KEYS = (
    "cpu_ticks_user",
    "cpu_ticks_nice",
    "cpu_ticks_system",
    "cpu_ticks_idle",
    "cpu_ticks_iowait",
    "cpu_ticks_irq",
    "cpu_ticks_softirq",
    "cpu_ticks_steal",
)
SYS_INT_KEYS = (
    "protocol",
    "btime",
    "clk_tck",
    *CPU_TICK_KEYS,
    "procs_running",
    "procs_blocked",
    "mem_total_kb",
    "mem_free_kb",
    "mem_avail_kb",
    "swap_total_kb",
    "swap_free_kb",
)
SYS_FLOAT_KEYS = ("load1", "load5", "load15")
NET_KEYS = ("rx_bytes", "rx_errs", "rx_drop", "tx_bytes", "tx_errs", "tx_drop")
CONN_KEYS = ("tcp_established", "udp_sockets")
DISK_KEYS = ("size_kb", "used_kb", "avail_kb")


@attrs.frozen
class SysRecord:
    """The ``sys:`` line: one per snapshot.  A key the qube left out is None."""

    boot_id: str | None = None
    protocol: int | None = None
    btime: int | None = None
    clk_tck: int | None = None
    cpu_ticks_user: int | None = None
    cpu_ticks_nice: int | None = None
    cpu_ticks_system: int | None = None
    cpu_ticks_idle: int | None = None
    cpu_ticks_iowait: int | None = None
    cpu_ticks_irq: int | None = None
    cpu_ticks_softirq: int | None = None
    cpu_ticks_steal: int | None = None
    procs_running: int | None = None
    procs_blocked: int | None = None
    mem_total_kb: int | None = None
    mem_free_kb: int | None = None
    mem_avail_kb: int | None = None
    swap_total_kb: int | None = None
    swap_free_kb: int | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None


@attrs.frozen
class NetRecord:
    """One ``net:`` line: an interface's cumulative counters."""

    interface: str
    rx_bytes: int
    rx_errs: int
    rx_drop: int
    tx_bytes: int
    tx_errs: int
    tx_drop: int


@attrs.frozen
class ConnRecord:
    """The ``conn:`` line."""

    tcp_established: int | None = None
    udp_sockets: int | None = None


@attrs.frozen
class DiskRecord:
    """One ``disk:`` line.  ``fs`` and ``mount`` keep /proc/mounts escapes."""

    fs: str
    mount: str
    size_kb: int
    used_kb: int
    avail_kb: int


@attrs.frozen
class AlertRecord:
    """One ``alert:`` line: a journal entry of priority notice or higher."""

    ts_us: int
    identifier: str
    message: str


@attrs.frozen
class Snapshot:
    """Everything one qube said in one poll, after validation.

    The counts describe the whole payload, including what was over a cap.
    ``over_caps`` names the caps that were hit (``bytes``, ``lines``,
    ``net``, ``disk``, ``alert``); a snapshot with any is incomplete.
    """

    sys: SysRecord | None
    net: tuple[NetRecord, ...]
    conn: ConnRecord | None
    disk: tuple[DiskRecord, ...]
    alerts: tuple[AlertRecord, ...]
    n_bytes: int
    lines_total: int
    lines_ok: int
    lines_rejected: int
    over_caps: frozenset[str] = frozenset()
    reject_reasons: tuple[str, ...] = ()


def _fmt_float(value: float) -> str:
    text = f"{value:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def render(snapshot: Snapshot) -> bytes:
    """Write a snapshot in protocol v1, as the handler would."""
    lines: list[str] = []
    if snapshot.sys is not None:
        pairs = []
        for field in attrs.fields(SysRecord):
            value = getattr(snapshot.sys, field.name)
            if value is None:
                continue
            text = _fmt_float(value) if isinstance(value, float) else str(value)
            pairs.append(f"{field.name}={text}")
        lines.append("sys: " + " ".join(pairs))
    lines.extend(
        f"net: if={n.interface} " + " ".join(f"{key}={getattr(n, key)}" for key in NET_KEYS)
        for n in snapshot.net
    )
    if snapshot.conn is not None:
        pairs = [
            f"{key}={getattr(snapshot.conn, key)}"
            for key in CONN_KEYS
            if getattr(snapshot.conn, key) is not None
        ]
        lines.append("conn: " + " ".join(pairs))
    lines.extend(
        f"disk: fs={d.fs} mount={d.mount} "
        + " ".join(f"{key}={getattr(d, key)}" for key in DISK_KEYS)
        for d in snapshot.disk
    )
    lines.extend(f"alert: {a.ts_us} {a.identifier}: {a.message}" for a in snapshot.alerts)
    return "".join(line + "\n" for line in lines).encode()
