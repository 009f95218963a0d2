"""What a user installs: the packages of ``make packages``, read and installed from dist/.

The contents are read from the built .deb and .rpm files; the .debs are
installed into fresh Debian 12 and 13 roots (.ci/run builds them with
debootstrap, Debian's mirror their only source), run there, upgraded and
purged.  Nothing here reads the checkout's copy of what it tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from artefacts import (
    PACKAGES,
    RELEASES,
    apt_get,
    debian_root,
    debs,
    dist,
    in_root,
    purge_all,
    rpm,
    unpack_formula_tarball,
    unpack_rpm,
)
from conftest import ASK_AGENT, FIXTURES, HANDLER, ROOT, require_tool, wait_listening
from fakequbes.world import make_world
from handler_run import run_handler

pytestmark = pytest.mark.slow
#: The agent sysmon-handler carries beside the handler (docs/deploy.md).
AGENT = ROOT / "handler" / "sysmon-agent"


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True
    ).stdout.strip()


def deb_files(deb: Path) -> dict[str, str]:
    """Path (without the leading ``.``) to its mode string, for every entry."""
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[5].removeprefix("."): line.split()[0] for line in listing.splitlines()}


def deb_member(deb: Path, path: str) -> bytes:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    return subprocess.run(
        ["tar", "-xO", f".{path}"], input=tar.stdout, capture_output=True, check=True
    ).stdout


def deb_control(deb: Path, member: str) -> str:
    done = subprocess.run(
        ["dpkg-deb", "-I", str(deb), member], capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else ""


def by_name(release: str, *, upgrade: bool = False) -> dict[str, Path]:
    return {p.name.split("_")[0]: p for p in debs(release, upgrade=upgrade)}


def unit_dir(files: dict[str, str]) -> str:
    """Debian 12's debhelper installs units in /lib, 13's in /usr/lib."""
    return (
        "/usr/lib/systemd/system"
        if any(f.startswith("/usr/lib/systemd") for f in files)
        else ("/lib/systemd/system")
    )


class TestDebContents:
    @pytest.mark.parametrize("release", RELEASES)
    def test_sysmon_carries_the_daemon_unit_conffile_man_page_and_completion(self, release):
        deb = by_name(release)["sysmon"]
        files = deb_files(deb)
        assert deb_field(deb, "Architecture") == "all"
        assert files["/usr/bin/sysmon"].startswith("-rwx")
        assert f"{unit_dir(files)}/sysmon.service" in files
        assert "/usr/share/man/man1/sysmon.1.gz" in files
        assert "/usr/share/bash-completion/completions/sysmon" in files
        assert "/usr/lib/python3/dist-packages/sysmon/cli.py" in files
        assert deb_control(deb, "conffiles").split() == ["/etc/sysmon/sysmon.toml"]
        assert (
            deb_member(deb, "/etc/sysmon/sysmon.toml") == (ROOT / "config/sysmon.toml").read_bytes()
        )

    @pytest.mark.parametrize("release", RELEASES)
    def test_sysmon_depends_on_debians_libraries_at_the_stated_floors(self, release):
        """Depends names Debian's python3-* at pyproject's floors (the README's versions)."""
        deb = by_name(release)["sysmon"]
        depends = {
            m["name"]: m["version"]
            for m in re.finditer(
                r"(?P<name>[\w.+:-]+)(?: \((?P<version>[^)]*)\))?", deb_field(deb, "Depends")
            )
        }
        floors = {}
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
            project, _, floor = dep.partition(">=")
            floors[project] = floor
        debian_name = {
            "trio": "python3-trio",
            "attrs": "python3-attr",
            "structlog": "python3-structlog",
            "python-dateutil": "python3-dateutil",
        }
        for project, floor in floors.items():
            assert depends[debian_name[project]] == f">= {floor}", (project, depends)
        assert set(depends) - {*debian_name.values(), "python3:any"} == set(), depends
        recommends = deb_field(deb, "Recommends")
        assert "python3-pandas" in recommends
        assert "python3-matplotlib" in recommends

    @pytest.mark.parametrize("release", RELEASES)
    def test_the_handler_package_is_the_handler_and_its_awk(self, release):
        deb = by_name(release)["sysmon-handler"]
        files = deb_files(deb)
        assert files["/etc/qubes-rpc/qubes.Metrics.Get"] == "-rwxr-xr-x"
        assert deb_member(deb, "/etc/qubes-rpc/qubes.Metrics.Get") == HANDLER.read_bytes()
        assert deb_field(deb, "Depends") == "mawk, python3"
        assert deb_field(deb, "Recommends") == "python3-systemd"

    @pytest.mark.parametrize("release", RELEASES)
    def test_the_handler_package_carries_the_agent_and_its_units(self, release):
        """The agent, executable where its unit runs it, and both units as written."""
        deb = by_name(release)["sysmon-handler"]
        files = deb_files(deb)
        assert files["/usr/lib/sysmon-handler/sysmon-agent"] == "-rwxr-xr-x"
        assert deb_member(deb, "/usr/lib/sysmon-handler/sysmon-agent") == AGENT.read_bytes()
        for unit in ("sysmon-agent.socket", "sysmon-agent.service"):
            installed = deb_member(deb, f"{unit_dir(files)}/{unit}")
            assert installed == (ROOT / "systemd" / unit).read_bytes(), unit

    @pytest.mark.parametrize("release", RELEASES)
    def test_the_netlog_package_has_its_scripts_units_and_settings(self, release):
        deb = by_name(release)["sysmon-netlog"]
        files = deb_files(deb)
        units = unit_dir(files)
        for path in (
            "/usr/lib/netlog/netpcap-capture",
            "/usr/lib/netlog/netpcap-prune",
            "/usr/lib/netlog/qubes-firewall-user-script",
        ):
            assert files[path].startswith("-rwx"), path
        for path in (
            f"{units}/netpcap.service",
            f"{units}/netpcap-prune.timer",
            "/etc/netlog/netpcap.conf",
            "/etc/qubes-bind-dirs.d/50_netlog.conf",
        ):
            assert path in files, path
        assert set(deb_field(deb, "Depends").split(", ")) == {"tcpdump", "nftables"}

    @pytest.mark.parametrize("release", RELEASES)
    def test_maintainer_scripts_touch_only_our_units(self, release):
        """dpkg may start or restart sysmon's and netlog's own units, nothing else."""
        for name, deb in by_name(release).items():
            scripts = "".join(deb_control(deb, s) for s in ("postinst", "prerm", "postrm"))
            touched = set(re.findall(r"([\w@.-]+\.(?:service|timer))", scripts))
            allowed = {
                "sysmon": {"sysmon.service"},
                "sysmon-handler": {"sysmon-agent.socket", "sysmon-agent.service"},
                "sysmon-netlog": {
                    "netpcap.service",
                    "netpcap-prune.service",
                    "netpcap-prune.timer",
                },
            }[name]
            assert touched <= allowed, (name, touched)


def rpm_query(name: str, what: str) -> str:
    """``rpm -qp WHAT`` of the built package ``name``."""
    return subprocess.run(
        ["rpm", "-qp", what, str(rpm(name))], capture_output=True, text=True, check=True
    ).stdout


class TestRpms:
    def test_file_lists(self):
        def listing(name: str) -> list[str]:
            return rpm_query(name, "--list").split()

        handler = listing("sysmon-handler")
        assert {
            "/etc/qubes-rpc/qubes.Metrics.Get",
            "/usr/lib/sysmon-handler/sysmon-agent",
            "/usr/lib/systemd/system/sysmon-agent.socket",
            "/usr/lib/systemd/system/sysmon-agent.service",
            "/usr/lib/systemd/system-preset/70-sysmon-handler.preset",
        } <= set(handler)
        netlog = listing("sysmon-netlog")
        assert {
            "/usr/lib/netlog/netpcap-capture",
            "/usr/lib/systemd/system/netpcap.service",
            "/etc/netlog/netpcap.conf",
            "/etc/qubes-bind-dirs.d/50_netlog.conf",
        } <= set(netlog)
        dom0 = listing("sysmon-dom0")
        formula = "/srv/formulas/base/sysmon-formula/qubes/monitor"
        assert "/etc/salt/minion.d/formula-sysmon.conf" in dom0
        for path in (
            "sys-monitor.sls",
            "template-monitor.sls",
            "files/30-sysmon.policy.jinja",
            "files/qubes-netlogs-backup",
            "files/qubes-netlogs-backup.timer",
            "packages.yaml",
        ):
            assert f"{formula}/{path}" in dom0, path

    def test_requires(self):
        def requires(name: str) -> set[str]:
            out = rpm_query(name, "--requires")
            return {
                line.split()[0]
                for line in out.splitlines()
                if not line.startswith(("rpmlib(", "config("))
            }

        assert {"mawk", "python3"} <= requires("sysmon-handler")
        recommends = rpm_query("sysmon-handler", "--recommends").split()
        assert recommends == ["python3-systemd"]
        assert {"tcpdump", "nftables"} <= requires("sysmon-netlog")
        # The template packages riding in the formula add nothing to dom0's needs.
        assert requires("sysmon-dom0") <= {"qubes-mgmt-salt", "/bin/sh"}

    def test_the_handler_runs_from_the_rpm_payload(self, tmp_path):
        """The Fedora package's handler, as unpacked, gives the recorded output."""
        require_tool("mawk")
        payload = unpack_rpm(rpm("sysmon-handler"), tmp_path / "root")
        handler = payload / "etc/qubes-rpc/qubes.Metrics.Get"
        assert handler.stat().st_mode & 0o777 == 0o755
        out = run_handler(
            "qrexec",
            proc_root=FIXTURES / "proc" / "odd-snmp",
            journal_dir=tmp_path,
            handler=handler,
        )
        assert out == (FIXTURES / "golden" / "odd-snmp.txt").read_bytes()

    def test_the_agent_and_its_units_in_the_rpm_payload(self, tmp_path):
        """The Fedora package's agent is executable, its units are as written, and
        its preset enables the socket (Fedora presets units it does not know as
        disabled; the socket's condition keeps it off where the service is off)."""
        payload = unpack_rpm(rpm("sysmon-handler"), tmp_path / "root")
        agent = payload / "usr/lib/sysmon-handler/sysmon-agent"
        assert agent.stat().st_mode & 0o777 == 0o755
        assert agent.read_bytes() == AGENT.read_bytes()
        for unit in ("sysmon-agent.socket", "sysmon-agent.service"):
            installed = payload / "usr/lib/systemd/system" / unit
            assert installed.read_bytes() == (ROOT / "systemd" / unit).read_bytes(), unit
        preset = payload / "usr/lib/systemd/system-preset/70-sysmon-handler.preset"
        assert preset.read_text().split("\n") == ["enable sysmon-agent.socket", ""]

    def test_the_rpm_presets_the_socket_and_restarts_only_the_agent(self):
        """A first install presets the socket; an upgrade restarts the agent, never
        its socket (made anew under a running agent, it would not be the one the
        agent holds); a removal disables and stops both."""
        scripts = rpm_query("sysmon-handler", "--scripts")
        parts = dict(
            re.findall(
                r"^(\w+) scriptlet \(using /bin/sh\):\n(.*?)(?=^\w+ scriptlet|\Z)",
                scripts,
                re.MULTILINE | re.DOTALL,
            )
        )
        commands = {
            part: [line for line in text.splitlines() if line and not line.startswith("#")]
            for part, text in parts.items()
        }
        assert "preset sysmon-agent.socket" in " ".join(commands["postinstall"])
        assert "disable --now sysmon-agent.socket sysmon-agent.service" in " ".join(
            commands["preuninstall"]
        )
        (postun,) = commands["postuninstall"]
        assert "restart sysmon-agent.service" in postun
        assert "sysmon-agent.socket" not in postun
        # An upgrade from a version without the agent presets the socket once.
        triggers = rpm_query("sysmon-handler", "--triggers")
        head, _, body = triggers.partition("\n")
        assert head.startswith("triggerun scriptlet (using /bin/sh) -- sysmon-handler < 0.2.0")
        assert "systemctl --no-reload preset sysmon-agent.socket" in body

    def test_the_dom0_payload_is_real_files_and_carries_the_template_packages(self, tmp_path):
        payload = unpack_rpm(rpm("sysmon-dom0"), tmp_path / "root")
        formula = payload / "srv/formulas/base/sysmon-formula"
        assert [p for p in payload.rglob("*") if p.is_symlink()] == []
        carried = {p.name: p.read_bytes() for p in (formula / "qubes/monitor/packages").iterdir()}
        built = {
            p.name: p.read_bytes()
            for p in [*debs("12"), rpm("sysmon-handler"), rpm("sysmon-netlog")]
        }
        assert carried == built
        conf = (payload / "etc/salt/minion.d/formula-sysmon.conf").read_text()
        assert "/srv/formulas/base/sysmon-formula" in conf

    def test_the_developers_tarball_is_the_same_formula(self, tmp_path):
        """dist/sysmon-formula.tar.gz (the from-a-checkout path) holds what the RPM holds."""
        rpm_tree = (
            unpack_rpm(rpm("sysmon-dom0"), tmp_path / "rpm") / "srv/formulas/base/sysmon-formula"
        )
        tar_tree = unpack_formula_tarball(tmp_path / "tar")

        def files(tree: Path) -> dict[str, bytes]:
            return {
                str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()
            }

        assert files(tar_tree) == files(rpm_tree)
        assert [p for p in tar_tree.rglob("*") if p.is_symlink()] == []


# --- Installed into fresh Debian roots ----------------------------------------


def root_debs(root: Path, release: str, *, upgrade: bool = False) -> list[str]:
    """The .debs as paths inside ``root`` (it sees this checkout and /tmp at the same paths)."""
    paths = [str(p) for p in debs(release, upgrade=upgrade)]
    for path in paths:
        assert (root / path.lstrip("/")).is_file(), f"{path} not visible in {root}"
    return paths


@pytest.fixture(name="clean_root", params=RELEASES)
def _clean_root(request):
    """A Debian root without any sysmon package, before and after the test."""
    dist()
    root = debian_root(request.param)
    purge_all(root)
    yield request.param, root
    purge_all(root)


def snapshot(root: Path) -> set[str]:
    """Every path in ``root`` outside what apt and dpkg keep about themselves."""
    pruned = (
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        str(ROOT),
        "/var/cache/apt",
        "/var/lib/apt",
        "/var/lib/dpkg",
        "/var/log",
        "/var/cache/debconf",
        "/var/cache/man",
    )
    prune = [arg for path in pruned for arg in ("-path", path, "-prune", "-o")]
    found = in_root(root, ["find", "/", "-xdev", *prune, "-print"])
    assert found.returncode == 0, found.stderr
    return set(found.stdout.splitlines())


def test_installed_sysmon_polls_through_the_installed_handler(clean_root, tmp_path):
    """apt-get resolves everything from Debian; /usr/bin/sysmon once polls the fake
    world through /etc/qubes-rpc/qubes.Metrics.Get as installed; the units verify."""
    release, root = clean_root
    apt_get(root, "install", *root_debs(root, release))
    version = in_root(root, ["/usr/bin/sysmon", "--version"])
    assert version.returncode == 0, version.stderr
    world = tmp_path / "world"
    env = make_world(world, {"work": "healthy", "denied": "refused"})
    (world / "handler").write_text("/etc/qubes-rpc/qubes.Metrics.Get")
    out = tmp_path / "out"
    done = in_root(
        root,
        ["/usr/bin/sysmon", "once", "--out-dir", str(out)],
        env={
            "SYSMON_FAKE_WORLD": env["SYSMON_FAKE_WORLD"],
            "PATH": f"{ROOT}/tests/fakequbes/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        },
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 qubes polled: 1 ok, 1 not ok" in done.stdout
    (day,) = [p for p in out.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert ",work," in (day / "system.csv").read_text()
    listed = in_root(root, ["dpkg", "-L", *PACKAGES]).stdout.split()
    units = [path for path in listed if path.endswith((".service", ".socket", ".timer"))]
    assert len(units) == 6, units
    verify = in_root(root, ["systemd-analyze", "verify", *units])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The agent's socket is enabled (its condition keeps it off where the
    # service is off); the agent itself starts only through it.
    wants = root / "etc/systemd/system/sockets.target.wants"
    assert (wants / "sysmon-agent.socket").is_symlink()
    assert not list((root / "etc/systemd/system").rglob("sysmon-agent.service"))
    man = in_root(root, ["sh", "-c", "zcat /usr/share/man/man1/sysmon.1.gz | head -n 5"])
    assert "sysmon \\- metrics" in man.stdout


def test_the_installed_agent_answers_as_the_installed_handler(clean_root, tmp_path):
    """The agent as installed, run by the python3 apt resolved, as root with only
    CAP_DAC_READ_SEARCH and no new privileges (as its unit runs it), answers through its
    socket byte for byte as the installed handler: a fast poll by itself, a full
    one (no cursor) through /etc/qubes-rpc/qubes.Metrics.Get."""
    release, root = clean_root
    apt_get(root, "install", *root_debs(root, release))
    tree = FIXTURES / "proc" / "odd-snmp"
    (tmp_path / "journal").mkdir()
    env = {
        "SYSMON_PROC_ROOT": str(tree),
        "SYSMON_DF_FIXTURE": str(tree / "df.txt"),
        "SYSMON_JOURNAL_DIR": str(tmp_path / "journal"),
        "PATH": f"{ROOT}/tests/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",
    }
    sock = tmp_path / "qubes.Metrics.Get"
    agent = subprocess.Popen(
        [
            "chroot",
            str(root),
            "setpriv",
            "--bounding-set=-all,+dac_read_search",
            "--inh-caps=-all",
            "--no-new-privs",
            "/usr/bin/env",
            "-i",
            *(f"{key}={value}" for key, value in env.items()),
            "systemd-socket-activate",
            "-l",
            str(sock),
            *(f"--setenv={key}={value}" for key, value in env.items()),
            "/usr/lib/sysmon-handler/sysmon-agent",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(sock, agent)
        for argument in ("nodisk.noalerts.", ""):
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(30)
                conn.connect(str(sock))
                service = "qubes.Metrics.Get" + (f"+{argument}" if argument else "")
                conn.sendall(f"{service} sys-monitor\0".encode())
                conn.shutdown(socket.SHUT_WR)
                answer = b""
                while chunk := conn.recv(65536):
                    answer += chunk
            handler = in_root(
                root,
                ["/etc/qubes-rpc/qubes.Metrics.Get", *([argument] if argument else [])],
                env=env,
            )
            assert handler.returncode == 0, handler.stderr
            assert handler.stdout.startswith("sys: protocol=1 "), handler.stdout
            assert answer.decode() == handler.stdout, argument
    finally:
        agent.kill()
        _, err = agent.communicate(timeout=20)
    assert b"sysmon-agent:" not in err, err


class Booted:
    """A Debian root booted by systemd-nspawn with systemd as its PID 1.

    ``--volatile=overlay`` writes to a tmpfs over the root, so the root (where
    the Debian 13 suite runs meanwhile) is left as it was; in a mount namespace
    of its own, with a tmpfs on /run/systemd for nspawn's own files (the host
    has no systemd of its own, and nspawn will not clean up what is not one).
    """

    def __init__(self, root: Path, log: Path) -> None:
        nspawn = require_tool("systemd-nspawn")
        require_tool("nsenter")
        script = (
            "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && "
            'exec "$0" -q -D "$1" --volatile=overlay --boot --register=no --keep-unit '
            "--private-network --console=read-only --machine=sysmon-agent-test"
        )
        self.log = log
        with log.open("wb") as console:
            self.nspawn = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    script,
                    nspawn,
                    root,
                ],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
            )
        self.leader = 0
        try:
            self.leader = self._leader()
            deadline = time.monotonic() + 120
            while True:  # systemctl waits for the boot once systemd listens for it
                running = self.run(["systemctl", "is-system-running", "--wait"], timeout=120)
                # Before that: "Failed to connect to bus" (systemd 252), "... to system
                # scope bus" (257), or, before PID 1 has made /run/systemd/system,
                # "offline" (sd_booted() is false: seen in CI under load).
                early = "Failed to connect to" in running.stderr or running.stdout == "offline\n"
                if not early or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert running.stdout.strip() in ("running", "degraded"), self.failed(running)
        except BaseException:
            self.kill()
            raise

    def _leader(self) -> int:
        """The container's PID 1, as the host numbers it: nspawn's child running systemd."""
        deadline = time.monotonic() + 60
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        while time.monotonic() < deadline:
            assert self.nspawn.poll() is None, self.log.read_text(errors="replace")
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            time.sleep(0.05)
        raise AssertionError(f"no systemd in the container: {self.log.read_text()}")

    def run(
        self, argv: list[str], *, stdin: str = "", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in every namespace of the container, as root."""
        return subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.leader),
                "-a",
                "/usr/bin/env",
                "-i",
                "LANG=C.UTF-8",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                *argv,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        done = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in properties)])
        assert done.returncode == 0, self.failed(done)
        return dict(line.split("=", 1) for line in done.stdout.splitlines())

    def failed(self, done: subprocess.CompletedProcess[str]) -> str:
        journal = self.run(["journalctl", "--no-pager", "-n", "40"]).stdout
        return f"{done.args}: {done.returncode}\n{done.stdout}{done.stderr}\n{journal}"

    def close(self) -> None:
        self.run(["systemctl", "poweroff", "--no-block"])
        try:
            self.nspawn.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """The container's PID 1 killed, and with it everything in its PID namespace."""
        if self.leader:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        self.nspawn.kill()
        self.nspawn.wait(timeout=20)


#: The agent's socket in the container.
SOCKET = "/run/qubes-rpc/qubes.Metrics.Get"


def shape(answer: str) -> list[str]:
    """An answer with every number as 0: what two polls a moment apart share."""
    return [re.sub(r"\d+", "0", line) for line in answer.splitlines()]


def test_the_agent_under_systemd_as_pid_1(clean_root, tmp_path):
    """The installed units under a real systemd, booted in the Debian root: the
    socket is enabled but stays off until the qube's sysmon-agent service is on;
    then it listens at qrexec 4.3's path for group qubes, starts the agent on the
    first poll and keeps that one process, sandboxed as its unit says, answering
    as the installed handler does, its fallback (a new journal notice) included;
    stopping the socket removes it, and so does a crash loop."""
    release, root = clean_root
    apt_get(root, "install", *root_debs(root, release))
    booted = Booted(root, tmp_path / "console.log")
    try:
        assert booted.show("sysmon-agent.socket", "UnitFileState", "ActiveState") == {
            "UnitFileState": "enabled",
            "ActiveState": "inactive",
        }
        for argv in (
            ["groupadd", "--system", "qubes"],  # Qubes' templates have it
            ["mkdir", "-p", "/run/qubes-service"],
            ["touch", "/run/qubes-service/sysmon-agent"],  # what qvm-service does at boot
            ["systemctl", "start", "sysmon-agent.socket"],
        ):
            done = booted.run(argv)
            assert done.returncode == 0, booted.failed(done)
        listing = booted.run(["stat", "-c", "%A %U %G", SOCKET])
        assert listing.stdout.split() == ["srw-rw----", "root", "qubes"], booted.failed(listing)

        pids: set[str] = set()
        for argument in ("nodisk.noalerts.", "noalerts.", "nodisk.noalerts."):
            answer = booted.run(["python3", "-c", ASK_AGENT, SOCKET, argument])
            assert answer.returncode == 0, booted.failed(answer)
            handler = booted.run(["/etc/qubes-rpc/qubes.Metrics.Get", argument])
            assert answer.stdout.startswith("sys: protocol=1 "), booted.failed(answer)
            assert shape(answer.stdout) == shape(handler.stdout), argument
            pids.add(booted.show("sysmon-agent.service", "MainPID")["MainPID"])
        (pid,) = pids  # one agent for every poll
        unit = booted.show("sysmon-agent.service", "ActiveState", "NRestarts", "TasksMax")
        assert unit == {"ActiveState": "active", "NRestarts": "0", "TasksMax": "64"}
        status = dict(
            line.split(":\t", 1)
            for line in booted.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines()
            if ":\t" in line
        )
        assert status["Uid"].split()[0] == "0"
        assert int(status["CapBnd"], 16) == 1 << 2  # CAP_DAC_READ_SEARCH alone
        assert int(status["CapEff"], 16) == 1 << 2
        assert status["NoNewPrivs"].strip() == "1"
        assert status["Seccomp"].strip() == "2"

        # Something new in the journal: the agent hands the poll to the handler,
        # which runs awk and journalctl inside the unit's sandbox.
        assert booted.run(["logger", "-p", "user.warning", "sysmon agent test"]).returncode == 0
        boot_id = booted.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()
        since = int((time.time() - 300) * 1e6)
        cursor = f"nodisk.{boot_id.replace('-', '')[:16]}.{since}.0"
        answer = booted.run(["python3", "-c", ASK_AGENT, SOCKET, cursor])
        handler = booted.run(["/etc/qubes-rpc/qubes.Metrics.Get", cursor])
        alerts = [line for line in answer.stdout.splitlines() if line.startswith("alert:")]
        assert alerts == [
            line for line in handler.stdout.splitlines() if line.startswith("alert:")
        ], booted.failed(answer)
        assert alerts[-1].endswith(": sysmon agent test"), alerts
        assert booted.show("sysmon-agent.service", "MainPID")["MainPID"] == pid

        done = booted.run(["systemctl", "stop", "sysmon-agent.socket", "sysmon-agent.service"])
        assert done.returncode == 0, booted.failed(done)
        gone = booted.run(["test", "-e", SOCKET])
        assert gone.returncode == 1

        # A crash loop: restarted after each kill, the agent fails its 6th start in a
        # minute, systemd fails the socket and removes its file, and qrexec goes on
        # to the per-call handler (docs/deploy.md).
        done = booted.run(["systemctl", "start", "sysmon-agent.socket"])
        assert done.returncode == 0, booted.failed(done)
        for _ in range(8):
            if booted.show("sysmon-agent.socket", "ActiveState")["ActiveState"] == "failed":
                break
            booted.run(
                ["python3", "-c", ASK_AGENT, SOCKET, "nodisk.noalerts."]
            )  # starts it if need be
            booted.run(["systemctl", "kill", "--signal=KILL", "sysmon-agent.service"])
            time.sleep(0.5)  # the restart (RestartSec= 100 ms)
        socket_unit = booted.show("sysmon-agent.socket", "ActiveState", "Result")
        assert socket_unit == {"ActiveState": "failed", "Result": "service-start-limit-hit"}
        gone = booted.run(["test", "-e", SOCKET])
        assert gone.returncode == 1, "a failed socket must not be left for qrexec to connect to"
    finally:
        booted.close()


def test_an_upgrade_keeps_the_edited_conffile_and_the_data(clean_root, tmp_path):
    """A newer build over the old one: the user's sysmon.toml and the day files stay,
    and dpkg asks to restart sysmon's own unit, nothing else."""
    release, root = clean_root
    apt_get(root, "install", *root_debs(root, release))
    conf = root / "etc/sysmon/sysmon.toml"
    edited = conf.read_text() + 'vault = "my-vault"\n'
    conf.write_text(edited)
    data = root / "home/user/Monitor/2026-12-05/system.csv"
    data.parent.mkdir(parents=True)
    data.write_text("ts,vm\n")
    # dpkg's unit actions go through policy-rc.d: record them, allow none.
    log = tmp_path / "invoked"
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 101\n')
    policy.chmod(0o755)
    systemd_dir = root / "run/systemd/system"
    systemd_dir.mkdir(parents=True, exist_ok=True)
    try:
        apt_get(root, "install", *root_debs(root, release, upgrade=True))
    finally:
        policy.unlink()
        systemd_dir.rmdir()
    assert conf.read_text() == edited
    assert data.read_text() == "ts,vm\n"
    version = in_root(root, ["dpkg-query", "-W", "-f=${Version}", "sysmon"]).stdout
    assert version == deb_field(by_name(release, upgrade=True)["sysmon"], "Version")
    invoked = (
        {tuple(line.split()) for line in log.read_text().splitlines()} if log.exists() else set()
    )
    units = {unit for unit, *_ in invoked}
    assert units <= {
        "sysmon.service",
        "sysmon-agent.socket",
        "sysmon-agent.service",
        "netpcap.service",
        "netpcap-prune.timer",
    }, invoked
    assert ("sysmon.service", "restart") in invoked, invoked
    # The agent runs the new code; its socket is left as it is (only started,
    # a no-op where it runs): one made anew would not be the agent's.
    assert ("sysmon-agent.service", "restart") in invoked, invoked
    assert {action for unit, action, *_ in invoked if unit == "sysmon-agent.socket"} == {"start"}
    load = in_root(root, ["/usr/bin/sysmon", "--version"])
    assert load.returncode == 0, load.stderr
    subprocess.run(["rm", "-rf", str(root / "home/user")], check=True)


def test_purge_leaves_nothing_but_the_users_data(clean_root):
    """Install then purge, twice over: the root is as before; the data in /home stays."""
    release, root = clean_root
    # The first round brings the dependencies (they stay, as apt leaves them).
    apt_get(root, "install", *root_debs(root, release))
    purge_all(root)
    before = snapshot(root)
    apt_get(root, "install", *root_debs(root, release))
    data = root / "home/user/Monitor"
    data.mkdir(parents=True)
    (data / "kept").write_text("x")
    purge_all(root)
    after = snapshot(root)
    assert (data / "kept").read_text() == "x"
    assert after - before == {"/home/user", "/home/user/Monitor", "/home/user/Monitor/kept"}
    assert before - after == set()
    assert not [p for p in after if "sysmon" in p or "netlog" in p or "netpcap" in p]
    subprocess.run(["rm", "-rf", str(root / "home/user")], check=True)
