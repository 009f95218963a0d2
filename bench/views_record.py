"""Record both views of one machine at the same instants: the honest world of views.csv.

    sudo python bench/views_record.py [--seconds 1080] [--seed 26] [-o FILE.jsonl.gz]

No Qubes host is at hand, so a Linux host stands in for one qube and its
netvm, and its kernel's own totals stand in for Xen's view (docs/views.md,
"A recorded honest world"):

- **the qube** ("work") is a network namespace whose ``eth0`` is one end of
  a veth pair; the real handler (``handler/qubes.Metrics.Get``, run as
  qrexec runs it: its first line picks mawk) runs inside it every ``--tick``
  seconds, so its ``net:`` lines are the namespace's own;
- **its netvm** ("sys-net") is the host side, where the pair's other end is
  named ``vif5.0`` as Xen's netback names the vif of domain 5; the same
  handler runs there at the same instant;
- **"Xen's view"** is a Qubes 4.3 ``admin.vm.Stats`` event for each of them
  every 3 s (qubesd's ``stats_interval``), in the exact framing of
  tests/fixtures/qubes/admin.vm.Stats-4.3.bin: ``cpu_time`` the kernel's
  non-idle time in ms (user, nice, system, irq, softirq, steal of
  /proc/stat), ``cpu_usage_raw`` its share of one CPU over the last
  interval, ``cpu_usage`` that share of all CPUs (Xen's scale: a share of
  the domain's vCPUs), ``memory_kb`` the memory the kernel has online (what
  Xen would have given it; /proc/meminfo's MemTotal where /sys does not
  say), the first event of the stream at 0 % as qubesd's is.

Both "qubes" are this one kernel, so the CPU and memory they report are the
same machine's: what the recording shows is the part of an honest gap that
comes from two samplers reading at different moments and over different
windows (10 s against 3 s), under a varied load made here -- a CPU burner
at nice 19 (idle, partly busy, busy, in 60 s segments; one stretch busy on
every CPU) and UDP traffic both ways across the veth (quiet to ~10 MB/s).
It is not a Qubes host: Xen's own accounting (the guest kernel between
ticks, event channels, a device model) is not in it.

Each line of the output is one JSON object: ``{"t": s, "stats": b64}`` for
a chunk of the stream, ``{"t": s, "work": b64, "sys-net": b64}`` for one
tick's two handler outputs; ``t`` is seconds from the start.  Needs root
(a network namespace).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "handler" / "qubes.Metrics.Get"
NS = f"sysmon-rec-{os.getpid()}"
HOST_IP, QUBE_IP = "10.137.99.1", "10.137.99.2"
STATS_EVERY = 3.0
SEGMENT = 60.0
#: The stream's first frame, as qubesd sends it (the 4.3 recording's first bytes).
CONNECTED = b"1\x00\x00connection-established\x00\x00"
#: /proc/stat's cpu fields that are not idle: user nice system (idle iowait) irq softirq steal.
_BUSY = (0, 1, 2, 5, 6, 7)

#: Run in a child: burn ``share`` of one CPU in 100 ms slices, until killed.
BURNER = """
import sys, time
share = float(sys.argv[1])
while True:
    end = time.monotonic() + 0.1 * share
    while time.monotonic() < end:
        pass
    time.sleep(0.1 * (1 - share))
"""
#: Run in a child: send UDP to an address at a rate that changes per line of its stdin.
SENDER = """
import socket, sys, threading, time
rate = [0.0]
def read():
    for line in sys.stdin:
        rate[0] = float(line)
