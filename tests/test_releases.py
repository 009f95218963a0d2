"""``once``, ``run``, ``status`` and ``archive`` on the recorded world of each Qubes release.

dom0 answers with its recorded ``admin.vm.List`` and ``admin.vm.Stats``
bytes (4.2, 4.3, and a 4.4 stats stream); the qubes' states are the
recording's.  On 4.3 every qube is called by the UUID dom0 listed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import run_sysmon, wait_for
from csvcheck import read_strict
from fakequbes.recordings import read, world
from fakequbes.world import make_world, qube_uuid, requested_calls
from fakes import start_daemon

#: Running qubes sysmon polls (not dom0, not itself, not the vault); nohandler
#: lacks the service.
POLLED = {"disp1234": "ok", "nohandler": "no-service", "sys-dns": "ok", "work": "ok"}
STATS = {
    "4.2": read("admin.vm.Stats-4.2.bin"),
    "4.3": read("admin.vm.Stats-4.3.bin"),
    "4.4": b"1\0\0connection-established\0\0" + read("vm-stats-4.4-event.bin"),
}


def recorded_world(root: Path, release: str, stats: str | None = None) -> dict[str, str]:
    states = {name: state for name, (_, state) in world(release).items() if name != "dom0"}
    behaviours = {name: "healthy" for name in POLLED if name != "nohandler"}
    env = make_world(
        root, behaviours, states=states, admin_list=read(f"admin.vm.List-{release}.bin")
    )
    (root / "dom0" / "admin.vm.Stats").write_bytes(STATS[stats or release])
    return env


def once(env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    config = out.parent / "sysmon.toml"
    config.write_text("scrape_timeout = 5\ninterval = 10\n")
    return run_sysmon("once", "--config", config, "--out-dir", out, env=env, timeout=30)


def rows(out: Path, name: str) -> list[dict[str, str]]:
    """One daily file's rows over the days so far: a day folder the running daemon
    has just made may not hold every file yet (it was read whole, and failed)."""
    found: list[dict[str, str]] = []
    for day in sorted(p for p in out.iterdir() if p.is_dir() and p.name[0].isdigit()):
        if (day / name).exists():
            found += read_strict(day / name)
    return found


@pytest.mark.parametrize("release", ["4.2", "4.3"])
class TestOnce:
    def test_polls_every_running_qube(self, tmp_path, release):
        """Every running qube but dom0 and sys-monitor, and nothing else."""
        env = recorded_world(tmp_path / "world", release)
        done = once(env, tmp_path / "out")
        assert done.returncode == 0, done.stderr
        statuses = {r["vm"]: r["status"] for r in rows(tmp_path / "out", "scrapes.csv")}
        assert statuses == POLLED
        listed = {r["vm"]: r["state"] for r in rows(tmp_path / "out", "qubes.csv")}
        assert listed == {name: state for name, (_, state) in world(release).items()}

    def test_called_by_uuid_on_4_3_by_name_on_4_2(self, tmp_path, release):
        """A qube renamed or re-created between list and poll cannot be mistaken for another."""
        env = recorded_world(tmp_path / "world", release)
        assert once(env, tmp_path / "out").returncode == 0
        targets = {
            line.split()[0]
            for line in requested_calls(tmp_path / "world")
            if "qubes.Metrics.Get" in line
        }
        if release == "4.3":
            assert targets == {f"uuid:{qube_uuid(name)}" for name in POLLED}
        else:
            assert targets == set(POLLED)

    def test_archive_of_a_day_reaches_the_vault(self, tmp_path, release):
        """A complete day of rows from this release is archived and delivered."""
        env = recorded_world(tmp_path / "world", release)
        out = tmp_path / "out"
        assert once(env, out).returncode == 0
        (today,) = [p for p in out.iterdir() if p.is_dir() and p.name[0].isdigit()]
        yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
        today.rename(out / yesterday)
        done = run_sysmon("archive", "--out-dir", out, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        vault = tmp_path / "world" / "vault" / "home" / "QubesIncoming" / "sys-monitor"
        assert (vault / f"monitor-{yesterday}.tgz").is_file()


class TestUnusableList:
    def test_once_fails_loudly(self, tmp_path):
        """dom0 lines in a format sysmon cannot read: exit 1, not "0 qubes polled"."""
        reply = b"0\x00dom0\tAdminVM\tRunning\nwork\tAppVM\tRunning\n"
        env = make_world(tmp_path / "world", {"work": "healthy"}, admin_list=reply)
        done = once(env, tmp_path / "out")
        assert done.returncode == 1
        assert "none of the 2 lines dom0 sent is usable" in done.stderr

    def test_once_polls_the_lines_it_can_read(self, tmp_path):
        """Some lines unusable: the others are polled, the rest said on stderr."""
        reply = read("admin.vm.List-4.3.bin") + b"future\tline\n"
        env = recorded_world(tmp_path / "world", "4.3")
        (tmp_path / "world" / "dom0" / "admin.vm.List").write_bytes(reply)
        done = once(env, tmp_path / "out")
        assert done.returncode == 0, done.stderr
        assert "discovery_line_rejected" in done.stderr
        assert {r["vm"] for r in rows(tmp_path / "out", "scrapes.csv")} == set(POLLED)


@pytest.mark.parametrize(("release", "stats"), [("4.2", "4.2"), ("4.3", "4.3"), ("4.3", "4.4")])
def test_run_and_status(tmp_path, release, stats):
    """The daemon polls every running qube and fills xen.csv; status says OK."""
    env = recorded_world(tmp_path / "world", release, stats)
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    proc = start_daemon(env, out, log)
    try:
        wait_for(
            lambda: out.exists() and len(rows(out, "scrapes.csv")) >= 2 * len(POLLED),
            "two ticks",
        )
        wait_for(lambda: rows(out, "xen.csv"), "xen rows")
        status = run_sysmon("status", "--out-dir", out, env=env)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()  # reaped here, not warned about in a later test
    assert {r["vm"] for r in rows(out, "scrapes.csv")} == set(POLLED)
    xen = rows(out, "xen.csv")
    if stats == "4.4":
        assert {(r["vm"], r["cpu_usage_raw"], r["cpu_time_ms"]) for r in xen} == {
            ("work", "", "11607")
        }
    else:
        assert {r["vm"] for r in xen} >= {"dom0", "work", "disp1234", "personal"}
    assert status.returncode == 0, status.stdout + status.stderr
    assert "work" in status.stdout
    assert '"event": "discovery_failed"' not in log.read_text()


def test_run_says_once_when_the_list_is_unusable(tmp_path):
    """An error line and one alert row, not a daemon ticking with "qubes": 0."""
    reply = b"0\x00dom0\tAdminVM\tRunning\nwork\tAppVM\tRunning\n"
    env = make_world(tmp_path / "world", {"work": "healthy"}, admin_list=reply)
    shutil.rmtree(tmp_path / "world" / "dom0" / "admin.vm.Stats", ignore_errors=True)
    out, log = tmp_path / "out", tmp_path / "log.jsonl"
    proc = start_daemon(env, out, log)
    try:
        wait_for(lambda: log.read_text().count('"event": "discovery_failed"') >= 1, "the error")
        wait_for(lambda: out.exists() and rows(out, "alerts.csv"), "the alert row")
        wait_for(lambda: log.read_text().count("tick") >= 1, "a tick")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    (alert,) = rows(out, "alerts.csv")
    assert alert["vm"] == "sys-monitor"
    assert alert["msg"].startswith("sysmon: discovery failed: admin.vm.List: none of the 2 lines")
    assert log.read_text().count('"event": "discovery_failed"') == 1
