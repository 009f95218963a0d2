"""Salt states rendered and applied with the real Salt, the policy against
Qubes 4.2's grammar, and the template file set run on Debian's packages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import IN_CI, IN_DEBIAN_ROOT, ROOT, handler_interpreter, require_root, require_tool
from fakequbes.world import make_world

from sysmon.config import load_config

SALT_ROOT = ROOT / "salt"
STATES = [
    "sys-monitor",
    "template-monitor",
    "template-handler",
    "uninstall",
    "template-uninstall",
    "netlog",
    "netlog-template",
    "netlog-firewall",
    "netlog-backup-dom0",
]
DEBIAN_PYTHON = "/usr/bin/python3"


def salt_call_path() -> str:
    if IN_DEBIAN_ROOT:
        require_tool("salt-call")  # skips with the reason
    for candidate in (
        os.environ.get("SYSMON_SALT_CALL"),
        str(ROOT / ".venv-salt/bin/salt-call"),
        shutil.which("salt-call"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    if IN_CI:
        pytest.fail("salt-call is required in CI (.ci/run installs it in .venv-salt)")
    pytest.skip(
        "salt-call not installed (python3 -m venv .venv-salt && .venv-salt/bin/pip install salt)"
    )
    raise AssertionError  # unreachable


@pytest.fixture(name="salt")
def _salt(tmp_path):
    salt_call = salt_call_path()
    config = tmp_path / "salt-config"
    config.mkdir()
    (config / "minion").write_text(
        f"file_client: local\nroot_dir: {tmp_path / 'salt-root'}\nid: sysmon-test\n"
        f"file_roots:\n  base:\n    - {SALT_ROOT}\n"
    )

    def call(*args: str, pillar: dict[str, object] | None = None, check: bool = True) -> object:
        argv = [
            salt_call,
            "--local",
            f"--config-dir={config}",
            "--retcode-passthrough",
            "--out=json",
            *args,
        ]
        if pillar is not None:
            argv.append(f"pillar={json.dumps(pillar)}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return (
            json.loads(done.stdout)["local"] if done.stdout.strip().startswith("{") else done.stdout
        )

    return call


class TestRendering:
    @pytest.mark.parametrize("state", STATES)
    def test_state_renders(self, salt, state):
        """Every state compiles with the real Salt (qvm.* exist only in dom0)."""
        high = salt("state.show_sls", f"qubes.monitor.{state}")
        assert isinstance(high, dict)
        assert high, state

    def test_dom0_state_keeps_sys_monitor_offline(self, salt):
        high = salt("state.show_sls", "qubes.monitor.sys-monitor")
        prefs = {
            k: v
            for item in high["sysmon-qube-prefs"]["qvm"]
            if isinstance(item, dict)
            for k, v in item.items()
        }
        assert prefs["netvm"] == ""
        assert (prefs["vcpus"], prefs["memory"], prefs["maxmem"], prefs["autostart"]) == (
            1,
            400,
            800,
            True,
        )
        features = high["sysmon-qube-service"]["qvm"]
        assert {"enable": ["service.sysmon"]} in features

    def test_handler_templates_get_the_awk_its_first_line_names(self, salt):
        """mawk from the template's distribution, installed before the handler."""
        assert handler_interpreter() == "/usr/bin/mawk"
        high = salt("state.show_sls", "qubes.monitor.template-handler")
        assert {"pkgs": ["mawk"]} in high["sysmon-handler-awk"]["pkg"]
        assert {"require": [{"pkg": "sysmon-handler-awk"}]} in high["sysmon-handler"]["file"]

    def test_top_covers_dom0_and_every_template(self, salt):
        top = salt("slsutil.renderer", f"{SALT_ROOT}/qubes/monitor/init.top")
        assert top["base"]["dom0"] == ["qubes.monitor.sys-monitor"]
        # Qubes 4.3.1's templates; sys-monitor's own also gets the handler.
        assert top["base"]["debian-13-xfce"] == [
            "qubes.monitor.template-monitor",
            "qubes.monitor.template-handler",
        ]
        handler_templates = [
            t for t, s in top["base"].items() if "qubes.monitor.template-handler" in s
        ]
        assert set(handler_templates) == {
            "debian-13-xfce",
            "fedora-43-xfce",
            "whonix-gateway-18",
            "whonix-workstation-18",
        }

    def test_a_4_2_system_names_its_templates_in_pillar(self, salt):
        """The pillar of docs/deploy.md for Qubes 4.2 targets the 4.2 templates."""
        pillar = {
            "sysmon": {
                "monitor_template": "debian-12-xfce",
                "handler_templates": ["debian-12-xfce", "fedora-41-xfce"],
            }
        }
        high = salt("state.show_sls", "qubes.monitor.sys-monitor", pillar=pillar)
        assert {"template": "debian-12-xfce"} in high["sysmon-qube"]["qvm"]

    def test_settings_come_from_pillar(self, salt):
        high = salt(
            "state.show_sls", "qubes.monitor.sys-monitor", pillar={"sysmon": {"monitor": "mon2"}}
        )
        assert {"name": "mon2"} in high["sysmon-qube"]["qvm"]


