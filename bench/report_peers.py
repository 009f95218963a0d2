"""The report's series computed by polars and by DuckDB, for bench/report.py to run beside it.

    python bench/report_peers.py polars|duckdb DATA OUT.pickle

Each computes what ``sysmon.commands.report.read.load`` gives for the charts
of a folder of day folders: CPU (user + system), memory (MiB), network rates
(KiB/s, loopback and vifs left out, every interface of a qube summed, rates
joined across midnight), TCP connections, disk use per mount (%), Xen's CPU
and memory, failed polls; per qube (disk: per qube and mount), in time order.
They read only the columns drawn, and are given the files' types: what a user
of these tools would write.  They check nothing: a planted row, a huge cell
or a line of the wrong width is theirs to choke on or to misread (sysmon's
decoder skips and counts them); the bench runs them on the realistic week,
where the series must come out equal to sysmon's.

Neither is a Debian package: they run in whatever Python has them
(``--peers-python``), never imported by sysmon.
"""

from __future__ import annotations

import itertools
import pickle
import sys
from pathlib import Path
from typing import Any

#: The series, by chart: what bench/report.py compares with sysmon's.
NAMES = ("cpu", "mem", "rx", "tx", "tcp", "disk", "xen_cpu", "xen_mem", "failures")
_TS = "%Y-%m-%dT%H:%M:%SZ"
_KIB = 1 / 1024  # sysmon's to_unit: bytes (and kB = 1024 bytes) to KiB or MiB


def files(data: Path, name: str) -> list[str]:
    """``name`` in each day folder of ``data``, days in order."""
    return [str(day / name) for day in sorted(data.iterdir()) if (day / name).is_file()]


def header(path: str) -> list[str]:
    with Path(path).open(encoding="utf-8") as f:
        return f.readline().rstrip("\n").split(",")


def by_key(keys: list[Any], t: Any, v: Any) -> dict[Any, tuple[Any, Any]]:
    """Rows sorted by key (in time order within it) as arrays per key.

    ``keys``: one or two object arrays (qube; qube and mount).
    """
    import numpy as np  # noqa: PLC0415

    if not len(t):
        return {}
    change = np.zeros(len(t), dtype=bool)
    change[0] = True
    for column in keys:
        change[1:] |= column[1:] != column[:-1]
    bounds = [*np.flatnonzero(change), len(t)]
    out = {}
    for a, b in itertools.pairwise(bounds):
        key = keys[0][a] if len(keys) == 1 else tuple(column[a] for column in keys)
        out[key] = (np.ascontiguousarray(t[a:b], float), np.ascontiguousarray(v[a:b], float))
    return out


# ---------------------------------------------------------------------------- polars


