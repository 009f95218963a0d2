"""``python -m sysmon once`` against a fake qubes world on PATH."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import run_sysmon
from csvcheck import read_day
from fakequbes.world import calls, leftover_processes, make_world, vm_list
from fakes import LIAR_PAYLOAD, FakeQubes, daemon_on_virtual_time, inline

from sysmon.commands.once import run_once as one_tick
from sysmon.config import Config
from sysmon.transform.rules import parse_rules

TIMEOUT = 2.0
# Process start-up and imports come on top of the bound the issue sets
# (per-qube timeout + 2 s); this is a hang guard, not a speed budget.
STARTUP_ALLOWANCE = 3.0


def run_once(env: dict[str, str], out_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config = out_dir.parent / "sysmon.toml"
    config.write_text(f"scrape_timeout = {TIMEOUT}\ninterval = 10\nconcurrency = 4\n")
    return run_sysmon(
        "once",
        "--config",
        str(config),
        "--out-dir",
        str(out_dir),
        *extra,
        env=env,
        timeout=TIMEOUT + 2 + STARTUP_ALLOWANCE,
    )


def only_day(out_dir: Path) -> Path:
    (folder,) = [p for p in out_dir.iterdir() if p.is_dir()]
    return folder


@pytest.fixture(name="world_dir")
def _world_dir(tmp_path):
    return tmp_path / "world"


class TestTenQubesHalfMisbehaving:
    BEHAVIOURS: ClassVar[dict[str, str]] = {
        "work": "healthy",
        "personal": "healthy",
        "sys-net": "healthy",
        "sys-firewall": "healthy",
        "vault": "healthy",
        "hangs": "hang",
        "denied": "refused",
        "flood": "flood",
        "liar": "payload {liar}",
        "crash": "exit 3",
    }

    # One run serves every test of the class.  (pytest-trio 0.8 and the newest
    # pytest disagree over class-scoped fixtures, so this caches by hand.)
    _run: ClassVar[tuple[subprocess.CompletedProcess[str], Path, Path] | None] = None

    @pytest.fixture(name="ten")
    def _ten(self, tmp_path_factory):
        if TestTenQubesHalfMisbehaving._run is None:
            tmp_path = tmp_path_factory.mktemp("ten")
            liar = tmp_path / "liar.txt"
            liar.write_bytes(LIAR_PAYLOAD)
            behaviours = {k: v.format(liar=liar) for k, v in self.BEHAVIOURS.items()}
            world_dir = tmp_path / "world"
            env = make_world(world_dir, behaviours, states={"halted-one": "Halted"})
            out = tmp_path / "out"
            TestTenQubesHalfMisbehaving._run = (run_once(env, out), out, world_dir)
        return TestTenQubesHalfMisbehaving._run

    @pytest.fixture(name="result")
    def _result(self, ten):
        return ten[0], ten[1]

    @pytest.fixture(name="ten_world")
    def _ten_world(self, ten):
        return ten[2]

    def test_exit_zero_and_a_line_per_qube(self, result):
        done, _ = result
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 11
        assert lines[-1].startswith("10 qubes polled: 6 ok, 4 not ok")

    def test_scrapes_explain_every_qube(self, result):
        _, out = result
        scrapes = {r["vm"]: r for r in read_day(only_day(out))["scrapes.csv"]}
        assert {vm: r["status"] for vm, r in scrapes.items()} == {
            "work": "ok",
            "personal": "ok",
            "sys-net": "ok",
            "sys-firewall": "ok",
            "vault": "ok",
            "hangs": "timeout",
            "denied": "refused",
            "flood": "too-big",
            "liar": "ok",
            "crash": "error",
        }
        assert int(scrapes["liar"]["lines_rejected"]) == 1

    def test_healthy_qubes_get_their_rows(self, result):
        _, out = result
        files = read_day(only_day(out))
        system_vms = {r["vm"] for r in files["system.csv"]}
        assert {"work", "personal", "sys-net", "sys-firewall", "vault", "liar"} == system_vms
        assert {r["vm"] for r in files["disk.csv"]} >= {"work", "vault"}

    def test_nothing_attributed_to_another_qube(self, result):
        _, out = result
        files = read_day(only_day(out))
        polled = set(self.BEHAVIOURS)
        for name, rows in files.items():
            allowed = (
                polled | {"dom0", "halted-one", "sys-monitor"} if name == "qubes.csv" else polled
            )
            assert {r["vm"] for r in rows} <= allowed, name
        liar_alerts = [r["msg"] for r in files["alerts.csv"] if r["vm"] == "liar"]
        assert liar_alerts == [
            '2023-11-14T22:13:20.000000Z evil: =HYPERLINK("http://x","y")',
            '2023-11-14T22:13:20.000001Z dom0: pretend,"quoted"  [2Jtext',
            "2023-11-14T22:13:20.000002Z -cmd: +SUM(1)",
        ]
        liar_ifs = sorted(r["if"] for r in files["network.csv"] if r["vm"] == "liar")
        assert liar_ifs == ["'-eth0", "'@evil"]
        assert [r["fs"] for r in files["disk.csv"] if r["vm"] == "liar"] == ["'+cmd"]

    def test_qubes_csv_lists_every_qube_with_its_state(self, result):
        _, out = result
        states = {r["vm"]: r["state"] for r in read_day(only_day(out))["qubes.csv"]}
        assert states["dom0"] == "Running"
        assert states["halted-one"] == "Halted"
        assert len(states) == 13  # dom0, ten polled, a halted one, sys-monitor

    def test_never_polls_dom0_itself_or_halted(self, ten_world):
        targets = {line.split()[0] for line in calls(ten_world) if "qubes.Metrics.Get" in line}
        assert targets == set(self.BEHAVIOURS)

    def test_no_process_left_behind(self, ten_world):
        """The hung qube ignored SIGTERM; its whole process group is gone anyway."""
        assert leftover_processes(ten_world) == []


class TestOtherMisbehaviour:
    @pytest.mark.parametrize(
        ("behaviour", "status"),
        [("slow 0.5", "ok"), ("no-service", "no-service"), ("garbage", "bad-output")],
    )
    def test_status(self, tmp_path, world_dir, behaviour, status):
        env = make_world(world_dir, {"one": behaviour, "good": "healthy"})
        done = run_once(env, tmp_path / "out")
        assert done.returncode == 0, done.stderr
        scrapes = {
            r["vm"]: r["status"] for r in read_day(only_day(tmp_path / "out"))["scrapes.csv"]
        }
        assert scrapes == {"one": status, "good": "ok"}


class TestDiscoveryFailures:
    @pytest.mark.parametrize(
        ("reply", "message"),
        [
            (None, "refused by qrexec policy (exit 126)"),
            (b"", "qubesd refused the call (empty reply)"),
            (b"2\x00QubesException\x00\x00Permission denied\x00", "qubesd raised QubesException"),
            (b"garbage", "not framed"),
        ],
    )
    def test_one_line_reason_and_nonzero(self, tmp_path, world_dir, reply, message):
        env = make_world(world_dir, {"work": "healthy"}, admin_list=reply or b"")
        if reply is None:
            (world_dir / "dom0" / "admin.vm.List").unlink()
        done = run_once(env, tmp_path / "out")
        assert done.returncode == 1
        assert done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert message in line
        assert not (tmp_path / "out").exists() or not any(
            p.is_dir() for p in (tmp_path / "out").iterdir()
        )

    def test_no_qrexec_client(self, tmp_path):
        env = {"PATH": "/nonexistent", "SYSMON_FAKE_WORLD": str(tmp_path)}
        done = run_once(env, tmp_path / "out")
        assert done.returncode == 1
        assert "cannot run qrexec-client-vm" in done.stderr

    def test_invalid_names_rejected_others_polled(self, tmp_path, world_dir):
        reply = vm_list(
            {"work": "Running"},
            [
                b"dom0-dm class=AppVM state=Running",
                b"../etc class=AppVM state=Running",
                b"x" * 40 + b" class=AppVM state=Running",
                b"ok2 class=AppVM state=Weird",
                b"none class=AppVM state=Running",
                b"\xff\xfe class=AppVM state=Running",
            ],
        )
        env = make_world(world_dir, {"work": "healthy"}, admin_list=reply)
        done = run_once(env, tmp_path / "out")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("discovery_line_rejected") == 6
        targets = {line.split()[0] for line in calls(world_dir)}
        assert targets == {"dom0", "work"}

    def test_empty_list_is_a_poll_of_nothing(self, tmp_path, world_dir):
        env = make_world(world_dir, {}, admin_list=b"0\x00")
        done = run_once(env, tmp_path / "out")
        assert done.returncode == 0, done.stderr
        assert "0 qubes polled" in done.stdout


class TestExcludeAndSelf:
    def test_self_and_excluded_are_not_polled(self, tmp_path, world_dir):
        env = make_world(
            world_dir, {"work": "healthy", "untrusted": "healthy"}, self_name="sys-monitor"
        )
        out = tmp_path / "out"
        config = tmp_path / "exclude.toml"
        config.write_text('exclude = ["untrusted"]\nscrape_timeout = 2\n')
        done = run_sysmon(
            "once", "--config", str(config), "--out-dir", str(out), env=env, timeout=20
        )
        assert done.returncode == 0, done.stderr
        targets = {line.split()[0] for line in calls(world_dir) if "Metrics" in line}
        assert targets == {"work"}


class TestSecondPoll:
    def test_cpu_filled_and_alerts_not_repeated(self, tmp_path, world_dir):
        """A second once fills CPU cells from the saved sample and files no alert twice."""
        env = make_world(world_dir, {"work": "healthy"})
        out = tmp_path / "out"
        assert run_once(env, out).returncode == 0
        time.sleep(1.1)  # rows of one second are one tick
        assert run_once(env, out).returncode == 0
        files = read_day(only_day(out))
        cpu = [r["cpu_user"] for r in files["system.csv"]]
        assert cpu[0] == ""
        assert cpu[1] != ""
        assert len(files["alerts.csv"]) == 1  # "journal not readable", once per boot
        second_call = [c for c in calls(world_dir) if "Metrics" in c][1]
        assert "+" in second_call


class TestOneTickPath:
    """``once`` is one tick of the daemon's pipeline, not a pipeline of its own."""

    RULE: ClassVar[dict[str, object]] = {
        "name": "mem-low",
        "file": "system",
        "expr": "mem_avail_kb",
        "op": "<",
        "value": 1000,
        "for": "0s",
    }

    async def test_once_writes_what_a_daemon_tick_writes(self, tmp_path, autojump_clock):
        """Same world, same second: the same bytes in every file and the same state."""
        ts = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)
        rules = parse_rules([self.RULE], "t")
        world = {"work": "ok", "deny": "refused", "slow": ("slow", 20)}
        once_out, daemon_out = tmp_path / "once", tmp_path / "daemon"
        qubes = FakeQubes(dict(world))
        await one_tick(
            Config(out_dir=once_out, rules=rules), qubes, qubes, now=lambda: ts, offload=inline
        )
        daemon = daemon_on_virtual_time(daemon_out, FakeQubes(dict(world)), ts, rules=rules)
        await daemon.run_tick(ts)
        for name in sorted(p.name for p in (once_out / "2025-08-31").iterdir()):
            assert (once_out / "2025-08-31" / name).read_bytes() == (
                daemon_out / "2025-08-31" / name
            ).read_bytes(), name
        assert (once_out / "sysmon-state.json").read_bytes() == (
            daemon_out / "sysmon-state.json"
        ).read_bytes()

    async def test_once_fires_a_rule(self, tmp_path, autojump_clock):
        """The rule the daemon would fire, once fires too (it never did before)."""
        ts = datetime(2025, 8, 31, 12, 0, 10, tzinfo=UTC)
        qubes = FakeQubes({"work": "ok"})
        config = Config(out_dir=tmp_path, rules=parse_rules([self.RULE], "t"))
        await one_tick(config, qubes, qubes, now=lambda: ts, offload=inline)
        (alert,) = read_day(tmp_path / "2025-08-31")["alerts.csv"]
        assert alert["msg"].startswith("sysmon: rule mem-low firing on work")