# --- The qrexec policy against Qubes 4.2's grammar -------------------------

_SERVICE = re.compile(r"\*|[A-Za-z0-9_.-]+")
_ARGUMENT = re.compile(r"\*|\+[A-Za-z0-9_.-]*")
_QUBE = r"[a-zA-Z][a-zA-Z0-9_-]{0,30}"
_SOURCE = re.compile(rf"\*|@anyvm|@adminvm|dom0|@tag:[A-Za-z0-9_.-]+|@type:[A-Za-z]+|{_QUBE}")
_TARGET = re.compile(
    rf"\*|@anyvm|@adminvm|dom0|@default|@dispvm(:{_QUBE}|:@tag:[A-Za-z0-9_.-]+)?|@tag:[A-Za-z0-9_.-]+|@type:[A-Za-z]+|{_QUBE}"
)
_PARAMS = {
    "allow": {"target", "user", "notify", "autostart"},
    "ask": {"target", "user", "notify", "autostart", "default_target"},
    "deny": {"notify"},
}


def parse_policy_4_2(text: str) -> set[tuple[str, ...]]:
    """Rules of a policy file, each checked against the 4.2 grammar
    (qubes-core-qrexec qrexec/policy/parser.py)."""
    rules = set()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        assert not stripped.startswith("!"), f"line {number}: no directives expected"
        fields = stripped.split()
        assert len(fields) >= 5, f"line {number}: {line}"
        service, argument, source, target, action, *params = fields
        assert _SERVICE.fullmatch(service), f"line {number}: service {service}"
        assert _ARGUMENT.fullmatch(argument), f"line {number}: argument {argument}"
        assert service != "*" or argument == "*", f"line {number}: * service needs * argument"
        assert _SOURCE.fullmatch(source), f"line {number}: source {source}"
        assert _TARGET.fullmatch(target), f"line {number}: target {target}"
        assert action in _PARAMS, f"line {number}: action {action}"
        for param in params:
            key, sep, value = param.partition("=")
            assert sep, f"line {number}: parameter {param}"
            assert key in _PARAMS[action], f"line {number}: parameter {param}"
            if key in {"notify", "autostart"}:
                assert value in {"yes", "no"}, f"line {number}: {param}"
            if key in {"target", "default_target"}:
                assert _TARGET.fullmatch(value), f"line {number}: {param}"
            if key == "user":
                assert re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value), f"line {number}: {param}"
        if target == "@default" and action == "allow":
            assert any(p.startswith("target=") for p in params), f"line {number}"
        rules.add(tuple(fields))
    return rules


