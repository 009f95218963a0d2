"""netlog with the real tools: tcpdump and nft in network namespaces, the dom0
backup against a fake qvm-run that maps qubes to folders."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pwd
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, require_root, require_tool
from fakequbes.world import BIN

# Real processes on the real clock: left out of a default run (--run-slow).
pytestmark = pytest.mark.slow

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

    def test_a_flood_cannot_fill_the_qubes_disk(self, netns, public_tmp):
        """Packets sent through the qube wrote one unbounded hourly file (8 MiB
        in 6 s here; a 2 GiB private volume full in minutes, tcpdump then
        silently blind, and count-only pruning freed nothing): each file is
        now cut at NETPCAP_FILE_MB, and prune keeps the folder under
        NETPCAP_MAX_MB, oldest first, by time and tcpdump's counter."""
        require_tool("tcpdump")
        ns = netns("fl")
        capdir = public_tmp / "cap"
        conf = public_tmp / "netpcap.conf"
        conf.write_text(f"NETPCAP_DIR={capdir}\nNETPCAP_FILE_MB=1\nNETPCAP_MAX_MB=3\n")
        env = {**os.environ, "NETPCAP_CONF": str(conf)}
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", str(CAPTURE)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(1)
            flood = (
                "import socket,time\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "end=time.time()+2\n"
                "while time.time()<end: s.sendto(b'x'*300,('127.0.0.1',9999))\n"
            )
            in_ns(ns, sys.executable, "-c", flood, check=True)
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
        files = {p.name: p.stat().st_size for p in capdir.iterdir()}
        assert sum(files.values()) > 5_000_000, (files, err)  # the flood was one
        assert max(files.values()) <= 1_000_000 + 200, files  # 1 MB and one packet
        subprocess.run(["sh", str(PRUNE)], env=env, check=True)
        kept = {p.name: p.stat().st_size for p in capdir.iterdir()}
        assert sum(kept.values()) <= 3_000_000, kept

        def order(name: str) -> tuple[str, int]:
            stamp, _, counter = name.partition(".pcap")
            return stamp, int(counter or 0)

        newest_first = sorted(files, key=order, reverse=True)
        assert sorted(kept, key=order, reverse=True) == newest_first[: len(kept)]

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
def _world(tmp_path, public_tmp):
    world = public_tmp / "world"  # the qubes' users reach it
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
        f"NETLOG_LOCK={tmp_path / 'backup.lock'}\n"
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


def test_the_firewall_cap_counts_every_log_rule_installed(netns):
    """dom0's firewall cap is sized from the lines a second the log rules let
    through: it counted 3 rules, but the script installs them in both the ip
    and the ip6 table, twice as many lines.  A night over the cap ships nothing
    and keeps its cursor, so the next night has more: one flood and the
    firewall's lines failed every night until journald dropped them.  The
    rules as nft lists them after the real script, summed, are the default."""
    require_tool("nft")
    fw = netns("f")
    in_ns(fw, "nft", "-f", "-", input=QUBES_RULESET, check=True)
    assert in_ns(fw, "sh", str(FIREWALL)).returncode == 0
    ruleset = in_ns(fw, "nft", "list", "ruleset", check=True).stdout
    rates = [
        int(m[1])
        for line in ruleset.splitlines()
        if " log prefix " in line
        for m in [re.search(r"limit rate (\d+)/second", line)]
        if m
    ]
    assert len(rates) == 6
    default = re.search(r"^NETLOG_FW_LINES_PER_SECOND=(\d+)", BACKUP.read_text(), re.MULTILINE)
    assert default is not None
    assert int(default[1]) == sum(rates)


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


def test_files_cut_by_size_ship_and_the_newest_stays(world):
    """tcpdump -C names its size-cut files pcap-<time>.pcap1, .pcap2, ...: they
    ship too (dom0 dropped them, so they were never backed up), and the one
    being written -- the newest time, then the highest counter, 10 after 9 --
    stays."""
    world_dir, env = world
    folder = world_dir / "vm" / "sys-dns" / "root" / "netpcap"
    for p in folder.glob("pcap-*"):
        p.unlink()
    (world_dir / "vm" / "sys-vpn" / "root" / "netpcap").mkdir()
    names = [
        "pcap-20250831000000.pcap",
        "pcap-20250831000000.pcap1",
        "pcap-20250831010000.pcap",
        "pcap-20250831010000.pcap9",
        "pcap-20250831010000.pcap10",
    ]
    for name in names:
        (folder / name).write_bytes(name.encode())
    for bad in ("pcap-20250831010000.pcap010", "pcap-20250831010000.pcapx"):
        (folder / bad).write_bytes(b"")
    done = run_backup(env)
    assert done.returncode == 0, done.stderr
    day = time.strftime("%Y-%m-%d", time.gmtime())
    with tarfile.open(
        world_dir / "vm" / "secrets-vault" / "home" / "NetLogs" / f"sys-dns-{day}.tgz"
    ) as tar:
        assert sorted(tar.getnames()) == sorted(names[:4])
    assert captures(world_dir) == sorted(
        ["evil; rm -rf ~", "pcap-20250831010000.pcap010", "pcap-20250831010000.pcapx", names[4]]
    )


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


