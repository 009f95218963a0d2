"""systemd units pass ``systemd-analyze verify`` with nothing to say."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, require_tool

UNITS = sorted((ROOT / "systemd").glob("*.service")) + sorted((ROOT / "systemd").glob("*.timer"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit):
    analyze = require_tool("systemd-analyze")
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # unknown keys are only warned about


def test_sysmon_unit_keeps_the_essentials():
    """The settings the daemon's behaviour relies on are present."""
    text = (ROOT / "systemd" / "sysmon.service").read_text()
    for line in (
        "Type=notify",
        "KillMode=mixed",
        "ConditionPathExists=/run/qubes-service/sysmon",
        "RestrictAddressFamilies=AF_UNIX",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
    ):
        assert f"\n{line}\n" in text, line