def with_polars(data: Path) -> dict[str, Any]:
    import polars as pl  # noqa: PLC0415

    def scan(name: str, text: list[str], numbers: list[str]) -> Any:
        return pl.scan_csv(
            files(data, name),
            schema_overrides={
                **dict.fromkeys(("ts", "vm", *text), pl.String),
                **dict.fromkeys(numbers, pl.Float64),
            },
            infer_schema=False,
        ).select(
            pl.col("ts")
            .str.to_datetime(_TS, time_unit="us")
            .dt.epoch("s")
            .cast(pl.Float64)
            .alias("t"),
            "vm",
            *(pl.col(name).fill_null("") for name in text),  # an empty cell is read as null
            *numbers,
        )

    def split(frame: Any, keys: list[str]) -> dict[Any, tuple[Any, Any]]:
        out = {}
        for key, part in frame.partition_by(keys, maintain_order=True, as_dict=True).items():
            out[key if len(keys) > 1 else key[0]] = (part["t"].to_numpy(), part["v"].to_numpy())
        return out

    c, n = pl.col, pl.lit
    system = scan("system.csv", [], ["cpu_user", "cpu_system", "mem_used_kb"])
    network = scan("network.csv", ["if"], ["rx_bytes", "tx_bytes"])
    tcp = scan("connections.csv", [], ["tcp_established"])
    disk = scan("disk.csv", ["mount"], ["used_kb", "avail_kb"])
    xen = scan("xen.csv", [], ["cpu_usage", "memory_kb"])
    scrapes = scan("scrapes.csv", ["status"], [])
    per_if = ["vm", "if"]
    rates = (
        network.filter((c("if") != "lo") & ~c("if").str.starts_with("vif"))
        .filter(c("rx_bytes").is_not_null() & c("tx_bytes").is_not_null())
        .with_columns(
            dt=c("t").diff().over(per_if),
            drx=c("rx_bytes").diff().over(per_if),
            dtx=c("tx_bytes").diff().over(per_if),
        )
        .filter((c("dt") > 0) & (c("drx") >= 0) & (c("dtx") >= 0))
        .group_by(["vm", "t"], maintain_order=True)
        .agg(rx=(c("drx") / c("dt") * _KIB).sum(), tx=(c("dtx") / c("dt") * _KIB).sum())
    )
    frames = pl.collect_all(
        [
            system.filter(c("cpu_user").is_not_null() & c("cpu_system").is_not_null()).select(
                "vm", "t", v=c("cpu_user") + c("cpu_system")
            ),
            system.filter(c("mem_used_kb").is_not_null()).select(
                "vm", "t", v=c("mem_used_kb") * (1024 * 2.0**-20)
            ),
            rates.select("vm", "t", v="rx"),
            rates.select("vm", "t", v="tx"),
            tcp.filter(c("tcp_established").is_not_null()).select("vm", "t", v="tcp_established"),
            disk.filter(
                c("used_kb").is_not_null()
                & c("avail_kb").is_not_null()
                & ((c("used_kb") + c("avail_kb")) > 0)
            ).select(
                "vm",
                pl.when(c("mount") == "").then(n("?")).otherwise(c("mount")).alias("mount"),
                "t",
                v=n(100.0) * c("used_kb") / (c("used_kb") + c("avail_kb")),
            ),
            xen.filter(c("cpu_usage").is_not_null() & c("memory_kb").is_not_null()).select(
                "vm", "t", v="cpu_usage"
            ),
            xen.filter(c("cpu_usage").is_not_null() & c("memory_kb").is_not_null()).select(
                "vm", "t", v=c("memory_kb") * (1024 * 2.0**-20)
            ),
            scrapes.with_columns(
                status=pl.when(c("status") == "").then(n("?")).otherwise(c("status"))
            )
            .filter(~c("status").is_in(["ok", "skipped"]))
            .select("vm", "t", v=n(1.0)),
        ]
    )
    return {
        name: split(frame, ["vm", "mount"] if name == "disk" else ["vm"])
        for name, frame in zip(NAMES, frames, strict=True)
    }


# ---------------------------------------------------------------------------- DuckDB