def test_policy_is_exactly_the_minimum(salt, tmp_path):
    """Every line parses as 4.2 policy and the set of rules is exactly this:
    a widening (a new rule, a wider source or target) fails here."""
    out = tmp_path / "30-sysmon.policy"
    salt("cp.get_template", "salt://qubes/monitor/files/30-sysmon.policy.jinja", str(out))
    assert parse_policy_4_2(out.read_text()) == {
        ("qubes.Metrics.Get", "*", "sys-monitor", "@anyvm", "allow", "user=root", "autostart=no"),
        ("admin.vm.List", "*", "sys-monitor", "@adminvm", "allow", "target=dom0"),
        ("admin.vm.List", "*", "sys-monitor", "@anyvm", "allow", "target=dom0"),
        ("admin.vm.Stats", "*", "sys-monitor", "@adminvm", "allow", "target=dom0"),
        ("qubes.Filecopy", "*", "sys-monitor", "secrets-vault", "allow"),
        ("qubes.Metrics.Get", "*", "sys-monitor", "secrets-vault", "deny", "notify=no"),
        ("qubes.Metrics.Get", "*", "sys-monitor", "sys-monitor", "deny"),
        ("*", "*", "@anyvm", "sys-monitor", "deny"),
    }


# --- The policy's decisions, against the real engine's recorded ones --------

#: The recorded hardened 30-sysmon.policy (tests/fixtures/qubes/README.md),
#: to which the table's "30-sysmon.policy:N" refers.
RECORDED_HARDENED = [
    "qubes.Metrics.Get * sys-monitor secrets-vault deny notify=no",
    "qubes.Metrics.Get * sys-monitor @anyvm allow user=root autostart=no",
    "admin.vm.List * sys-monitor @adminvm allow target=dom0",
    "admin.vm.List * sys-monitor @anyvm allow target=dom0",
    "admin.vm.Stats * sys-monitor @adminvm allow target=dom0",
    "qubes.Filecopy * sys-monitor secrets-vault allow",
    "* * @anyvm sys-monitor deny",
]
#: The default rules the recorded requests reach (core-admin 90-default.policy).
DEFAULT_RULES = [
    ("90-default.policy:31", "qubes.Filecopy * @anyvm @anyvm ask"),
    ("90-default.policy:99", "qubes.VMShell * @anyvm @anyvm deny"),
    ("90-default.policy:103", "qubes.VMRootShell * @anyvm @anyvm deny"),
    ("90-default.policy:128", "qubes.VMExec * @anyvm @anyvm deny"),
]


def _matches(pattern: str, name: str, *, target: bool) -> bool:
    """qrexec's pattern match for the patterns the policy uses (parser.py)."""
    is_dom0 = name in {"dom0", "@adminvm"}
    if pattern == "*":
        return True
    if pattern == "@anyvm":  # never dom0; as a target also the keywords
        return not is_dom0 and (target or not name.startswith("@"))
    if pattern in {"@adminvm", "dom0"}:
        return is_dom0
    return pattern == name


