"""The real time-series engines, started for a test on 127.0.0.1 and stopped after it.

VictoriaMetrics, Prometheus (with promtool) and InfluxDB 1.x (influxd and the
influx CLI) as Debian packages them; .ci/run installs them.  Each runs on a
free loopback port with a data folder of its own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import require_tool

#: (metric name, sorted labels) -> {epoch seconds: value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]]


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, data: bytes | None = None, *, timeout: float = 60) -> bytes:
    """GET (or POST ``data``) and return the body; raise on an HTTP error."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"{url}: the engines listen on loopback only")
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return bytes(response.read())


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the engine exited: {log.read_text()[-2000:]}")
        try:
            http(url, timeout=2)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
            continue
        return
    raise RuntimeError(f"{url}: not ready in 60 s: {log.read_text()[-2000:]}")


@contextmanager
def _running(argv: list[str], ready: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(ready, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class VictoriaMetrics:
    """A single-node VictoriaMetrics with a 100-year retention (its default is 1 month)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    @contextmanager
    def start(cls, data: Path, *extra: str) -> Iterator[VictoriaMetrics]:
        """Run one until the block ends."""
        with cls.run(["victoria-metrics", "-retentionPeriod=100y", *extra], data) as vm:
            yield vm

    @classmethod
    @contextmanager
    def run(cls, argv: list[str], data: Path) -> Iterator[VictoriaMetrics]:
        """Run ``argv`` (``victoria-metrics`` and its flags, as a user types them) with its
        listen address on a free loopback port and its data in ``data``."""
        port = free_port()
        own = ("-httpListenAddr=", "-storageDataPath=")
        argv = [
            require_tool(argv[0]),
            *(flag for flag in argv[1:] if not flag.startswith(own)),
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data}",
        ]
        url = f"http://127.0.0.1:{port}"
        with _running(argv, f"{url}/health", data.with_suffix(".log")):
            yield cls(url)

    def import_prometheus(self, text: bytes) -> None:
        """POST OpenMetrics / Prometheus text; make it searchable at once."""
        http(f"{self.url}/api/v1/import/prometheus", text)
        self.flush()

    def write_influx(self, text: bytes) -> None:
        """POST Influx line protocol (VictoriaMetrics names a series measurement_field)."""
        http(f"{self.url}/write", text)
        self.flush()

    def flush(self) -> None:
        """What was imported, searchable now."""
        http(f"{self.url}/internal/force_flush")

    def samples(self, match: str = '{__name__=~"sysmon_.*"}') -> Samples:
        """Every stored sample of the series ``match`` selects, raw."""
        query = urllib.parse.urlencode({"match[]": match})
        out: Samples = {}
        for line in http(f"{self.url}/api/v1/export?{query}").splitlines():
            item = json.loads(line)
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            key = (name, tuple(sorted(labels.items())))
            points = out.setdefault(key, {})
            for ts, value in zip(item["timestamps"], item["values"], strict=True):
                if ts % 1000:  # sysmon's times are whole seconds: a millisecond off is wrong
                    raise AssertionError(f"{name}: {ts} ms is not a whole second")
                points[ts // 1000] = float(value)
        return out

    def query(self, expr: str, at: int) -> list[dict[str, Any]]:
        """An instant query's result."""
        return _query(self.url, expr, at)


class Prometheus:
    """A Prometheus that scrapes nothing and reads the blocks promtool wrote."""

    def __init__(self, url: str) -> None:
        self.url = url

    @classmethod
    @contextmanager
    def backfill_and_start(cls, openmetrics: Path, data: Path) -> Iterator[Prometheus]:
        """``promtool tsdb create-blocks-from openmetrics`` into ``data``, then serve it."""
        promtool = require_tool("promtool")
        binary = require_tool("prometheus")
        done = subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
             str(openmetrics), str(data)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"promtool: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        argv = [binary, f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=100y"]
        with cls.serve(argv) as prometheus:
            yield prometheus

    @classmethod
    @contextmanager
    def serve(cls, argv: list[str]) -> Iterator[Prometheus]:
        """Run ``argv`` (``prometheus`` and its flags, as a user types them, with
        ``--storage.tsdb.path``), scraping nothing, on a free loopback port."""
        (data,) = (Path(f.split("=", 1)[1]) for f in argv if f.startswith("--storage.tsdb.path="))
        config = data.with_suffix(".yml")
        config.write_text("global:\n  scrape_interval: 1h\n")
        port = free_port()
        argv = [
            require_tool(argv[0]),
            *argv[1:],
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        url = f"http://127.0.0.1:{port}"
        with _running(argv, f"{url}/-/ready", data.with_suffix(".log")):
            yield cls(url)

    def samples(self, match: str, at: int, span: str = "3d") -> Samples:
        """Every sample of ``match`` in the ``span`` before ``at``, raw (a range vector)."""
        out: Samples = {}
        for item in _query(self.url, f"{match}[{span}]", at):
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            points = out.setdefault((name, tuple(sorted(labels.items()))), {})
            for ts, value in item["values"]:
                points[int(ts)] = float(value)
        return out

    def query(self, expr: str, at: int) -> list[dict[str, Any]]:
        """An instant query's result."""
        return _query(self.url, expr, at)


class InfluxDB:
    """An InfluxDB 1.x (Debian's influxd) with its HTTP API and its RPC port on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    @contextmanager
    def start(cls, data: Path) -> Iterator[InfluxDB]:
        """Run one until the block ends: nothing reported home, no self-monitoring."""
        binary = require_tool("influxd")
        port, rpc = free_port(), free_port()
        data.mkdir(parents=True, exist_ok=True)
        config = data.with_suffix(".conf")
        config.write_text(
            f'reporting-enabled = false\nbind-address = "127.0.0.1:{rpc}"\n'
            f'[meta]\n  dir = "{data}/meta"\n'
            f'[data]\n  dir = "{data}/data"\n  wal-dir = "{data}/wal"\n'
            "  query-log-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n[continuous_queries]\n  enabled = false\n"
        )
        influx = cls(port)
        with _running(
            [binary, "-config", str(config)], f"{influx.url}/ping", data.with_suffix(".log")
        ):
            yield influx

    def query(self, database: str, text: str) -> list[dict[str, Any]]:
        """InfluxQL's series for ``text`` (one statement), as /query answers them."""
        query = urllib.parse.urlencode({"db": database, "q": text, "epoch": "s"})
        body = json.loads(http(f"{self.url}/query?{query}", timeout=600))
        (result,) = body["results"]
        if "error" in result:
            raise RuntimeError(f"{text}: {result['error']}")
        return list(result.get("series", []))


def _query(url: str, expr: str, at: int) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr, "time": str(at)})
    body = json.loads(http(f"{url}/api/v1/query?{query}", timeout=300))
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    result = body["data"]["result"]
    return list(result) if isinstance(result, list) else []
