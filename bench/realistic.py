"""Realistic sysmon data, shared by the benchmarks (and a golden test).

    python bench/realistic.py OUT [--qubes 30] [--days 7] [--interval 10]

What a real sys-monitor writes is not constant or linear: CPU and memory
wander (mean-reverting random walks, a few busy qubes among many idle ones),
counters grow by random, bursty amounts, one qube restarts mid-week (its
counters start again near zero and its first CPU cells are empty), one qube
is halted for an hour (no rows at all, "Halted" in qubes.csv), polls time out
now and then (a flaky qube more often), and the journal files alerts whose
text has commas and quotes.  Disk lines come every 6th poll and qubes.csv
once a minute, as the daemon's defaults write them.

Rows are formatted by templates equal to :meth:`sysmon.schema.Schema.format_row`
for these values (``tests/test_report.py`` checks it row by row) -- about
eight times faster, so a 30-qube week is written in well under a minute.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sysmon import schema  # noqa: E402
from sysmon.commands.progress import Progress  # noqa: E402

#: Qubes a Qubes user runs, then numbered work qubes.
NAMES = (
    "sys-net",
    "sys-firewall",
    "sys-usb",
    "sys-whonix",
    "sys-dns",
    "sys-vpn",
    "work",
    "personal",
    "untrusted",
    "banking",
    "dev",
    "mail",
    "media",
    "anon-whonix",
)
ALERTS = (
    'sshd[812]: Failed password for "root", from 203.0.113.7 port 52211',
    "kernel: EXT4-fs warning (device xvdb): ext4_dx_add_entry: Directory index full, reach max",
    'systemd[1]: Failed to start "backup, nightly".service',
    'sudo: pam_unix(sudo:auth): conversation failed, user="user"',
)
#: The generator's own template per file, in the schema's column order.
_KINDS = {"ts": "{}", "name": "{}", "text": "{}", "int": "{}", "dec1": "{:.1f}", "dec2": "{:.2f}"}


def _template(daily: schema.Schema) -> str:
    return ",".join(_KINDS.get(c.kind, "{}%") for c in daily.columns) + "\n"


TEMPLATES = {daily.file_name: _template(daily) for daily in schema.DAILY_FILES}


def fast_row(file_name: str, values: list[object]) -> str:
    """``format_row`` for the generator's values: numbers and safe names by template;
    empty cells and alert text (quoted, neutralised) by the schema itself."""
    if None in values or file_name == schema.ALERTS.file_name:
        daily = next(s for s in schema.DAILY_FILES if s.file_name == file_name)
        return daily.format_row([schema.parse_ts(str(values[0])), *values[1:]]).decode()
    return TEMPLATES[file_name].format(*values)


class _Walk:
    """A mean-reverting random walk (Ornstein-Uhlenbeck), clamped to [low, high]."""

    def __init__(self, rng: random.Random, mean: float, spread: float, low: float, high: float):
        self.rng, self.mean, self.spread, self.low, self.high = rng, mean, spread, low, high
        self.value = mean

    def step(self) -> float:
        pull = 0.02 * (self.mean - self.value)
        self.value = min(
            self.high, max(self.low, self.value + pull + self.rng.gauss(0, self.spread))
        )
        return self.value


class _Qube:
    """One qube's state between polls."""

    def __init__(self, name: str, index: int, seed: int, ifaces: int, disks: int):
        self.rng = rng = random.Random(f"{seed}-{name}")
        self.name = name
        busy = rng.random() < 0.2
        self.cpu = _Walk(rng, 25.0 if busy else rng.uniform(0.5, 6.0), 2.5 if busy else 0.6, 0, 97)
        self.mem_total = rng.choice((2_000_000, 4_000_000, 8_000_000))
        self.mem = _Walk(
            rng,
            self.mem_total * rng.uniform(0.3, 0.6),
            self.mem_total * 0.004,
            1e5,
            self.mem_total * 0.95,
        )
        self.tcp = _Walk(rng, rng.uniform(2, 40), 1.0, 0, 500)
        self.xen_mem = _Walk(rng, self.mem_total * 0.8, self.mem_total * 0.003, 4e5, self.mem_total)
        names = ["lo", "eth0", "vif3.0" if name == "sys-net" else "eth1"]
        self.ifaces = names[:ifaces] + [f"vif{i}.0" for i in range(max(0, ifaces - 3))]
        self.rate = rng.uniform(200, 60_000) * (20 if name in ("sys-net", "sys-firewall") else 1)
        self.mounts = [("/dev/xvda3", "/"), ("/dev/xvdb", "/rw"), ("/dev/xvdb", "/home")][:disks]
        self.disk_used = [rng.uniform(0.2, 0.8) * 20_000_000 for _ in self.mounts]
        self.flaky = index == 2
        self.reset()

    def reset(self) -> None:
        """A (re)boot: counters start again near zero, the next CPU cells are empty."""
        self.counters = {
            i: [self.rng.randrange(10**4), self.rng.randrange(10**4)] for i in self.ifaces
        }
        self.cpu_time_ms = self.rng.randrange(10**4)
        self.fresh = True

    def poll(self, interval: float) -> dict[str, list[list[object]]]:
        """The rows of one successful poll (ts and name added by the caller)."""
        rng = self.rng
        cpu = self.cpu.step()
        user, system = (None, None) if self.fresh else (cpu * 0.7, cpu * 0.3)
        idle = None if self.fresh else 100 - cpu - 0.4
        load = cpu / 50
        used = int(self.mem.step())
        rows: dict[str, list[list[object]]] = {
            "system.csv": [
                [
                    user,
                    system,
                    idle,
                    load,
                    load * 0.9,
                    load * 0.8,
                    self.mem_total,
                    used,
                    self.mem_total - used - 50_000,
                    1_000_000,
                    rng.randrange(0, 5000),
                    1 + int(load),
                    0,
                ]
            ],
            "connections.csv": [[int(self.tcp.step()), rng.randrange(2, 9)]],
        }
        burst = 1.0 + cpu / 10
        net = rows["network.csv"] = []
        for iface in self.ifaces:
            counts = self.counters[iface]
            counts[0] += int(rng.expovariate(1 / (self.rate * interval * burst)))
            counts[1] += int(rng.expovariate(3 / (self.rate * interval * burst)))
            net.append([iface, counts[0], 0, 0, counts[1], 0, 0])
        self.cpu_time_ms += int(cpu * interval * 10)
        rows["xen.csv"] = [
            [
                # Held to [0, 100] at both ends: near 1% the noise reaches below 0.
                max(0, min(100, int(cpu + rng.gauss(0, 1) + 0.5))) if cpu > 1 else 0,
                int(cpu * 2),
                self.cpu_time_ms,
                int(self.xen_mem.step()),
                *[None] * 5,  # Qubes 4.4's columns: this is a 4.2/4.3 world
            ]
        ]
        self.fresh = False
        return rows

    def disk_rows(self) -> list[list[object]]:
        """Filesystems, used space creeping up and sometimes cleaned."""
        out: list[list[object]] = []
        for i, (fs, mount) in enumerate(self.mounts):
            self.disk_used[i] += self.rng.gauss(200, 400)
            if self.rng.random() < 0.001:
                self.disk_used[i] *= 0.8
            used = int(min(max(self.disk_used[i], 1_000), 19_000_000))
            out.append([fs, mount, 20_000_000, used, 20_000_000 - used, math.ceil(used / 200_000)])
        return out


