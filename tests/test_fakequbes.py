"""The fake Qubes commands answer as the real ones did in the recordings.

Each recorded run is replayed against the fake in a world built like the
recorded one: same argv in, same exit status and the same bytes out, or the
same *class* of bytes where the content depends on the recording host (the
handler's figures, usage texts, user names).  A few runs cannot be replayed
and say why.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import require_root
from fakequbes.recordings import RECORDINGS, Run, read, runs, world
from fakequbes.world import BIN, make_world, write_xid

USER = pwd.getpwuid(os.getuid()).pw_name

#: Services of the recording-only world in `work` (their output is recorded).
TEST_SERVICES = {
    "test.Ok": 'echo "ok arg=${1:-} user=$(id -un)"',
    "test.Echo": (
        'echo "arg=${1:-} full=$QREXEC_SERVICE_FULL_NAME remote=$QREXEC_REMOTE_DOMAIN'
        ' user=$(id -un)"; echo "to-stderr from test.Echo" >&2; exit 3'
    ),
    "test.Warn": 'echo "normal output"; echo "warning: something on stderr" >&2',
    "test.Env": (
        'echo "argv1=${1:-}"; echo "argc=$#"; env | grep "^QREXEC_" | grep -v AGENT_PID | sort'
    ),
    "test.Flood": "head -c 50000000 /dev/zero",
    "test.Signal": 'kill -TERM "$$"',
    "test.Kill": 'echo before-kill; kill -KILL "$$"',
}
NOT_REPLAYED = {
    "qrexec-agent not running": "needs the recorder's --agent-socket; sysmon never passes it",
    "the caller kills qrexec-client-vm": "the caller's kill is the test, not the fake's answer",
    "stream read for 10 s": "killed by the recorder after 10 s; its bytes are checked below",
}


def run_fake(
    argv: tuple[str, ...], env: dict[str, str], **kwargs: object
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(BIN / argv[0]), *argv[1:]],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def skip_reason(run: Run) -> str | None:
    return next((why for key, why in NOT_REPLAYED.items() if key in run.case), None)


def qrexec_world(root: Path, release: str) -> dict[str, str]:
    """The recorded world: its qubes and states, dom0's recorded replies, test services."""
    qubes = {name: state for name, (_, state) in world(release).items() if name != "dom0"}
    env = make_world(
        root,
        {"work": "healthy"},
        states=qubes,
        admin_list=read(f"admin.vm.List-{release}.bin"),
        release=release,
    )
    (root / "dom0" / "admin.vm.Stats").write_bytes(read(f"admin.vm.Stats-{release}.bin"))
    (root / "dom0" / "admin.vm.Stats@work-halted").write_bytes(
        read("admin.vm.Stats-halted-target.bin")
    )
    (root / "policy").write_text(
        "\n".join(["qubes.Metrics.Get", *TEST_SERVICES, "test.Missing", "test.Sleep"]) + "\n"
    )
    services = root / "services" / "work"
    services.mkdir(parents=True)
    for name, body in TEST_SERVICES.items():
        (services / name).write_text(f"#!/bin/sh\n{body}\n")
        (services / name).chmod(0o755)
    return env


def qrexec_cases() -> list[tuple[str, Run]]:
    """Every recorded call but those :data:`NOT_REPLAYED` says why."""
    recorded = [("4.2", r) for r in runs("qrexec-client-vm.json")]
    recorded += [("4.3", r) for r in runs("qrexec-client-vm-4.3.json")]
    return [(release, r) for release, r in recorded if skip_reason(r) is None]


class TestQrexecClientVm:
    @pytest.mark.parametrize(
        ("release", "run"), qrexec_cases(), ids=lambda v: v if isinstance(v, str) else v.case[:50]
    )
    def test_answers_as_recorded(self, tmp_path, release, run):
        """Exit status and bytes as the real qrexec-client-vm's."""
        env = qrexec_world(tmp_path / "world", release)
        got = run_fake(run.argv, env)
        assert got.returncode == run.exit, run.case
        expected_out = run.stdout.replace(b"user=root", f"user={USER}".encode())
        if run.argv[-1].startswith("qubes.Metrics.Get") and run.exit == 0:
            assert got.stdout.startswith(b"sys: protocol=1 ")  # the handler, this host's figures
        elif "--help" in run.argv or run.exit == 2:
            assert got.stdout.startswith(expected_out[:30])
            assert bool(got.stderr) == bool(run.stderr)
        elif "stdout_sha256" in run.extra:
            assert hashlib.sha256(got.stdout).hexdigest() == run.extra["stdout_sha256"]
        else:
            assert got.stdout == expected_out, run.case
        if "--help" not in run.argv and run.exit != 2:
            assert got.stderr == run.stderr, run.case

    def test_only_the_calls_that_cannot_be_replayed_are_left_out(self):
        """44 of 47 recorded calls are replayed; the 3 left out each say why."""
        recorded = runs("qrexec-client-vm.json") + runs("qrexec-client-vm-4.3.json")
        left_out = [r.case for r in recorded if skip_reason(r) is not None]
        assert len(left_out) == len(NOT_REPLAYED) == 3
        assert len(qrexec_cases()) == len(recorded) - 3

    @pytest.mark.parametrize("release", ["4.2", "4.3"])
    def test_the_stats_stream_is_the_recorded_one(self, tmp_path, release):
        """dom0's admin.vm.Stats: the recorded stream, byte for byte."""
        env = qrexec_world(tmp_path / "world", release)
        got = run_fake(("qrexec-client-vm", "--", "dom0", "admin.vm.Stats"), env)
        assert got.stdout == read(f"admin.vm.Stats-{release}.bin")


