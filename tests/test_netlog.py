"""netlog with the real tools: tcpdump and nft in network namespaces, the dom0
backup against a fake qvm-run that maps qubes to folders."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, require_root, require_tool
from fakequbes.world import BIN, open_to_others

NETLOG = ROOT / "netlog"
CAPTURE = NETLOG / "netpcap-capture"
PRUNE = NETLOG / "netpcap-prune"
FIREWALL = NETLOG / "qubes-firewall-user-script"
BACKUP = NETLOG / "qubes-netlogs-backup"


@pytest.fixture(name="netns")
def _netns() -> Iterator[Callable[[str], str]]:
    require_root("network namespaces")
    require_tool("ip")
    made: list[str] = []

    def make(tag: str) -> str:
        name = f"nl{tag}{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *argv: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], text=True, capture_output=True, check=check, **kwargs
    )


def udp_burst(ns: str, host: str, port: int, seconds: float) -> None:
    code = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"end=time.time()+{seconds}\n"
        f"while time.time()<end: s.sendto(b'x'*300,('{host}',{port})); time.sleep(0.05)\n"
    )
    in_ns(ns, sys.executable, "-c", code, check=True)


@pytest.fixture(name="public_tmp")
def _public_tmp() -> Iterator[Path]:
    """A folder the tcpdump user can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="netlog-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class TestCapture:
    def test_rotates_as_the_unprivileged_user_with_snaplen_96(self, netns, public_tmp):
        """Rotation keeps working after tcpdump drops to its user (the seed's unit stops)."""
        require_tool("tcpdump")
        ns = netns("cap")
        capdir = public_tmp / "cap"
        conf = public_tmp / "netpcap.conf"
        conf.write_text(f"NETPCAP_DIR={capdir}\nNETPCAP_ROTATE_SECONDS=1\n")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", str(CAPTURE)],
            env={**os.environ, "NETPCAP_CONF": str(conf)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(1)
            udp_burst(ns, "127.0.0.1", 9999, 3.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        files = sorted(capdir.glob("pcap-*.pcap"))
        assert len(files) >= 3, err
        assert b"Permission denied" not in err
        tcpdump_uid = pwd.getpwnam("tcpdump").pw_uid
        for f in files:
            assert f.stat().st_uid == tcpdump_uid
            magic, _major, _minor, _tz, _sig, snaplen, _link = struct.unpack(
                "<IHHiIII", f.read_bytes()[:24]
            )
            assert magic == 0xA1B2C3D4
            assert snaplen == 96

    def test_bad_filter_fails_loudly_before_capturing(self, public_tmp):
        require_tool("tcpdump")
        bad = public_tmp / "filter"
        bad.write_text("not net 10.137.0.0/16 and\n")
        conf = public_tmp / "netpcap.conf"
        conf.write_text(f"NETPCAP_DIR={public_tmp / 'cap'}\n")
        done = subprocess.run(
            ["sh", str(CAPTURE)],
            env={**os.environ, "NETPCAP_CONF": str(conf), "NETPCAP_FILTER": str(bad)},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == 64
        assert "does not compile" in done.stderr
        assert not (public_tmp / "cap").exists()

    def test_prune_keeps_the_newest(self, tmp_path):
        names = [f"pcap-202501010{h:01d}0000.pcap" for h in range(5)]
        for n in names:
            (tmp_path / n).write_bytes(b"x")
        conf = tmp_path / "c.conf"
        conf.write_text(f"NETPCAP_DIR={tmp_path}\nNETPCAP_KEEP_FILES=3\n")
        subprocess.run(
            ["sh", str(PRUNE)], env={**os.environ, "NETPCAP_CONF": str(conf)}, check=True
        )
        assert sorted(p.name for p in tmp_path.glob("pcap-*")) == names[2:]


QUBES_RULESET = """
table ip qubes {
    chain custom-forward {
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        jump custom-forward
    }
}
table ip6 qubes {
    chain custom-forward {
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        jump custom-forward
    }
}
"""


def test_firewall_rules_count_log_and_do_not_duplicate(netns):
    """In a namespace shaped like sys-firewall: DNS and new connections are
    counted through Qubes 4.2's custom-forward chain; a second run adds nothing."""
    require_tool("nft")
    client, fw, server = netns("c"), netns("f"), netns("s")
    for a, b, net in ((client, fw, "10.99.1"), (fw, server, "10.99.2")):
        left, right = f"v{uuid.uuid4().hex[:6]}", f"v{uuid.uuid4().hex[:6]}"
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                left,
                "netns",
                a,
                "type",
                "veth",
                "peer",
                "name",
                right,
                "netns",
                b,
            ],
            check=True,
        )
        addr_a, addr_b = (
            (f"{net}.2/24", f"{net}.1/24") if a == client else (f"{net}.1/24", f"{net}.2/24")
        )
        subprocess.run(["ip", "-n", a, "addr", "add", addr_a, "dev", left], check=True)
        subprocess.run(["ip", "-n", b, "addr", "add", addr_b, "dev", right], check=True)
        subprocess.run(["ip", "-n", a, "link", "set", left, "up"], check=True)
        subprocess.run(["ip", "-n", b, "link", "set", right, "up"], check=True)
    subprocess.run(["ip", "-n", client, "route", "add", "default", "via", "10.99.1.1"], check=True)
    subprocess.run(["ip", "-n", server, "route", "add", "default", "via", "10.99.2.1"], check=True)
    in_ns(fw, "sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
    in_ns(fw, "nft", "-f", "-", input=QUBES_RULESET, check=True)
    seed_rule = in_ns(
        fw, "nft", "add", "rule", "ip", "qubes", "filter", "forward", "udp", "dport", "53", "log"
    )
    assert seed_rule.returncode != 0  # the seed's chain does not exist in 4.2

    assert in_ns(fw, "sh", str(FIREWALL)).returncode == 0
    first = in_ns(fw, "nft", "list", "ruleset", check=True).stdout
    assert in_ns(fw, "sh", str(FIREWALL)).returncode == 0
    assert in_ns(fw, "nft", "list", "ruleset", check=True).stdout == first
    assert first.count("jump netlog-forward") == 2  # ip and ip6, once each

    server_code = (
        "import socket, time\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "u.bind(('0.0.0.0', 53))\n"
        "keep = []\n"
        "for port in (53, 8080):\n"
        "    t = socket.socket()\n"
        "    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "    t.bind(('0.0.0.0', port))\n"
        "    t.listen()\n"
        "    keep.append(t)\n"
        "time.sleep(5)\n"
    )
    server_proc = subprocess.Popen(
        ["ip", "netns", "exec", server, sys.executable, "-c", server_code]
    )
    try:
        time.sleep(0.5)
        client_code = (
            "import socket\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "[s.sendto(b'q',('10.99.2.2',53)) for _ in range(3)]\n"
            "for port in (53, 8080):\n"
            "    c=socket.create_connection(('10.99.2.2',port),timeout=3); c.close()\n"
        )
        in_ns(client, sys.executable, "-c", client_code, check=True, timeout=20)
    finally:
        server_proc.kill()
        server_proc.wait()
    listing = json.loads(
        in_ns(fw, "nft", "-j", "list", "chain", "ip", "qubes", "netlog-forward", check=True).stdout
    )
    counts: dict[str, list[int]] = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        prefix = next(e["log"]["prefix"] for e in rule["expr"] if "log" in e)
        packets = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        counts.setdefault(prefix, []).append(packets)
    assert counts["netlog-dns: "][0] >= 3  # udp 53
    assert counts["netlog-dns: "][1] >= 1  # tcp 53, new
    assert counts["netlog-new: "][0] >= 3  # new connections: udp flow, tcp 53, tcp 8080


# --- The dom0 backup -------------------------------------------------------


def _export(ts: int, msg: str, mono: int) -> str:
    return (
        f"__REALTIME_TIMESTAMP={ts}\n__MONOTONIC_TIMESTAMP={mono}\n_BOOT_ID={'1' * 32}\n"
        f"PRIORITY=4\nSYSLOG_IDENTIFIER=kernel\n_TRANSPORT=kernel\nMESSAGE={msg}\n\n"
    )


@pytest.fixture(name="world")
def _world(tmp_path):
    world = tmp_path / "world"
    for vm in ("sys-dns", "sys-vpn", "sys-firewall", "secrets-vault"):
        (world / "vm" / vm / "root").mkdir(parents=True)
        (world / "vm" / vm / "state").write_text("Running\n")
    for hour in range(3):
        (world / "vm" / "sys-dns" / "root" / "netpcap").mkdir(exist_ok=True)
        (
            world / "vm" / "sys-dns" / "root" / "netpcap" / f"pcap-2025083100{hour}000.pcap"
        ).write_bytes(bytes([hour]) * 1000)
    (world / "vm" / "sys-dns" / "root" / "netpcap" / "evil; rm -rf ~").write_bytes(b"")
    # As on a real qube: captures in tcpdump's 0750 folder (uid 65533 stands
    # in for tcpdump), the cursor under root's /rw/config, the journal root's;
    # qvm-run runs a command as the default user (65534) unless --user root.
    require_root("the owners and modes of a real qube")
    os.chown(world / "vm" / "sys-dns" / "root" / "netpcap", 65533, 65533)
    (world / "vm" / "sys-dns" / "root" / "netpcap").chmod(0o750)
    (world / "vm" / "sys-firewall" / "root" / "cursor").mkdir(mode=0o755)
    open_to_others(world)
    journal = tmp_path / "journal"
    remote = require_tool("/lib/systemd/systemd-journal-remote")
    journal.mkdir(mode=0o700)
    (tmp_path / "in.export").write_text(
        _export(1_700_000_000_000_000, "netlog-dns: IN=eth0 OUT=eth1 SRC=10.137.0.5 DPT=53", 1)
        + _export(1_700_000_001_000_000, "unrelated kernel line", 2)
        + _export(1_700_000_002_000_000, "netlog-new: IN=eth0 SRC=10.137.0.5 DPT=443", 3)
    )
    subprocess.run(
        [remote, f"--output={journal / 'k.journal'}", str(tmp_path / "in.export")],
        check=True,
        capture_output=True,
    )
    conf = tmp_path / "netlog.conf"
    conf.write_text(
        "NETLOG_REMOTE_DIR=netpcap\nNETLOG_CURSOR_FILE=cursor/fw.cursor\n"
        f"NETLOG_JOURNALCTL='journalctl --directory={journal}'\n"
        "NETLOG_PCAP_SOURCES='sys-dns sys-vpn'\n"
    )
    env = {
        "SYSMON_FAKE_WORLD": str(world),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "NETLOG_CONF": str(conf),
    }
    return world, env


def run_backup(env):
    return subprocess.run(
        ["bash", str(BACKUP)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def vault_files(world: Path) -> list[str]:
    folder = world / "vm" / "secrets-vault" / "home" / "NetLogs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_normal_night_ships_closed_files_and_new_log_lines(world):
    world_dir, env = world
    (world_dir / "vm" / "sys-vpn" / "root" / "netpcap").mkdir()  # a source with no files
    done = run_backup(env)
    assert done.returncode == 0, done.stderr
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert vault_files(world_dir) == [f"sys-dns-{day}.tgz", f"sys-firewall-fw-{day}.log.gz"]
    with tarfile.open(
        world_dir / "vm" / "secrets-vault" / "home" / "NetLogs" / f"sys-dns-{day}.tgz"
    ) as tar:
        assert tar.getnames() == ["pcap-20250831000000.pcap", "pcap-20250831001000.pcap"]
        shipped = {
            name: hashlib.sha256(tar.extractfile(name).read()).hexdigest()  # type: ignore[union-attr]
            for name in tar.getnames()
        }
    assert shipped == {  # exactly the captures' bytes
        f"pcap-2025083100{hour}000.pcap": hashlib.sha256(bytes([hour]) * 1000).hexdigest()
        for hour in range(2)
    }
    left = sorted(p.name for p in (world_dir / "vm" / "sys-dns" / "root" / "netpcap").iterdir())
    assert left == ["evil; rm -rf ~", "pcap-20250831002000.pcap"]  # the one being written stays
    log = gzip.decompress(
        (
            world_dir
            / "vm"
            / "secrets-vault"
            / "home"
            / "NetLogs"
            / f"sys-firewall-fw-{day}.log.gz"
        ).read_bytes()
    ).decode()
    assert [line.split(" ", 2)[2] for line in log.splitlines()] == [
        "netlog-dns: IN=eth0 OUT=eth1 SRC=10.137.0.5 DPT=53",
        "netlog-new: IN=eth0 SRC=10.137.0.5 DPT=443",
    ]
    assert (
        (world_dir / "vm" / "sys-firewall" / "root" / "cursor" / "fw.cursor")
        .read_text()
        .startswith("s=")
    )
    again = run_backup(env)
    assert again.returncode == 0, again.stderr
    assert "no new firewall log lines" in again.stderr
    assert vault_files(world_dir) == [f"sys-dns-{day}.tgz", f"sys-firewall-fw-{day}.log.gz"]


@pytest.mark.parametrize("failure", ["vault down", "stream cut", "source off"])
def test_failures_leave_the_source_untouched(world, failure):
    world_dir, env = world
    if failure == "vault down":
        (world_dir / "vm" / "secrets-vault" / "mode").write_text("down\n")
    elif failure == "stream cut":
        (world_dir / "vm" / "sys-dns" / "mode").write_text("cut\n")
    else:
        (world_dir / "vm" / "sys-dns" / "state").write_text("Halted\n")
    before = sorted(p.name for p in (world_dir / "vm" / "sys-dns" / "root" / "netpcap").iterdir())
    done = run_backup(env)
    assert done.returncode == 1
    after = sorted(p.name for p in (world_dir / "vm" / "sys-dns" / "root" / "netpcap").iterdir())
    assert after == before
    assert not any(
        name.startswith("sys-dns") or name.endswith(".part") for name in vault_files(world_dir)
    )
    if failure == "source off":
        assert (world_dir / "vm" / "sys-dns" / "state").read_text() == "Halted\n"  # not started
        assert "sys-firewall-fw" in " ".join(vault_files(world_dir))  # the others still shipped
    cursor_saved = (world_dir / "vm" / "sys-firewall" / "root" / "cursor" / "fw.cursor").exists()
    assert cursor_saved == (failure != "vault down")


def test_scripts_are_shellcheck_clean():
    shellcheck = require_tool("shellcheck")
    scripts = [CAPTURE, PRUNE, FIREWALL, BACKUP, BIN / "qvm-run", BIN / "qvm-copy-to-vm"]
    done = subprocess.run(
        [shellcheck, *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout


def test_a_failed_journal_read_is_an_error_not_nothing_new(world, tmp_path):
    """journalctl failing (as it does on a journal it cannot open) fails the night."""
    world_dir, env = world
    conf = Path(env["NETLOG_CONF"])
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "journalctl").write_text(
        "#!/bin/sh\necho 'Failed to open journal: Permission denied' >&2\nexit 1\n"
    )
    (broken / "journalctl").chmod(0o755)
    conf.write_text(conf.read_text() + f"NETLOG_JOURNALCTL={broken}/journalctl\n")
    done = run_backup(env)
    assert done.returncode == 1
    assert "sys-firewall: cannot read its journal" in done.stderr
    assert "no new firewall log lines" not in done.stderr
    assert not (world_dir / "vm" / "sys-firewall" / "root" / "cursor" / "fw.cursor").exists()