def with_duckdb(data: Path) -> dict[str, Any]:
    import duckdb  # noqa: PLC0415

    con = duckdb.connect()

    def source(name: str, numbers: list[str]) -> str:
        paths = files(data, name)
        names = header(paths[0])
        types = {
            col: ("DOUBLE" if col in numbers else "TIMESTAMP" if col == "ts" else "VARCHAR")
            for col in names
        }
        cols = ", ".join(f"'{k}': '{v}'" for k, v in types.items())
        return (
            f"read_csv({paths!r}, header = true, auto_detect = false, columns = {{{cols}}}, "
            f"timestampformat = '{_TS}', quote = '\"')"
        )

    def query(sql: str, keys: list[str]) -> dict[Any, tuple[Any, Any]]:
        got = con.execute(sql).fetchnumpy()
        return by_key([got[k] for k in keys], got["t"], got["v"])

    t = "epoch(ts)::DOUBLE AS t"
    system = source("system.csv", ["cpu_user", "cpu_system", "mem_used_kb"])
    xen = source("xen.csv", ["cpu_usage", "memory_kb"])
    out: dict[str, Any] = {}
    out["cpu"] = query(
        f"SELECT vm, {t}, cpu_user + cpu_system AS v FROM {system} "
        "WHERE cpu_user IS NOT NULL AND cpu_system IS NOT NULL ORDER BY vm, t",
        ["vm"],
    )
    out["mem"] = query(
        f"SELECT vm, {t}, mem_used_kb * {1024 * 2.0**-20!r} AS v FROM {system} "
        "WHERE mem_used_kb IS NOT NULL ORDER BY vm, t",
        ["vm"],
    )
    network = source("network.csv", ["rx_bytes", "tx_bytes"])
    con.execute(
        f"""CREATE TEMP TABLE rates AS
        WITH own AS (
            SELECT vm, "if", {t}, rx_bytes, tx_bytes FROM {network}
            WHERE "if" <> 'lo' AND NOT starts_with("if", 'vif')
              AND rx_bytes IS NOT NULL AND tx_bytes IS NOT NULL
        ), d AS (
            SELECT vm, t,
                t - lag(t) OVER w AS dt,
                rx_bytes - lag(rx_bytes) OVER w AS drx,
                tx_bytes - lag(tx_bytes) OVER w AS dtx
            FROM own WINDOW w AS (PARTITION BY vm, "if" ORDER BY t)
        )
        SELECT vm, t, sum(drx / dt * {_KIB!r}) AS rx, sum(dtx / dt * {_KIB!r}) AS tx FROM d
        WHERE dt > 0 AND drx >= 0 AND dtx >= 0 GROUP BY vm, t"""
    )
    out["rx"] = query("SELECT vm, t, rx AS v FROM rates ORDER BY vm, t", ["vm"])
    out["tx"] = query("SELECT vm, t, tx AS v FROM rates ORDER BY vm, t", ["vm"])
    conn = source("connections.csv", ["tcp_established"])
    out["tcp"] = query(
        f"SELECT vm, {t}, tcp_established AS v FROM {conn} "
        "WHERE tcp_established IS NOT NULL ORDER BY vm, t",
        ["vm"],
    )
    disk = source("disk.csv", ["used_kb", "avail_kb"])
    out["disk"] = query(
        f"SELECT vm, CASE WHEN mount IS NULL OR mount = '' THEN '?' ELSE mount END AS mount, {t}, "
        f"100.0 * used_kb / (used_kb + avail_kb) AS v FROM {disk} "
        "WHERE used_kb IS NOT NULL AND avail_kb IS NOT NULL AND used_kb + avail_kb > 0 "
        "ORDER BY vm, mount, t",
        ["vm", "mount"],
    )
    both = "WHERE cpu_usage IS NOT NULL AND memory_kb IS NOT NULL ORDER BY vm, t"
    out["xen_cpu"] = query(f"SELECT vm, {t}, cpu_usage AS v FROM {xen} {both}", ["vm"])
    out["xen_mem"] = query(
        f"SELECT vm, {t}, memory_kb * {1024 * 2.0**-20!r} AS v FROM {xen} {both}", ["vm"]
    )
    scrapes = source("scrapes.csv", [])
    out["failures"] = query(
        f"SELECT vm, {t}, 1.0::DOUBLE AS v FROM {scrapes} "
        "WHERE coalesce(nullif(status, ''), '?') NOT IN ('ok', 'skipped') ORDER BY vm, t",
        ["vm"],
    )
    return out


def main() -> int:
    kind, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    import resource  # noqa: PLC0415
    import time  # noqa: PLC0415

    t = time.perf_counter()
    try:
        compute = {"polars": with_polars, "duckdb": with_duckdb}[kind]
        __import__(kind)
        __import__("numpy")
    except ImportError:
        print("missing", flush=True)
        return 0
    imported = time.perf_counter() - t
    t = time.perf_counter()
    series = compute(data)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("measured", flush=True)  # the peak is taken up to here, not the dump below
    sys.stdin.readline()
    out.write_bytes(pickle.dumps(series))
    print(f"{wall} {usage.ru_utime + usage.ru_stime} {imported}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