class TestQvmCopyToVm:
    def test_the_ten_recorded_copies_in_order(self, tmp_path):
        """Exit statuses (17 for a name already there), messages, and what lands."""
        env = make_world(tmp_path / "world", {})
        (tmp_path / "world" / "vault").mkdir()
        (tmp_path / "world" / "vault" / "name").write_text("secrets-vault\n")
        home = tmp_path / "home"
        (home / "Monitor-archives" / "sub").mkdir(parents=True)
        (home / "Monitor-archives" / "monitor-2026-11-23.tgz").write_bytes(b"x" * 2052)
        (home / "Monitor-archives" / "sub" / "a.csv").write_bytes(b"a,b\n1,2\n")
        incoming = tmp_path / "world" / "vault" / "home"
        for run in runs("qvm-copy-to-vm.json"):
            got = run_fake(run.argv, env, cwd=home)
            assert (got.returncode, got.stdout, got.stderr) == (
                run.exit,
                run.stdout,
                run.stderr,
            ), run.case
            assert vault_listing(incoming) == [
                (e["path"], e["type"], e["mode"]) for e in run.extra["vault_after"]
            ], run.case


def vault_listing(home: Path) -> list[tuple[str, str, str]]:
    listing = []
    for path in sorted(home.rglob("*")):
        mode = oct(stat.S_IMODE(path.stat().st_mode))
        kind = "dir" if path.is_dir() else "file"
        listing.append(("~/" + str(path.relative_to(home)), kind, mode))
    return listing


def qvm_run_world(root: Path) -> tuple[dict[str, str], int]:
    """sys-dns with a tcpdump-owned 0750 capture folder, a halted and a paused qube."""
    env = make_world(root, {})
    uid = 65534
    for name, state in {
        "sys-dns": "Running",
        "secrets-vault": "Running",
        "work-halted": "Halted",
        "personal": "Paused",
    }.items():
        (root / "vm" / name / "root").mkdir(parents=True)
        (root / "vm" / name / "state").write_text(state + "\n")
        (root / "vm" / name / "uid").write_text(f"{uid}\n")
    captures = root / "vm" / "sys-dns" / "root" / "var" / "log" / "netpcap"
    captures.mkdir(parents=True)
    for hour in ("20261123220000", "20261123230000", "20261124000000"):
        (captures / f"pcap-{hour}.pcap").touch()
    # Owned by another unprivileged user (tcpdump's stand-in), mode 0750.
    os.chown(captures, 65533, 65533)
    captures.chmod(0o750)
    return env, uid


