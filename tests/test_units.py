"""systemd units pass ``systemd-analyze verify`` with nothing to say."""

from __future__ import annotations

import subprocess

import pytest
from conftest import ROOT, require_tool

UNITS = sorted((ROOT / "systemd").glob("*.service")) + sorted((ROOT / "systemd").glob("*.timer"))


# Where the units expect their programs once installed, and where they are here.
INSTALLED = {
    "/usr/lib/netlog/": f"{ROOT}/netlog/",
    "/usr/local/bin/qubes-netlogs-backup": f"{ROOT}/netlog/qubes-netlogs-backup",
}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit, tmp_path):
    """Each unit verifies, with its programs pointed at this checkout
    (verify refuses an ExecStart that does not exist)."""
    analyze = require_tool("systemd-analyze")
    for source in UNITS:
        text = source.read_text()
        for installed, here in INSTALLED.items():
            text = text.replace(installed, here)
        (tmp_path / source.name).write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / unit.name)], capture_output=True, text=True, check=False
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