threading.Thread(target=read, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(1400)
sent, start = 0, time.monotonic()
while True:
    time.sleep(0.01)
    due = rate[0] * 0.01
    n = int(due // len(payload))
    for _ in range(n):
        try:
            s.sendto(payload, (sys.argv[1], 9))
        except OSError:
            pass
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@contextlib.contextmanager
def namespace() -> Iterator[None]:
    """The qube: a network namespace behind a veth pair, ``vif5.0`` on the host side."""
    ip("netns", "add", NS)
    try:
        ip("link", "add", "vif5.0", "type", "veth", "peer", "name", "eth0", "netns", NS)
        ip("addr", "add", f"{HOST_IP}/30", "dev", "vif5.0")
        ip("link", "set", "vif5.0", "up")
        ip("-n", NS, "addr", "add", f"{QUBE_IP}/30", "dev", "eth0")
        ip("-n", NS, "link", "set", "eth0", "up")
        ip("-n", NS, "link", "set", "lo", "up")
        yield
    finally:
        subprocess.run(["ip", "link", "del", "vif5.0"], check=False)
        subprocess.run(["ip", "netns", "del", NS], check=False)


def plan(seconds: float, seed: int) -> list[tuple[float, float, float]]:
    """Per 60 s segment: CPU share per burner, MB/s out of the qube, MB/s into it.

    Varied by ``seed``; the fourth to seventh minutes are busy on every CPU
    and the ninth to twelfth carry steady traffic, so a lie injected there
    has something to hide.
    """
    rng = random.Random(seed)
    out = []
    for i in range(int(seconds // SEGMENT) + 1):
        cpu = rng.choice([0.0, 0.0, 0.2, 0.5, 0.9])
        up = rng.choice([0.0, 0.0, 0.2, 2.0, 6.0])
        down = rng.choice([0.0, 0.3, 1.0, 4.0])
        if 3 <= i < 7:
            cpu = 1.0
        if 8 <= i < 12:
            up, down = 3.0, 1.0
        out.append((cpu, up, down))
    return out


def cpu_line() -> list[int]:
    with Path("/proc/stat").open("rb") as f:
        return [int(x) for x in f.readline().split()[1:]]


def memory_kb() -> int:
    """The memory the kernel has online, in kB (MemTotal where /sys does not say)."""
    blocks = Path("/sys/devices/system/memory")
    try:
        size = int((blocks / "block_size_bytes").read_text(), 16)
        online = sum(
            1 for b in blocks.glob("memory[0-9]*") if (b / "online").read_text().strip() == "1"
        )
        return online * size // 1024
    except (OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
        raise


class Stats:
    """qubesd's vm-stats events for the two "qubes", from the kernel's totals."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cpus = os.cpu_count() or 1
        self.memory = memory_kb()
        self.last: tuple[float, int] | None = None

    def events(self) -> bytes:
        now = time.monotonic()
        fields = cpu_line()
        busy = sum(fields[i] for i in _BUSY if i < len(fields))
        raw = 0
        if self.last is not None:  # qubesd's first sample of a connection is 0
            raw = int(100 * (busy - self.last[1]) / self.hz / (now - self.last[0]))
        self.last = (now, busy)
        values = {
            "memory_kb": self.memory,
            "cpu_time": busy * 1000 // self.hz,
            "cpu_usage": raw // self.cpus,
            "cpu_usage_raw": raw,
        }
        body = b"".join(b"%s\x00%d\x00" % (k.encode(), v) for k, v in values.items())
        return b"".join(
            b"1\x00%s\x00vm-stats\x00%s\x00" % (vm, body) for vm in (b"work", b"sys-net")
        )


def handlers() -> tuple[bytes, bytes]:
    """Both handlers' output, started at the same instant (as qrexec runs it)."""
    argv = [str(HANDLER), "nodisk.noalerts."]
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C"}
    qube = subprocess.Popen(["ip", "netns", "exec", NS, *argv], stdout=subprocess.PIPE, env=env)
    netvm = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    out = (qube.communicate(timeout=30)[0], netvm.communicate(timeout=30)[0])
    if qube.returncode or netvm.returncode:
        raise SystemExit("views_record: the handler failed")
    return out


def record(seconds: float, tick: float, seed: int, out: Path) -> None:
    segments = plan(seconds, seed)
    stats = Stats()
    children: list[subprocess.Popen[bytes]] = []
    with namespace(), gzip.open(out, "wt") as sink:
        try:
            down = subprocess.Popen(  # into the qube, across its vif
                [sys.executable, "-c", SENDER, QUBE_IP], stdin=subprocess.PIPE
            )
            up = subprocess.Popen(  # out of the qube
                ["ip", "netns", "exec", NS, sys.executable, "-c", SENDER, HOST_IP],
                stdin=subprocess.PIPE,
            )
            children += [down, up]
            burners: list[subprocess.Popen[bytes]] = []
            start = time.monotonic()
            sink.write(json.dumps({"t": 0.0, "stats": base64.b64encode(CONNECTED).decode()}) + "\n")
            next_stats, next_tick, segment = STATS_EVERY, tick, -1
            while True:
                now = time.monotonic() - start
                if now >= seconds:
                    break
                if int(now // SEGMENT) != segment:
                    segment = int(now // SEGMENT)
                    cpu, mb_up, mb_down = segments[segment]
                    for b in burners:
                        b.kill()
                        b.wait()
                    burners = [
                        subprocess.Popen(
                            ["nice", "-n", "19", sys.executable, "-c", BURNER, str(cpu)]
                        )
                        for _ in range(stats.cpus if cpu else 0)
                    ]
                    for child, rate in ((up, mb_up), (down, mb_down)):
                        assert child.stdin is not None
                        child.stdin.write(b"%f\n" % (rate * 1e6))
                        child.stdin.flush()
                    print(
                        f"{now:6.0f} s: cpu {cpu:.1f}, up {mb_up} MB/s, down {mb_down} MB/s",
                        flush=True,
                    )
                if now >= next_stats:
                    chunk = stats.events()
                    line = {"t": round(now, 3), "stats": base64.b64encode(chunk).decode()}
                    sink.write(json.dumps(line) + "\n")
                    next_stats += STATS_EVERY
                if now >= next_tick:
                    qube, netvm = handlers()
                    line = {
                        "t": round(now, 3),
                        "work": base64.b64encode(qube).decode(),
                        "sys-net": base64.b64encode(netvm).decode(),
                    }
                    sink.write(json.dumps(line) + "\n")
                    next_tick += tick
                time.sleep(max(0.0, min(next_stats, next_tick) - (time.monotonic() - start)))
        finally:
            for child in [*children, *burners]:
                child.kill()
                child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1080)
    parser.add_argument("--tick", type=float, default=10)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("-o", "--out", type=Path, default=Path("views-world.jsonl.gz"))
    args = parser.parse_args()
    record(args.seconds, args.tick, args.seed, args.out)


if __name__ == "__main__":
    main()