def _plan(names: list[str], ticks: int, interval: float) -> dict[str, tuple[str, int, int]]:
    """The events of the run: who restarts and who halts for an hour, when."""
    return {
        "restart": (names[len(names) // 2], ticks // 2 + 17, 0),
        "halt": (names[-1], ticks // 3, int(3600 / interval)),
    }


def qube_names(count: int) -> list[str]:
    """``count`` realistic qube names."""
    return [*NAMES[:count], *(f"work-{i:02d}" for i in range(count - len(NAMES)))]


class _DayFiles:
    """The open daily files of the current UTC day; a new day opens new files."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.day: date | None = None
        self.files: dict[str, IO[str]] = {}
        self.folders: list[Path] = []

    def at(self, now: datetime) -> None:
        if now.date() == self.day:
            return
        self.close()
        self.day = now.date()
        folder = self.out / self.day.isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        self.folders.append(folder)
        for daily in schema.DAILY_FILES:
            path = folder / daily.file_name
            new = not path.exists()
            self.files[daily.file_name] = f = path.open("a", encoding="utf-8", newline="")
            if new:
                f.write(daily.header.decode())

    def write(self, name: str, ts: str, values: list[object]) -> None:
        self.files[name].write(fast_row(name, [ts, *values]))

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}


def generate(
    out: Path,
    *,
    qubes: int = 30,
    start: datetime = datetime(2025, 8, 25, tzinfo=UTC),
    ticks: int = 7 * 8640,
    interval: float = 10.0,
    ifaces: int = 3,
    disks: int = 3,
    seed: int = 1,
    progress: Progress | None = None,
) -> list[Path]:
    """Write ``ticks`` polls from ``start`` into day folders under ``out``; return them.

    ``progress`` is told the day and the polls written (a line on a terminal).
    """
    progress = progress or Progress.quiet()
    last = start + timedelta(seconds=interval * max(0, ticks - 1))
    days = (last.date() - start.date()).days + 1
    names = qube_names(qubes)
    state = [_Qube(name, i, seed, ifaces, disks) for i, name in enumerate(names)]
    plan = _plan(names, ticks, interval)
    restart_vm, restart_at, _ = plan["restart"]
    halt_vm, halt_at, halt_for = plan["halt"]
    events = random.Random(seed)
    files = _DayFiles(out)
    try:
        for tick in range(ticks):
            now = start + timedelta(seconds=interval * tick)
            files.at(now)
            stage = f"day {len(files.folders)}/{days} {files.day}"
            progress.update(stage, tick * len(state), "polls", total=ticks * len(state))
            ts = schema.format_ts(now)
            minute = tick % max(1, int(60 / interval)) == 0
            for q in state:
                halted = q.name == halt_vm and halt_at <= tick < halt_at + halt_for
                if minute:
                    files.write("qubes.csv", ts, [q.name, "Halted" if halted else "Running"])
                if halted:
                    continue
                if (q.name, tick) in ((restart_vm, restart_at), (halt_vm, halt_at + halt_for)):
                    q.reset()
                if events.random() < (0.05 if q.flaky else 0.002):
                    files.write("scrapes.csv", ts, [q.name, "timeout", 8000, 0, 0, 0])
                    continue
                full = q.fresh or tick % 6 == 0
                for name, lines in q.poll(interval).items():
                    for values in lines:
                        files.write(name, ts, [q.name, *values])
                if full:
                    for values in q.disk_rows():
                        files.write("disk.csv", ts, [q.name, *values])
                took, size = int(events.expovariate(1 / 14)) + 3, int(events.gauss(1100, 60))
                files.write("scrapes.csv", ts, [q.name, "ok", took, size, 9 + 3 * full, 0])
                if tick % 3 == 0 and events.random() < 0.004:
                    files.write("alerts.csv", ts, [q.name, events.choice(ALERTS)])
    finally:
        files.close()
    return files.folders


def week(
    out: Path, *, qubes: int = 30, days: int = 7, seed: int = 1, progress: Progress | None = None
) -> list[Path]:
    """``days`` whole days at 10 s from 2025-08-25, one walk across midnights."""
    return generate(out, qubes=qubes, ticks=days * 8640, seed=seed, progress=progress)


def csv_bytes(out: Path) -> Iterator[int]:
    """Sizes of every CSV under ``out``."""
    return (p.stat().st_size for p in out.rglob("*.csv"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--qubes", type=int, default=30)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    progress = Progress("realistic")  # on a terminal only: a week takes a minute
    week(args.out, qubes=args.qubes, days=args.days, progress=progress)
    progress.close()
    print(f"{args.out}: {sum(csv_bytes(args.out)) / 1e6:.0f} MB of CSV")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