# --- dom0 against hostile qubes (issue #24) ---------------------------------
# A compromised qube answers whatever it likes, for as long as it likes: its
# `shell` (the fake's stand-in for its own qubes.VMShell) gets our command.

RUN_AS_ASKED = 'exec /bin/bash -c "$1"'


def hostile_shell(world_dir: Path, vm: str, body: str) -> None:
    shell = world_dir / "vm" / vm / "shell"
    shell.write_text("#!/bin/bash\n" + body + "\n")
    shell.chmod(0o755)


def add_settings(env, text: str) -> None:
    conf = Path(env["NETLOG_CONF"])
    conf.write_text(conf.read_text() + text)


MEASURE = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], check=False)\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "sys.stderr.write(f'peak_rss_kib={peak}\\n')\n"
    "sys.exit(done.returncode)\n"
)


def run_backup_measured(env) -> tuple[subprocess.CompletedProcess[str], int]:
    """The run, and the largest resident set of any process of it (KiB)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, "bash", str(BACKUP)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    last = done.stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("peak_rss_kib="), done.stderr[-2000:]
    return done, int(last.removeprefix("peak_rss_kib="))


def fw_shipped(world_dir: Path) -> bool:
    return any(n.startswith("sys-firewall-fw-") for n in vault_files(world_dir))


def captures(world_dir: Path, vm: str = "sys-dns") -> list[str]:
    return sorted(p.name for p in (world_dir / "vm" / vm / "root" / "netpcap").iterdir())


DOM0_PEAK_KIB = 48 * 1024  # bash, python, coreutils: a few MiB each


def test_a_huge_listing_is_cut_before_dom0_holds_it(world):
    """64 MiB of listing: dom0 held all of it (about 5x resident), now 16 KiB at most."""
    world_dir, env = world
    hostile_shell(
        world_dir,
        "sys-dns",
        'case $1 in *"tar -czf"* | *"rm -f"*) ' + RUN_AS_ASKED + " ;; esac\n"
        "yes \"$(printf 'x%.0s' {1..4000})\" | head -c 64M",
    )
    before = captures(world_dir)
    done, peak_kib = run_backup_measured(env)
    assert peak_kib < DOM0_PEAK_KIB, f"dom0 peak {peak_kib} KiB"
    assert done.returncode == 1
    assert "sys-dns: listing longer than" in done.stderr
    assert captures(world_dir) == before
    assert fw_shipped(world_dir)  # the others still ship


def test_firewall_lines_stream_through_dom0(world, tmp_path):
    """64 MiB of new firewall lines pass through dom0 without being held there."""
    world_dir, env = world
    fake = tmp_path / "hostile-journalctl"
    lines = 64 * 1024 * 1024 // 139  # 64 MiB of 139-byte lines
    cursor = "s=" + "a" * 32 + ";i=1f;b=" + "b" * 32 + ";m=1;t=2;x=3"
    fake.write_text(
        "#!/bin/bash\n"
        'case "$*" in *"-n 0"*) exit 0 ;; esac\n'
        "yes '2025-08-31T00:00:00.000000+00:00 sys-firewall kernel: netlog-new: IN=eth0 "
        f"SRC=10.137.0.5 DST=10.137.0.1 LEN=60 PROTO=TCP SPT=40000 DPT=443' | head -n {lines}\n"
        f"echo '-- cursor: {cursor}'\n"
    )
    fake.chmod(0o755)
    add_settings(env, f"NETLOG_JOURNALCTL={fake}\nNETLOG_FW_MAX_BYTES=268435456\n")
    (world_dir / "vm" / "sys-vpn" / "root" / "netpcap").mkdir()  # a source with no files
    done, peak_kib = run_backup_measured(env)
    assert done.returncode == 0, done.stderr
    assert peak_kib < DOM0_PEAK_KIB, f"dom0 peak {peak_kib} KiB"
    day = time.strftime("%Y-%m-%d", time.gmtime())
    shipped = (
        world_dir / "vm" / "secrets-vault" / "home" / "NetLogs" / f"sys-firewall-fw-{day}.log.gz"
    )
    with gzip.open(shipped) as log:
        size = sum(len(block) for block in iter(lambda: log.read(1 << 20), b""))
        assert size == lines * 139
    saved = (world_dir / "vm" / "sys-firewall" / "root" / "cursor" / "fw.cursor").read_text()
    assert saved == cursor + "\n"


def test_firewall_lines_past_the_cap_are_refused(world, tmp_path):
    world_dir, env = world
    fake = tmp_path / "hostile-journalctl"
    fake.write_text(
        "#!/bin/bash\n"
        'case "$*" in *"-n 0"*) exit 0 ;; esac\n'
        "yes 'netlog-new: flood' | head -c 8M\n"
        "echo '-- cursor: s=" + "a" * 32 + ";i=1;b=" + "b" * 32 + ";m=1;t=2;x=3'\n"
    )
    fake.chmod(0o755)
    add_settings(env, f"NETLOG_JOURNALCTL={fake}\nNETLOG_FW_MAX_BYTES=1048576\n")
    done = run_backup(env)
    assert done.returncode == 1
    assert "sys-firewall: sent more than 1048576 bytes" in done.stderr
    assert not fw_shipped(world_dir)
    assert not any(n.endswith(".part") for n in vault_files(world_dir))
    assert not (world_dir / "vm" / "sys-firewall" / "root" / "cursor" / "fw.cursor").exists()


def _kill_leftovers(token: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    found = [line for line in ps.stdout.splitlines() if token in line]
    for line in found:
        os.kill(int(line.split()[0]), signal.SIGKILL)
    return found


@pytest.mark.parametrize("where", ["listing", "stream", "vault"])
def test_a_qube_that_never_answers_is_late_and_the_others_ship(world, where):
    """A qube holding the run: each qube's step has its own deadline."""
    world_dir, env = world
    token = f"1000.{uuid.uuid4().int % 10**6:06d}"
    hang = f"exec sleep {token}"
    if where == "listing":
        hostile_shell(world_dir, "sys-dns", hang)
    elif where == "stream":  # a little, then nothing
        hostile_shell(
            world_dir,
            "sys-dns",
            'case $1 in *"tar -czf"*) head -c 4096 /dev/urandom; '
            + hang
            + " ;; esac\n"
            + RUN_AS_ASKED,
        )
    else:
        hostile_shell(world_dir, "secrets-vault", hang)
    add_settings(env, "NETLOG_QUBE_SECONDS=3\nNETLOG_CALL_SECONDS=3\n")
    try:
        done = subprocess.run(
            ["bash", str(BACKUP)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=45,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the run waited on a qube that never answers")
    finally:
        time.sleep(0.5)
        left = _kill_leftovers(token)
    assert done.returncode == 1
    assert not left, left
    if where == "vault":
        assert "no answer from secrets-vault" in done.stderr
        assert (world_dir / "vm" / "sys-firewall" / "root" / "cursor").exists()
        assert not (world_dir / "vm" / "sys-firewall" / "root" / "cursor" / "fw.cursor").exists()
    else:
        assert "sys-dns: no answer within 3 s" in done.stderr
        assert fw_shipped(world_dir)
        assert "failed: sys-dns (no answer within 3 s" in done.stderr
    assert not any(n.startswith("sys-dns") or n.endswith(".part") for n in vault_files(world_dir))


def test_a_qube_streaming_past_its_cap_is_cut_and_leaves_nothing(world):
    """8 MiB into a 1 MiB cap: refused, nothing left in the vault, the source untouched."""
    world_dir, env = world
    hostile_shell(
        world_dir,
        "sys-dns",
        'case $1 in *"tar -czf"*) head -c 8M /dev/urandom; exit 0 ;; esac\n' + RUN_AS_ASKED,
    )
    add_settings(env, "NETLOG_PCAP_MAX_BYTES=1048576\n")
    before = captures(world_dir)
    done = run_backup(env)
    assert done.returncode == 1
    assert "sys-dns: sent more than 1048576 bytes" in done.stderr
    assert "failed: sys-dns (sent more than 1048576 bytes" in done.stderr
    assert not any(n.startswith("sys-dns") or n.endswith(".part") for n in vault_files(world_dir))
    assert captures(world_dir) == before
    assert fw_shipped(world_dir)


def _descendants(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out.append(int(child))
        out.extend(_descendants(int(child)))
    return out


def _dom0_side(pid: int) -> list[int]:
    """pid and its descendants that stand for dom0's processes: the fake
    qvm-run is dom0's, the command it runs belongs to the qube (in another VM,
    which stopping dom0's service does not kill)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    if any(arg.endswith(b"/qvm-run") for arg in cmdline[:2]):
        return [pid]
    return [pid, *(p for c in children for p in _dom0_side(c))]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_killed_mid_stream_leaves_no_part_in_the_vault(world, sig):
    """systemd stops the run (TimeoutStartSec, shutdown) while a qube streams."""
    world_dir, env = world
    hostile_shell(
        world_dir,
        "sys-dns",
        'case $1 in *"tar -czf"*)\n'
        "    while head -c 65536 /dev/urandom; do sleep 0.05; done; exit ;;\nesac\n" + RUN_AS_ASKED,
    )
    folder = world_dir / "vm" / "secrets-vault" / "home" / "NetLogs"
    proc = subprocess.Popen(
        ["bash", str(BACKUP)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        end = time.monotonic() + 30
        while not any(p.stat().st_size > 200_000 for p in folder.glob(".*.part")):
            assert time.monotonic() < end, "the stream never reached the vault"
            time.sleep(0.05)
        for pid in _dom0_side(proc.pid):  # as systemd: every process of the unit at once
            with contextlib.suppress(ProcessLookupError):  # one that just ended
                os.kill(pid, sig)
        proc.communicate(timeout=30)
        end = time.monotonic() + 20
        while any(folder.glob(".*.part")) and time.monotonic() < end:
            time.sleep(0.1)
        assert not [p.name for p in folder.glob(".*.part")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert captures(world_dir) == [
        "evil; rm -rf ~",
        "pcap-20250831000000.pcap",
        "pcap-20250831001000.pcap",
        "pcap-20250831002000.pcap",
    ]


def test_stale_partial_files_are_removed_by_the_next_run(world):
    world_dir, env = world
    (world_dir / "vm" / "sys-vpn" / "root" / "netpcap").mkdir()  # a source with no files
    folder = world_dir / "vm" / "secrets-vault" / "home" / "NetLogs"
    folder.mkdir(parents=True)
    (folder / ".sys-dns-2025-08-30.tgz.part").write_bytes(b"x" * 1000)
    (folder / "sys-dns-2025-08-30.tgz").write_bytes(b"kept")
    for path in (folder, *folder.iterdir()):
        os.chown(path, 65534, 65534)  # the vault's default user's, as qvm-run writes them
    done = run_backup(env)
    assert done.returncode == 0, done.stderr
    assert "removed partial files" in done.stderr
    assert not any(n.endswith(".part") for n in vault_files(world_dir))
    assert (folder / "sys-dns-2025-08-30.tgz").read_bytes() == b"kept"


def _write_only_attribute() -> str | None:
    """A sysfs file even root cannot open for reading (kernfs: no read method)."""
    patterns = ("bus/*/drivers_probe", "bus/*/rescan", "fs/*/stats/*", "devices/*/*/rescan")
    for pattern in patterns:
        for path in sorted(Path("/sys").glob(pattern)):
            try:
                if not path.is_file() or (path.stat().st_mode & 0o777) != 0o200:
                    continue
                with path.open("rb") as f:  # never written: only opened to read
                    f.read(1)
            except OSError:
                return str(path)
    return None


def test_an_unreadable_capture_is_named_and_the_others_ship(world):
    """One capture root cannot read (tar's exit 2) no longer holds back the rest."""
    world_dir, env = world
    require_tool("unshare")
    attribute = _write_only_attribute()
    if attribute is None:
        pytest.skip("no write-only sysfs attribute to stand for an unreadable file")
    netpcap = world_dir / "vm" / "sys-dns" / "root" / "netpcap"
    for hour in (3, 4):
        (netpcap / f"pcap-2025083100{hour}000.pcap").write_bytes(bytes([hour]) * 1000)
    unreadable = netpcap / "pcap-20250831001000.pcap"
    # In a mount namespace of the run's own: nothing outside sees the mount.
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$1" "$2" && exec bash "$3"',
            "sh",
            attribute,
            str(unreadable),
            str(BACKUP),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "mount:" in done.stderr and "netlog-backup" not in done.stderr:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert done.returncode == 1
    assert "pcap-20250831001000.pcap" in done.stderr
    assert "unreadable" in done.stderr
    with tarfile.open(
        world_dir / "vm" / "secrets-vault" / "home" / "NetLogs" / f"sys-dns-{day}.tgz"
    ) as tar:
        assert tar.getnames() == [
            "pcap-20250831000000.pcap",
            "pcap-20250831002000.pcap",
            "pcap-20250831003000.pcap",
        ]
    assert captures(world_dir) == [
        "evil; rm -rf ~",
        "pcap-20250831001000.pcap",  # named, kept for a later night
        "pcap-20250831004000.pcap",  # being written
    ]
    assert fw_shipped(world_dir)


@pytest.mark.parametrize("bad", ["NETLOG_QUBE_SECONDS=0", "NETLOG_PCAP_MAX_BYTES=1e9"])
def test_a_bad_setting_is_one_clear_line(world, bad):
    world_dir, env = world
    add_settings(env, bad + "\n")
    done = run_backup(env)
    assert done.returncode == 2
    name, value = bad.split("=")
    assert done.stderr == f"netlog-backup: {name} must be a positive whole number, not '{value}'\n"
    assert vault_files(world_dir) == []


def test_the_documented_restore_keeps_a_hostile_archive_in_its_folder(tmp_path):
    """The archive's members are the capture qube's word: the documented
    `tar -xzf ... -C ~` wrote a member `.bashrc` into the work qube's home
    (run at its next terminal). The restore now extracts only tcpdump's own
    names, into a folder of its own."""
    doc = (ROOT / "docs" / "netlog.md").read_text()
    section = doc.split("## Restore a capture", 1)[1]
    inner = [line for line in section.splitlines() if line.startswith("qvm-run -p work '")]
    assert len(inner) == 1, inner
    command = inner[0].removeprefix("qvm-run -p work '").rsplit("'", 1)[0]
    command = command.split(" && tcpdump", 1)[0]  # tcpdump reads what was kept
    src, home = tmp_path / "src", tmp_path / "home"
    src.mkdir()
    home.mkdir()
    (src / ".bashrc").write_text("echo owned\n")
    (src / "pcap-20250831000000.pcap").write_bytes(b"p")
    with tarfile.open(home / "sys-vpn-2025-08-31.tgz", "w:gz") as tar:
        for name in (".bashrc", "pcap-20250831000000.pcap"):
            tar.add(src / name, arcname=name)
    done = subprocess.run(
        ["sh", "-c", command],
        env={**os.environ, "HOME": str(home)},
        capture_output=True,
        check=False,
    )
    assert not (home / ".bashrc").exists(), done.stderr
    assert [p.name for p in home.rglob("pcap-*.pcap")] == ["pcap-20250831000000.pcap"]


def test_a_qubes_stderr_reaches_dom0s_log_bounded_and_as_its_words(world):
    """qvm-run hands the qube's stderr to dom0's: the run's stderr, the unit's
    journal in dom0.  A hostile sys-dns wrote 64 MiB of it there (journald
    then rotates dom0's own logs away), terminal escapes (a run by hand
    in a dom0 terminal) and lines that read as the script's own, a forged
    success among them.  Now each call keeps 1 KiB and 4 lines of it, printable,
    each line said as the qube's, and drains the rest: the backup goes on."""
    world_dir, env = world
    forged = "netlog-backup: sys-dns: sys-dns-2099-01-01.tgz in secrets-vault:~/NetLogs"
    hostile_shell(
        world_dir,
        "sys-dns",
        f"printf '%s\\n\\033]0;owned\\007\\033[2J' '{forged}' >&2\n"
        "yes \"$(printf 'e%.0s' {1..4000})\" | head -c 64M >&2\n" + RUN_AS_ASKED,
    )
    (world_dir / "vm" / "sys-vpn" / "root" / "netpcap").mkdir()
    done = run_backup(env)
    assert done.returncode == 0, done.stderr[-2000:]
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"sys-dns-{day}.tgz" in vault_files(world_dir)
    assert len(done.stderr) < 16384, f"{len(done.stderr)} bytes of stderr in dom0"
    assert "\x1b" not in done.stderr
    assert "\x07" not in done.stderr
    lines = done.stderr.splitlines()
    assert forged not in lines
    assert all(line.startswith("netlog-backup: ") for line in lines), lines[:5]
    assert any(line.startswith("netlog-backup: sys-dns said: ") for line in lines)