def evaluate(
    rules: list[tuple[str, str]],
    request: str,
    source: str,
    target: str,
    state: str,
    qube_of: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """(decision, matched rule) for one request, first match wins, as dom0 decides it.

    A ``uuid:U`` target is matched as the qube ``qube_of`` names (a rule
    naming a qube matches its uuid form), but the loopback guard compares the
    strings as given (qubes-facts.md): ``uuid:<sys-monitor>`` passes it.
    """
    service, _, argument = request.partition("+")
    named = (qube_of or {}).get(target, target)
    for where, rule in rules:
        r_service, r_arg, r_source, r_target, action, *params = rule.split()
        if r_service not in {"*", service} or r_arg not in {"*", "+" + argument}:
            continue
        if not (
            _matches(r_source, source, target=False) and _matches(r_target, named, target=True)
        ):
            continue
        if action == "allow":
            redirected = any(p.startswith("target=") for p in params)
            if not redirected:
                if target in {"@default", source} or target.startswith("@dispvm"):
                    return "deny", where  # no target given / loopback / a new DispVM
                if "autostart=no" in params and state != "Running":
                    return "deny", where
        return action, where
    return "deny", "-"


@pytest.mark.parametrize(
    "row",
    [
        line.split("\t")
        for line in (ROOT / "tests/fixtures/qubes/policy-decisions-hardened.tsv")
        .read_text()
        .splitlines()[1:]
    ],
    ids=lambda row: f"{row[0]}:{row[1]}>{row[2]}",
)
def test_shipped_policy_decides_as_the_recorded_engine(shipped_policy, row):
    """Each of the 42 recorded requests: same decision, same rule, denials included."""
    request, source, target, state, decision, matched = row[:6]
    ours = [
        (line, line)
        for line in (" ".join(raw.split()) for raw in shipped_policy.splitlines())
        if line and not line.startswith("#")
    ]
    got_decision, got_rule = evaluate([*ours, *DEFAULT_RULES], request, source, target, state)
    assert got_decision == decision
    if target == source and got_rule == SELF_DENY:
        # The engine refused it as a loopback at the @anyvm line; the shipped
        # policy now names it first (the uuid form would pass the loopback guard).
        assert matched == "30-sysmon.policy:2"
    elif matched.startswith("30-sysmon.policy:"):
        assert got_rule == RECORDED_HARDENED[int(matched.split(":")[1]) - 1]
    else:
        assert got_rule == matched


SELF_DENY = "qubes.Metrics.Get * sys-monitor sys-monitor deny"
#: Every qube of the recorded 4.3 world by its ``uuid:`` form: uuid5 of
#: "<name>.qubes.invalid", dom0's all zeros (tests/fixtures/qubes/README.md).
QUBE_OF_UUID = {
    f"uuid:{uuid.uuid5(uuid.NAMESPACE_DNS, f'{name}.qubes.invalid')}": name
    for name in ("sys-monitor", "work", "work-halted", "secrets-vault", "disp1234", "personal")
} | {"uuid:00000000-0000-0000-0000-000000000000": "dom0"}
#: The three lines of the recorded ``vault-excluded`` variant, after admin.vm.Stats
#: (lines 17-19 of that recorded 30-sysmon.policy).
VAULT_EXCLUDED = {
    "30-sysmon.policy:17": "admin.vm.property.Get +xid sys-monitor secrets-vault deny notify=no",
    "30-sysmon.policy:18": "admin.vm.property.Get +xid sys-monitor @adminvm allow target=dom0",
    "30-sysmon.policy:19": "admin.vm.property.Get +xid sys-monitor @anyvm allow target=dom0",
}


def _policy_rules(policy: str) -> list[tuple[str, str]]:
    return [
        (line, line)
        for line in (" ".join(raw.split()) for raw in policy.splitlines())
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize(
    "row",
    [
        line.split("\t")[1:]
        for line in (ROOT / "tests/fixtures/qubes/policy-decisions-xid-variants-4.3.tsv")
        .read_text()
        .splitlines()[1:]
        if line.startswith("vault-excluded\t")
    ],
    ids=lambda row: f"{row[2]}-{row[3]}",
)
def test_a_rule_naming_a_qube_matches_its_uuid_form_as_the_engine_does(shipped_policy, row):
    """The model of the engine against its recorded decisions, ``uuid:`` targets included:
    the vault's deny line denies ``uuid:<vault>`` too."""
    request, source, target, state, decision, matched = row[:6]
    ours = _policy_rules(shipped_policy)
    stats = next(i for i, (_, line) in enumerate(ours) if line.startswith("admin.vm.Stats "))
    lines = list(VAULT_EXCLUDED.items())
    rules = [*ours[: stats + 1], *lines, *ours[stats + 1 :], *DEFAULT_RULES]
    got_decision, got_rule = evaluate(rules, request, source, target, state, QUBE_OF_UUID)
    assert got_decision == decision
    if matched in VAULT_EXCLUDED:
        assert got_rule == matched


@pytest.mark.parametrize("target", ["sys-monitor", "uuid:d03cd78b-c6ac-5d48-b6f8-41eabc339e8b"])
def test_sys_monitor_cannot_poll_itself_by_name_or_uuid(shipped_policy, target):
    """4.3's loopback guard compares strings: ``uuid:<sys-monitor>`` passed it
    and matched @anyvm (allow, as root); the shipped policy denies both forms."""
    rules = [*_policy_rules(shipped_policy), *DEFAULT_RULES]
    got = evaluate(rules, "qubes.Metrics.Get+", "sys-monitor", target, "Running", QUBE_OF_UUID)
    assert got == ("deny", SELF_DENY)


@pytest.fixture(name="shipped_policy")
def _shipped_policy(salt, tmp_path):
    out = tmp_path / "30-sysmon.policy"
    salt("cp.get_template", "salt://qubes/monitor/files/30-sysmon.policy.jinja", str(out))
    return out.read_text()


def test_policy_file_requires_the_qube(salt):
    """The policy is written only if the qube was created and set up."""
    high = salt("state.show_sls", "qubes.monitor.sys-monitor")
    policy = high["/etc/qubes/policy.d/30-sysmon.policy"]["file"]
    (require,) = [
        item["require"] for item in policy if isinstance(item, dict) and "require" in item
    ]
    assert {"qvm": "sysmon-qube"} in require
    assert {"qvm": "sysmon-qube-prefs"} in require


def test_the_grammar_check_rejects_what_4_2_rejects():
    for bad in (
        "admin.vm.List * sys-monitor @anyvm allow target=dom0,user=root",
        "* +x sys-monitor @anyvm allow",
        "qubes.Filecopy * sys-monitor vault allow autostart=true",
        "qubes.Filecopy * sys-monitor vault permit",
        "qubes.Filecopy * sys monitor vault allow",
    ):
        with pytest.raises(AssertionError):
            parse_policy_4_2(bad)


# --- The template's file set, on Debian's packages only --------------------


def debian_python(release: str) -> list[str]:
    """How to run the Debian ``release``'s /usr/bin/python3.

    Debian 12 is this machine (CI runs on it); Debian 13 is the root .ci/run
    builds with debootstrap (``SYSMON_DEBIAN13_ROOT``), which sees /tmp and
    this checkout at the same paths.
    """
    if release == "12":
        require_tool(DEBIAN_PYTHON)
        return [DEBIAN_PYTHON]
    root = os.environ.get("SYSMON_DEBIAN13_ROOT")
    if not root:
        if IN_CI:
            pytest.fail("SYSMON_DEBIAN13_ROOT is required in CI (.ci/run builds the root)")
        pytest.skip("no Debian 13 root (.ci/run builds one and sets SYSMON_DEBIAN13_ROOT)")
    require_root("chroot into the Debian 13 root")
    return ["chroot", root, DEBIAN_PYTHON]


@pytest.mark.parametrize("release", ["12", "13"])
def test_template_file_set_runs_on_debian_packages(salt, tmp_path, release):
    """Apply template-monitor for real into a staging root, then run
    ``python3 -m sysmon --help`` and a ``once`` from exactly those files with
    /usr/bin/python3 and Debian's python3-* packages, of Debian 12 and 13."""
    python = debian_python(release)
    stage = tmp_path / "stage"
    pillar = {"sysmon": {"root": str(stage), "install_packages": False, "enable_unit": False}}
    result = salt("state.sls", "qubes.monitor.template-monitor", pillar=pillar)
    assert all(r["result"] for r in result.values())
    again = salt("state.sls", "qubes.monitor.template-monitor", pillar=pillar)
    assert all(not r["changes"] for r in again.values()), "re-apply changed something"
    libdir = stage / "usr/lib/sysmon"
    installed = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert "usr/bin/sysmon" in installed
    assert "etc/sysmon/sysmon.toml" in installed
    assert "usr/lib/systemd/system/sysmon.service" in installed
    assert not any("__pycache__" in p for p in installed)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(libdir),
        "PYTHONNOUSERSITE": "1",
        "HOME": str(tmp_path),
    }
    probe = subprocess.run(
        [
            *python,
            "-c",
            (
                "import trio, attr, structlog, dateutil, sysmon\n"
                "for m in (trio, attr, structlog, dateutil, sysmon): print(m.__file__)"
            ),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    if probe.returncode != 0 and not IN_CI:
        pytest.skip("Debian's python3-trio & co. not installed: " + probe.stderr.strip()[-200:])
    assert probe.returncode == 0, probe.stderr
    paths = probe.stdout.split()
    assert all(p.startswith("/usr/lib/python3/dist-packages/") for p in paths[:4]), paths
    assert paths[4].startswith(str(libdir))
    done = subprocess.run(
        [*python, "-m", "sysmon", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "once" in done.stdout
    world_env = make_world(tmp_path / "world", {"work": "healthy", "denied": "refused"})
    done = subprocess.run(
        [
            *python,
            "-m",
            "sysmon",
            "once",
            "--config",
            str(stage / "etc/sysmon/sysmon.toml"),
            "--out-dir",
            str(tmp_path / "out"),
        ],
        env={**env, **world_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "2 qubes polled: 1 ok, 1 not ok" in done.stdout


def test_uninstall_removes_what_install_added(salt, tmp_path):
    stage = tmp_path / "stage"
    pillar = {"sysmon": {"root": str(stage), "install_packages": False, "enable_unit": False}}
    salt("state.sls", "qubes.monitor.template-monitor", pillar=pillar)
    salt("state.sls", "qubes.monitor.template-handler", pillar=pillar)
    assert (stage / "etc/qubes-rpc/qubes.Metrics.Get").stat().st_mode & 0o111
    salt("state.sls", "qubes.monitor.template-uninstall", pillar=pillar)
    assert [p for p in stage.rglob("*") if p.is_file()] == []


def test_netlog_file_sets(salt, tmp_path):
    """netlog's template, firewall and dom0 states install runnable scripts and units."""
    stage = tmp_path / "stage"
    pillar = {"sysmon": {"root": str(stage), "install_packages": False, "enable_unit": False}}
    for state in ("netlog-template", "netlog-firewall", "netlog-backup-dom0"):
        result = salt("state.sls", f"qubes.monitor.{state}", pillar=pillar)
        assert all(r["result"] for r in result.values()), state
    for path in (
        "usr/lib/netlog/netpcap-capture",
        "usr/lib/netlog/netpcap-prune",
        "rw/config/qubes-firewall.d/50-netlog",
        "usr/local/bin/qubes-netlogs-backup",
    ):
        assert (stage / path).stat().st_mode & 0o111, path
    assert (
        "binds+=( '/var/log/netpcap' )"
        in (stage / "etc/qubes-bind-dirs.d/50_netlog.conf").read_text()
    )
    conf = (stage / "etc/qubes/netlog.conf").read_text()
    assert 'NETLOG_PCAP_SOURCES="sys-dns sys-vpn"' in conf
    assert (stage / "etc/systemd/system/qubes-netlogs-backup.timer").exists()


def test_the_private_volume_is_sized_for_the_data_ceiling(salt, tmp_path):
    """Salt extends sys-monitor's private volume; the daemon's ceiling stays below it."""
    high = salt("state.show_sls", "qubes.monitor.sys-monitor")
    volume = high["sysmon-qube-volume"]["cmd"]
    name = next(item["name"] for item in volume if isinstance(item, dict) and "name" in item)
    assert name == f"qvm-volume extend sys-monitor:private {10 * 1024**3}"
    out = tmp_path / "sysmon.toml"
    salt("cp.get_template", "salt://qubes/monitor/files/sysmon.toml.jinja", str(out))
    config = load_config(out)
    assert config.max_data_mb == 8192
    assert config.max_data_mb * 1024**2 < 10 * 1024**3
    # 30 qubes at their full daily budget for two days fit under the ceiling.
    assert 30 * config.qube_mb_per_day * 2 < config.max_data_mb
