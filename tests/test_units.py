"""systemd units pass ``systemd-analyze verify`` with nothing to say."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, require_root, require_tool

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
    # The package's /usr/bin/sysmon (test_packages.py verifies the installed unit).
    command = tmp_path / "sysmon"
    command.write_text('#!/bin/sh\nexec python3 -m sysmon "$@"\n')
    command.chmod(0o755)
    for source in UNITS:
        text = source.read_text().replace("/usr/bin/sysmon ", f"{command} ")
        for installed, here in INSTALLED.items():
            text = text.replace(installed, here)
        (tmp_path / source.name).write_text(text)
    done = subprocess.run(
        # Whether tcpdump's man page is here is this host's business, not the
        # unit's: the installed units are verified with their pages in test_packages.
        [analyze, "verify", "--man=no", str(tmp_path / unit.name)],
        capture_output=True,
        text=True,
        check=False,
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
        # notify-send's session bus (docs/notifications.md)
        "Environment=DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus",
    ):
        assert f"\n{line}\n" in text, line


def _pre_commands(home: Path, user: str, group: str) -> list[list[str]]:
    """sysmon.service's privileged (``+``) ExecStartPre= commands, for a home at
    ``home`` and a qube's user ``user:group`` (this machine has no ``user``)."""
    swaps = {
        "/home/user": str(home),
        "-o user": f"-o {user}",
        "-g user": f"-g {group}",
        "--reuid=user": f"--reuid={user}",
        "--regid=user": f"--regid={group}",
    }
    commands = []
    for line in (ROOT / "systemd" / "sysmon.service").read_text().splitlines():
        if line.startswith("ExecStartPre=+"):
            command = line.removeprefix("ExecStartPre=+")
            for old, new in swaps.items():
                command = command.replace(old, new)
            commands.append(shlex.split(command))
    return commands


@pytest.fixture(name="home")
def _home():
    """A /home/user owned by an unprivileged user (nobody), under a folder all may enter."""
    require_root("making a home of another user")
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    base.chmod(0o755)
    home = base / "user"
    home.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    yield home
    shutil.rmtree(base)


def _run_pre(home: Path) -> None:
    group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    for argv in _pre_commands(home, "nobody", group):
        subprocess.run(argv, check=False, capture_output=True)


def test_the_out_dir_is_made_for_the_user(home):
    """A first start makes /home/user/Monitor, the user's, 0750."""
    _run_pre(home)
    made = (home / "Monitor").lstat()
    assert stat.S_ISDIR(made.st_mode)
    assert made.st_uid == pwd.getpwnam("nobody").pw_uid
    assert stat.S_IMODE(made.st_mode) == 0o750


def test_a_planted_symlink_gives_the_user_nothing_of_roots(home):
    """The user (the daemon's own uid) plants /home/user/Monitor -> a folder of root's:
    the privileged ExecStartPre must not hand that folder over (it did: install -d
    -o user ran as root and followed the link)."""
    roots = home.parent / "roots"
    roots.mkdir(mode=0o700)
    (home / "Monitor").symlink_to(roots)
    _run_pre(home)
    after = roots.stat()
    assert (after.st_uid, after.st_gid) == (0, 0)
    assert stat.S_IMODE(after.st_mode) == 0o700
