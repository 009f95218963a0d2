"""The README's first command: ``python -m sysmon demo`` on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from conftest import ROOT, run_sysmon
from csvcheck import read_day
from hypothesis import given
from hypothesis import strategies as st

from sysmon import schema
from sysmon.commands.demo import demo_names, latest_table, slice_of
from sysmon.protocol.names import is_valid_qube_name


def test_demo_runs_the_real_pipeline(tmp_path):
    out = tmp_path / "demo-out"
    done = run_sysmon("demo", "--duration", "2.5", "--interval", "1", "--out-dir", out, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum("polled 3 qubes: 3 ok" in line for line in lines) >= 2
    assert f"(files under {out})" in lines[-1]
    (day,) = [p for p in out.iterdir() if p.is_dir()]
    files = read_day(day)
    assert {r["vm"] for r in files["system.csv"]} == set(demo_names())
    assert any(r["cpu_user"] for r in files["system.csv"])  # the second poll has a rate
    assert {r["status"] for r in files["scrapes.csv"]} == {"ok"}
    assert {r["vm"] for r in files["qubes.csv"]} >= {"dom0", "sys-monitor", "untrusted"}
    # Each qube sees its own slice of this machine's interfaces: the slices part them.
    seen = {vm: {r["if"] for r in files["network.csv"] if r["vm"] == vm} for vm in demo_names()}
    everyone = set().union(*seen.values())
    assert sum(len(ifaces) for ifaces in seen.values()) == len(everyone)


@given(
    st.lists(st.sampled_from(["lo", "eth0", "eth1", "vif3.0", "wlan0"]), unique=True),
    st.lists(st.sampled_from(["/", "/rw", "/home", "/tmp"]), unique=True),
    st.integers(1, 5),
)
def test_the_demo_qubes_slices_part_the_interfaces_and_mounts(ifaces, mounts, n):
    output = b"".join(
        [b"sys: protocol=1 boot_id=b\n"]
        + [f"net: if={i} rx_bytes=1\n".encode() for i in ifaces]
        + [f"disk: fs=/dev/x mount={m} size_kb=1\n".encode() for m in mounts]
    )
    slices = [slice_of(output, i, n).split(b"\n") for i in range(n)]
    for s in slices:
        assert s[0] == b"sys: protocol=1 boot_id=b"
    nets = [line for s in slices for line in s if line.startswith(b"net: ")]
    disks = [line for s in slices for line in s if line.startswith(b"disk: ")]
    assert len(nets) == len(set(nets)) == len(ifaces)  # every one once, in one slice
    assert len(disks) == len(set(disks)) == len(mounts)


def test_names_are_valid_qube_names():
    for host in ("my.host.example", "9lives", "a" * 60, "x_y-z", "---"):
        assert all(is_valid_qube_name(n) for n in demo_names(host)), host


def test_a_reader_that_goes_away_ends_the_demo_quietly(tmp_path):
    """``sysmon demo | head -n 1``: no traceback when the pipe closes."""
    argv = [sys.executable, "-m", "sysmon", "demo", "--duration", "4", "--interval", "0.5"]
    demo = subprocess.Popen(
        [*argv, "--out-dir", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert demo.stdout is not None
    assert demo.stderr is not None
    demo.stdout.readline()
    demo.stdout.close()  # what head does after its line
    with demo.stderr:
        stderr = demo.stderr.read().decode()
    assert demo.wait(timeout=60) == 1
    assert "Traceback" not in stderr, stderr


def _notify_send(folder: Path, body: str) -> Path:
    """A notify-send on PATH that records its arguments, then runs ``body``."""
    folder.mkdir()
    log = folder / "argv.log"
    program = folder / "notify-send"
    program.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf '%s|' \"$a\"; done >>'{log}'\necho >>'{log}'\n{body}\n"
    )
    program.chmod(0o755)
    return log


def _demo_with(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = tmp_path / "demo-out"
    return run_sysmon(
        "demo", "--duration", "2.5", "--interval", "1", "--out-dir", out, env=env, timeout=60
    )


def test_the_demo_rule_fires_and_notifies(tmp_path: Path) -> None:
    log = _notify_send(tmp_path / "bin", "exit 0")
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/bus",
    }
    done = _demo_with(tmp_path, env)
    assert done.returncode == 0, done.stderr
    work = demo_names()[0]
    assert f"notification: sent (1), rule demo-cpu firing on {work}" in done.stdout.splitlines()
    (call,) = log.read_text().splitlines()
    assert f"|--|sysmon: demo-cpu firing on {work}|value " in call
    (day,) = [p for p in (tmp_path / "demo-out").iterdir() if p.is_dir()]
    alerts = read_day(day)["alerts.csv"]
    assert [r["vm"] for r in alerts if "rule demo-cpu firing" in r["msg"]] == [work]


def test_without_a_notification_server_the_demo_says_so_once(tmp_path: Path) -> None:
    _notify_send(tmp_path / "bin", "echo 'GDBus.Error: no server' >&2; exit 1")
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/bus",
    }
    done = _demo_with(tmp_path, env)
    assert done.returncode == 0, done.stderr
    (said,) = [line for line in done.stdout.splitlines() if line.startswith("notification:")]
    assert said.startswith("notification: not shown, no notification server is running")
    assert "GDBus.Error: no server" in said
    assert "notification_not_delivered" not in done.stdout  # its own line, not a log line


def test_the_latest_table_reads_through_the_decoder(tmp_path):
    """The newest row of each qube; a torn or over-wide line is left out, not shown."""
    day = tmp_path / "2026-12-06"
    day.mkdir()
    row = {"vm": "work", "load1": 0.5, "mem_used_kb": 1000}
    (day / "system.csv").write_bytes(
        schema.SYSTEM.header
        + schema.SYSTEM.encode({"ts": datetime(2026, 12, 6, 7, tzinfo=UTC), **row})
        + schema.SYSTEM.encode(
            {"ts": datetime(2026, 12, 6, 7, 0, 10, tzinfo=UTC), **row, "mem_used_kb": 2000}
        )
        + b"2026-12-06T07:00:20Z,work,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"
        + b"2026-12-06T07:00:30Z,work,1"
    )
    table = latest_table(tmp_path, day).splitlines()
    assert table[1].split() == ["work", "-", "-", "0.50", "2000"]
    assert len(table) == 3
