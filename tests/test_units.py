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

UNITS = sorted(
    path
    for pattern in ("*.service", "*.socket", "*.timer")
    for path in (ROOT / "systemd").glob(pattern)
)


# Where the units expect their programs once installed, and where they are here.
INSTALLED = {
    "/usr/lib/netlog/": f"{ROOT}/netlog/",
    "/usr/local/bin/qubes-netlogs-backup": f"{ROOT}/netlog/qubes-netlogs-backup",
    "/usr/lib/sysmon-handler/sysmon-agent": f"{ROOT}/handler/sysmon-agent",
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


def unit_settings(unit: str) -> dict[str, dict[str, list[str]]]:
    """``systemd/<unit>``'s settings: section to key to its values, in order."""
    settings: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / unit).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = settings.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key, []).append(value)
    return settings


class TestAgentUnits:
    def test_the_socket_is_where_qrexec_4_3_looks_first_and_goes_when_stopped(self):
        """The socket overrides /etc/qubes-rpc/qubes.Metrics.Get only in a qube
        with the service on, only for root and group qubes, and leaves no file
        behind when it stops (qrexec then runs the per-call handler)."""
        socket = unit_settings("sysmon-agent.socket")
        assert socket["Unit"]["ConditionPathExists"] == ["/run/qubes-service/sysmon-agent"]
        assert socket["Socket"] == {
            "ListenStream": ["/run/qubes-rpc/qubes.Metrics.Get"],
            "SocketUser": ["root"],
            "SocketGroup": ["qubes"],
            "SocketMode": ["0660"],
            "DirectoryMode": ["0755"],
            "RemoveOnStop": ["yes"],
            "Accept": ["no"],
        }
        assert socket["Install"] == {"WantedBy": ["sockets.target"]}

    def test_the_service_runs_the_packaged_agent_only_with_its_socket(self):
        service = unit_settings("sysmon-agent.service")
        assert service["Unit"]["ConditionPathExists"] == ["/run/qubes-service/sysmon-agent"]
        assert service["Unit"]["Requires"] == ["sysmon-agent.socket"]
        assert service["Service"]["ExecStart"] == ["/usr/lib/sysmon-handler/sysmon-agent"]
        assert service["Service"]["Restart"] == ["on-failure"]
        assert "Install" not in service  # started by its socket alone

    def test_the_service_sees_the_qubes_own_mounts(self):
        """Every [Service] setting is one that gives the agent no mount namespace
        of its own (systemd's exec_needs_mount_namespace), nor a network one,
        which would also empty its /proc/net/dev: a new setting is reviewed here."""
        no_namespace = {
            "Type",
            "ExecStart",
            "Restart",
            "SyslogIdentifier",
            "Environment",
            "UMask",
            "CapabilityBoundingSet",
            "NoNewPrivileges",
            "RestrictAddressFamilies",
            "IPAddressDeny",
            "RestrictNamespaces",
            "RestrictSUIDSGID",
            "LockPersonality",
            "MemoryDenyWriteExecute",
            "RestrictRealtime",
            "SystemCallArchitectures",
            "SystemCallFilter",
            "SystemCallErrorNumber",
            "DevicePolicy",
            "MemoryMax",
            "TasksMax",
        }
        service = unit_settings("sysmon-agent.service")["Service"]
        assert set(service) <= no_namespace, set(service) - no_namespace
        assert "User" not in service  # root, as the policy's user=root ...
        # ... keeping only the capability to read and search everywhere, as root does
        assert service["CapabilityBoundingSet"] == ["CAP_DAC_READ_SEARCH"]
        for key, value in {
            "NoNewPrivileges": "yes",
            "RestrictAddressFamilies": "AF_UNIX",
            "IPAddressDeny": "any",
            "RestrictNamespaces": "yes",
            "MemoryMax": "64M",
            "TasksMax": "64",
        }.items():
            assert service[key] == [value], key

    def test_the_service_is_hardened(self, tmp_path):
        """systemd-analyze security rates the agent's exposure 3.5 or lower
        (3.3 with systemd 252, Debian 12; 3.1 with 257, Debian 13)."""
        analyze = require_tool("systemd-analyze")
        unit = tmp_path / "sysmon-agent.service"
        unit.write_text((ROOT / "systemd/sysmon-agent.service").read_text())
        done = subprocess.run(
            [analyze, "security", "--offline=true", "--threshold=35", "--no-pager", str(unit)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-600:] + done.stderr


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