class TestQvmRun:
    @pytest.mark.parametrize("run", runs("qvm-run.json"), ids=lambda r: r.case[:50])
    def test_answers_as_recorded(self, public_tmp, run):
        """Default user unless --user, --no-autostart, --pass-io, exit statuses."""
        require_root("running a qube's command as its unprivileged default user")
        env, uid = qvm_run_world(public_tmp / "world")
        netpcap = public_tmp / "world" / "vm" / "sys-dns" / "root" / "var" / "log" / "netpcap"
        # Absolute paths inside the qube are relocated into the world.
        argv = tuple(a.replace("/var/log/netpcap", str(netpcap)) for a in run.argv)
        stdin = (
            hashlib.sha256(b"seed").digest() * (300_000 // 32)
            if run.extra.get("stdin_len") == 300_000
            else bytes(range(256)) * 4
            if run.extra.get("stdin_len") == 1024
            else b""
        )
        if "stdin_len" in run.extra:
            stdin = stdin[: run.extra["stdin_len"]]
            assert hashlib.sha256(stdin).hexdigest() == run.extra["stdin_sha256"]
        got = run_fake(argv, env, input=stdin)
        assert got.returncode == run.exit, run.case
        default_user = pwd.getpwuid(uid).pw_name
        expected = run.stdout.replace(b"user\n1001\n", f"{default_user}\n{uid}\n".encode())
        if run.argv[-2:] == ("id", "-un"):
            expected = f"{default_user}\n".encode()
        stderr = run.stderr.replace(b"/var/log/netpcap", str(netpcap).encode())
        assert got.stdout == expected, run.case
        assert got.stderr == stderr, run.case


class TestQubesdbRead:
    # qubesdb-read's \\xNN escaping of a value is not modelled: sysmon reads /name only.
    @pytest.mark.parametrize(
        "run",
        [r for r in runs("qubesdb-read.json") if r.argv != ("qubesdb-read", "/qubes-test-ctl")],
        ids=lambda r: r.case[:50],
    )
    def test_answers_as_recorded(self, tmp_path, run):
        """A missing key exits 2, a bad path 1, no daemon 1."""
        root = tmp_path / "world"
        daemon = "not running" not in run.case
        env = make_world(root, {}, self_name="sys-monitor" if daemon else None)
        if daemon:
            (root / "qubesdb" / "qubes-service").mkdir(parents=True)
            (root / "qubesdb" / "qubes-vm-type").write_text("AppVM\n")
            (root / "qubesdb" / "qubes-service" / "sysmon").write_text("1\n")
            (root / "qubesdb" / "qubes-test-ctl").write_bytes(b"a\x01b\x7fc\xc3\xa9\n")
        got = run_fake(run.argv, env)
        assert got.returncode == run.exit, run.case
        assert got.stdout == run.stdout, run.case
        if run.argv == ("qubesdb-read",):
            assert got.stderr.startswith(b"Usage: qubesdb-read")
        else:
            assert got.stderr == run.stderr, run.case


#: The recorded world's Xen ids (tests/fixtures/qubes/README.md).
RECORDED_XIDS = {"sys-monitor": 2, "work": 3, "nohandler": 4, "personal": 5}
RECORDED_XIDS |= {"secrets-vault": 6, "sys-dns": 7, "disp1234": 8}


def xid_cases() -> list[tuple[str, dict[str, object]]]:
    """Each recorded qubesd reply that a call through qrexec from sys-monitor reaches."""
    cases = []
    for release in ("4.2", "4.3"):
        name = f"admin.vm.property.Get-xid-{release}.json"
        for entry in json.loads((RECORDINGS / name).read_text()):
            # A name dom0 does not know reaches qubesd as @default (the
            # recording's next case); a call from another qube is not ours.
            if entry["target"] == "no-such-qube" or entry["source"] != "sys-monitor":
                continue
            if "no admin.vm.property.Get" in entry["case"]:
                continue
            cases.append((release, entry))
    return cases


class TestXid:
    @pytest.mark.parametrize(
        ("release", "entry"), xid_cases(), ids=lambda v: v if isinstance(v, str) else v["case"][:50]
    )
    def test_answers_as_qubesd_did_where_the_policy_lets_the_call_through(
        self, tmp_path, release, entry
    ):
        """The shipped policy's line lets a property.Get+xid of any qube but dom0
        and the vault through, to qubesd's recorded bytes; the rest is refused."""
        qubes = {name: state for name, (_, state) in world(release).items() if name != "dom0"}
        env = make_world(tmp_path / "world", {}, states=qubes, release=release, xids=RECORDED_XIDS)
        target = "no-such-qube" if entry["target"] == "@default" else str(entry["target"])
        ident = f"{entry['method']}+{entry['arg']}" if entry["arg"] else f"{entry['method']}+"
        got = run_fake(("qrexec-client-vm", "--", target, ident), env)
        refused = (
            entry["target"] in {"dom0", "@adminvm", "secrets-vault"}
            or entry["arg"] != "xid"
            or entry["method"] != "admin.vm.property.Get"
        )
        if refused:
            assert (got.returncode, got.stderr) == (126, b"Request refused\n"), entry["case"]
        else:
            assert got.returncode == 0, entry["case"]
            assert got.stdout == bytes.fromhex(str(entry["reply_hex"])), entry["case"]

    def test_a_restart_gives_the_new_id(self, tmp_path):
        """The world's id of a qube is what qubesd answers at each call."""
        env = make_world(tmp_path / "world", {"work": "healthy"}, xids={"work": 3})
        argv = ("qrexec-client-vm", "--", "work", "admin.vm.property.Get+xid")
        assert run_fake(argv, env).stdout == b"0\x00default=True type=int 3"
        write_xid(tmp_path / "world", "work", 11)
        assert run_fake(argv, env).stdout == b"0\x00default=True type=int 11"
