"""The README's first command: ``python -m sysmon demo`` on this machine."""

from __future__ import annotations

from conftest import run_sysmon
from csvcheck import read_day

from sysmon.commands.demo import demo_names
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


def test_names_are_valid_qube_names():
    for host in ("my.host.example", "9lives", "a" * 60, "x_y-z", "---"):
        assert all(is_valid_qube_name(n) for n in demo_names(host)), host
