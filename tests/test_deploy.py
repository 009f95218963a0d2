"""Salt states rendered and applied with the real Salt, from the dom0 package's
payload (never the checkout), the policy against Qubes 4.2's grammar, and the
template states applied for real in a fresh Debian 12 root."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
import tomllib
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest
from artefacts import debian_root, dist, in_root, purge_all, rpm, unpack_rpm
from conftest import IN_CI, IN_DEBIAN_ROOT, ROOT, require_tool
from fakequbes.world import make_world

from sysmon.config import load_config

pytestmark = pytest.mark.slow
#: Where the dom0 package puts the formula (rpm_spec/sysmon-dom0.spec.in).
FORMULA = "srv/formulas/base/sysmon-formula"
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


@pytest.fixture(name="salt_root", scope="session")
def _salt_root(tmp_path_factory) -> Path:
    """The formula as the dom0 package installs it, unpacked into an empty folder:
    no state can reach back into the checkout."""
    payload = unpack_rpm(rpm("sysmon-dom0"), tmp_path_factory.mktemp("dom0"))
    return payload / FORMULA


def call_salt(
    where: Path,
    formula_root: Path,
    *args: str,
    pillar: dict[str, object] | None = None,
    check: bool = True,
    grains: dict[str, str] | None = None,
) -> object:
    """salt-call ``args`` on ``formula_root``, its configuration and state under ``where``."""
    # Grains set in the minion's configuration win over the ones Salt finds.
    config = where / f"salt-config-{json.dumps(grains, sort_keys=True).encode().hex()}"
    if not config.exists():
        config.mkdir()
        (config / "minion").write_text(
            f"file_client: local\nroot_dir: {where / 'salt-root'}\nid: sysmon-test\n"
            f"file_roots:\n  base:\n    - {formula_root}\n"
            + (f"grains: {json.dumps(grains)}\n" if grains else "")
        )
    argv = [
        salt_call_path(),
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
    return json.loads(done.stdout)["local"] if done.stdout.strip().startswith("{") else done.stdout


@pytest.fixture(name="salt_call_only")
def _salt_call_only(tmp_path):
    """salt-call on a formula root of the test's choosing: (root, *args) -> JSON."""

    def call(formula_root: Path, *args: str) -> object:
        where = tmp_path / "only"
        where.mkdir(exist_ok=True)
        return call_salt(where, formula_root, *args)

    return call


@pytest.fixture(name="salt")
def _salt(tmp_path, salt_root):
    def call(
        *args: str,
        pillar: dict[str, object] | None = None,
        check: bool = True,
        grains: dict[str, str] | None = None,
    ) -> object:
        return call_salt(tmp_path, salt_root, *args, pillar=pillar, check=check, grains=grains)

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

    @pytest.mark.parametrize(
        ("family", "kind", "manager"), [("Debian", "deb", "apt-get"), ("RedHat", "rpm", "dnf")]
    )
    def test_templates_get_the_package_that_rides_in_the_formula(
        self, salt, salt_root, family, kind, manager
    ):
        """A Debian template gets the .deb, a Fedora one the .rpm (its Requires
        bring mawk), each by its own package manager, skipped where installed."""
        high = salt(
            "state.show_sls", "qubes.monitor.template-handler", grains={"os_family": family}
        )
        cmd = {
            k: v
            for item in high["sysmon-handler-package"]["cmd"]
            if isinstance(item, dict)
            for k, v in item.items()
        }
        assert cmd["name"].startswith(
            f"DEBIAN_FRONTEND=noninteractive {manager}" if kind == "deb" else manager
        )
        (package,) = (salt_root / "qubes/monitor/packages").glob(f"sysmon-handler*.{kind}")
        assert f"/var/cache/sysmon-packages/{package.name}" in cmd["name"]
        assert "sysmon-handler" in cmd["unless"]
        source = {
            k: v
            for item in high["sysmon-handler-package-file"]["file"]
            if isinstance(item, dict)
            for k, v in item.items()
        }
        assert source["source"] == f"salt://qubes/monitor/packages/{package.name}"

    def test_packages_from_a_repository_of_your_own(self, salt):
        """pillar packages_from: repo installs by name from the template's repositories."""
        high = salt(
            "state.show_sls",
            "qubes.monitor.template-monitor",
            pillar={"sysmon": {"packages_from": "repo"}},
        )
        assert {"name": "sysmon"} in high["sysmon-package"]["pkg"]

    def test_uninstall_in_dom0_is_a_no_op_without_the_qube(self, salt):
        """uninstall resets the service feature only where sys-monitor exists
        (qvm.features fails on a missing qube: "Virtual Machine does not exist!")."""
        high = salt("state.show_sls", "qubes.monitor.uninstall")
        feature = high["sysmon-qube-service-off"]["qvm"]
        assert {"onlyif": "qvm-check --quiet sys-monitor"} in feature

    def test_top_covers_dom0_and_every_template(self, salt, salt_root):
        top = salt("slsutil.renderer", f"{salt_root}/qubes/monitor/init.top")
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

    def test_the_agent_is_on_in_no_qube_by_default(self, salt):
        """Without pillar no qube gets the agent's service, and uninstall resets none."""
        for state in ("sys-monitor", "uninstall"):
            high = salt("state.show_sls", f"qubes.monitor.{state}")
            assert [k for k in high if "agent" in k] == [], state

    def test_the_agent_is_turned_on_in_the_qubes_pillar_names(self, salt):
        """agent_qubes: qvm-service --enable QUBE sysmon-agent for each, and
        uninstall resets each (where the qube still exists)."""
        pillar = {"sysmon": {"agent_qubes": ["work", "personal"]}}
        high = salt("state.show_sls", "qubes.monitor.sys-monitor", pillar=pillar)
        assert sorted(k for k in high if "agent" in k) == [
            "sysmon-agent-personal",
            "sysmon-agent-work",
        ]
        for vm in ("work", "personal"):
            features = high[f"sysmon-agent-{vm}"]["qvm"]
            assert "features" in features
            assert {"name": vm} in features
            assert {"enable": ["service.sysmon-agent"]} in features
        high = salt("state.show_sls", "qubes.monitor.uninstall", pillar=pillar)
        for vm in ("work", "personal"):
            features = high[f"sysmon-agent-{vm}-off"]["qvm"]
            assert {"name": vm} in features
            assert {"default": ["service.sysmon-agent"]} in features
            assert {"onlyif": f"qvm-check --quiet {vm}"} in features

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
        ("admin.vm.property.Get", "+xid", "sys-monitor", "secrets-vault", "deny", "notify=no"),
        ("admin.vm.property.Get", "+xid", "sys-monitor", "@anyvm", "allow", "target=dom0"),
        ("qubes.Filecopy", "+", "sys-monitor", "secrets-vault", "allow"),
        ("qubes.Filecopy", "*", "sys-monitor", "secrets-vault", "deny", "notify=no"),
        ("*", "*", "sys-monitor", "@dispvm", "deny"),
        *((service, "*", "sys-monitor", "@anyvm", "deny") for service in PROMPTED_SERVICES),
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
#: The default rules the recorded requests reach (core-admin 90-default.policy),
#: and release4.2's rules that let any qube start a disposable (release4.3's
#: are the same, four lines further down from VMShell on).
DEFAULT_RULES = [
    ("90-default.policy:31", "qubes.Filecopy * @anyvm @anyvm ask"),
    ("90-default.policy:35", "qubes.GetDate * @anyvm @anyvm allow target=dom0"),
    ("90-default.policy:41", "qubes.GetImageRGBA * @anyvm @dispvm allow"),
    ("90-default.policy:42", "qubes.GetImageRGBA * @anyvm @anyvm ask"),
    ("90-default.policy:48", "qubes.OpenInVM * @anyvm @dispvm allow"),
    ("90-default.policy:49", "qubes.OpenInVM * @anyvm @anyvm ask"),
    ("90-default.policy:52", "qubes.OpenURL * @anyvm @dispvm allow"),
    ("90-default.policy:53", "qubes.OpenURL * @anyvm @anyvm ask"),
    ("90-default.policy:59", "qubes.StartApp * @anyvm @dispvm allow"),
    ("90-default.policy:60", "qubes.StartApp * @anyvm @anyvm ask"),
    ("90-default.policy:68", "qubes.Notifications * @anyvm @default allow target=dom0"),
    ("90-default.policy:98", "qubes.VMShell * @anyvm @dispvm allow"),
    ("90-default.policy:99", "qubes.VMShell * @anyvm @anyvm deny"),
    ("90-default.policy:103", "qubes.VMRootShell * @anyvm @anyvm deny"),
    ("90-default.policy:127", "qubes.VMExec * @anyvm @dispvm allow"),
    ("90-default.policy:128", "qubes.VMExec * @anyvm @anyvm deny"),
    ("90-default.policy:131", "qubes.VMExecGUI * @anyvm @dispvm allow"),
]
DISPVM_SERVICES = [rule.split()[0] for _, rule in DEFAULT_RULES if " @dispvm allow" in rule]
#: What the default policy lets any qube ask the user for, to any other qube.
PROMPTED_SERVICES = [rule.split()[0] for _, rule in DEFAULT_RULES if rule.endswith(" ask")]


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
                if target in {"@default", source}:
                    return "deny", where  # no target given / loopback
                # A new disposable is started (of the caller's default_dispvm),
                # which autostart=no refuses.
                new_dispvm = target.startswith("@dispvm")
                if "autostart=no" in params and (state != "Running" or new_dispvm):
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
    if matched == "90-default.policy:31" and source == "sys-monitor":
        # The default's prompt to copy elsewhere; the shipped policy denies it.
        assert decision == "ask"
        assert (got_decision, got_rule) == ("deny", "qubes.Filecopy * sys-monitor @anyvm deny")
        return
    if request == "qubes.Filecopy+allow-all-names" and source == "sys-monitor":
        # The recorded file allowed it (`*`); the shipped one allows only safe names.
        assert (decision, matched) == ("allow", "30-sysmon.policy:6")
        assert (got_decision, got_rule) == ("deny", FILECOPY_DENY)
        return
    assert got_decision == decision
    if target == source and got_rule == SELF_DENY:
        # The engine refused it as a loopback at the @anyvm line; the shipped
        # policy now names it first (the uuid form would pass the loopback guard).
        assert matched == "30-sysmon.policy:2"
    elif matched == "30-sysmon.policy:6":  # the archive's copy, now its own line
        assert got_rule == FILECOPY_ALLOW
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


def _table(name: str) -> list[list[str]]:
    return [
        line.split("\t")
        for line in (ROOT / "tests/fixtures/qubes" / name).read_text().splitlines()[1:]
    ]


#: The candidate lines of the recorded xid tables and variants, by name.
XID_ADMINVM = "admin.vm.property.Get +xid sys-monitor @adminvm allow target=dom0"
XID_ANYVM = "admin.vm.property.Get +xid sys-monitor @anyvm allow target=dom0"
XID_VAULT = "admin.vm.property.Get +xid sys-monitor secrets-vault deny notify=no"
XID_VARIANTS = {
    "shipped": [],
    "adminvm-only": [XID_ADMINVM],
    "anyvm-only": [XID_ANYVM],
    "vault-excluded": [XID_VAULT, XID_ADMINVM, XID_ANYVM],
}


@pytest.mark.parametrize(
    ("lines", "row"),
    [
        (XID_VARIANTS[r[0]], r[1:])
        for r in _table("policy-decisions-xid-variants-4.3.tsv")
        if r[0] in XID_VARIANTS
    ]
    + [
        ([XID_ADMINVM, XID_ANYVM], r)
        for name in ("policy-decisions-xid-4.3.tsv", "policy-decisions-xid-4.2.tsv")
        for r in _table(name)
    ],
)
def test_the_engine_model_decides_every_recorded_xid_request(shipped_policy, lines, row):
    """The model of the engine against the real one for every recorded xid
    request under the recorded candidate lines (after admin.vm.Stats): the
    model the shipped lines are checked with below."""
    request, source, target, state, decision = row[:5]
    ours = [r for r in _policy_rules(shipped_policy) if "property.Get" not in r[1]]
    stats = next(i for i, (_, line) in enumerate(ours) if line.startswith("admin.vm.Stats "))
    rules = [*ours[: stats + 1], *((x, x) for x in lines), *ours[stats + 1 :], *DEFAULT_RULES]
    got, _ = evaluate(rules, request, source, target, state, QUBE_OF_UUID)
    assert got == decision


def _is(target: str, name: str) -> bool:
    return QUBE_OF_UUID.get(target, target) == name or (name == "dom0" and target == "@adminvm")


@pytest.mark.parametrize(
    "row",
    _table("policy-decisions-xid-4.3.tsv") + _table("policy-decisions-xid-4.2.tsv"),
    ids=lambda row: f"{row[0]}:{row[1]}>{row[2]}-{row[3]}",
)
def test_shipped_xid_lines_decide_as_the_recorded_engine(shipped_policy, row):
    """Every recorded xid request: the shipped policy decides as the real engine
    did with the ``@anyvm`` line (the whole table), but for the two targets
    sysmon never asks: dom0 (no rule: its id is 0) and the vault (denied
    quietly), whose decisions are the recorded variants' ``anyvm-only`` and
    ``vault-excluded`` ones."""
    request, source, target, state, decision = row[:5]
    got, rule = evaluate(
        [*_policy_rules(shipped_policy), *DEFAULT_RULES],
        request,
        source,
        target,
        state,
        QUBE_OF_UUID,
    )
    if _is(target, "dom0") and request == "admin.vm.property.Get+xid" and source == "sys-monitor":
        assert (got, rule) == ("deny", "-")  # as anyvm-only: no matching rule
    elif _is(target, "secrets-vault") and source == "sys-monitor":
        assert (got, rule) == ("deny", XID_VAULT)  # as vault-excluded
    else:
        assert got == decision
        if decision == "allow":
            assert rule == XID_ANYVM


@pytest.mark.parametrize("target", ["sys-monitor", "uuid:d03cd78b-c6ac-5d48-b6f8-41eabc339e8b"])
def test_sys_monitor_cannot_poll_itself_by_name_or_uuid(shipped_policy, target):
    """4.3's loopback guard compares strings: ``uuid:<sys-monitor>`` passed it
    and matched @anyvm (allow, as root); the shipped policy denies both forms."""
    rules = [*_policy_rules(shipped_policy), *DEFAULT_RULES]
    got = evaluate(rules, "qubes.Metrics.Get+", "sys-monitor", target, "Running", QUBE_OF_UUID)
    assert got == ("deny", SELF_DENY)


def test_sys_monitor_sends_the_vault_only_names_qubes_calls_safe(shipped_policy):
    """``qubes.Filecopy+allow-all-names`` makes the vault's qfile-unpacker take any
    file name (core-agent-linux ``qubes-rpc/qubes.Filecopy``: ``--allow-all-names``;
    Qubes 4.2's news: the less restrictive service), terminal escapes and bidi
    controls included; the rule's ``*`` allowed it (the recorded engine: row 29 of
    policy-decisions-hardened.tsv).  sysmon's archives are ``monitor-DAY.tgz``,
    which qvm-copy sends as plain ``qubes.Filecopy``: only that is allowed now,
    any other argument to the vault denied, without a prompt."""
    rules = [*_policy_rules(shipped_policy), *DEFAULT_RULES]
    assert evaluate(rules, "qubes.Filecopy+", "sys-monitor", "secrets-vault", "Running") == (
        "allow",
        FILECOPY_ALLOW,
    )
    got = evaluate(
        rules, "qubes.Filecopy+allow-all-names", "sys-monitor", "secrets-vault", "Running"
    )
    assert got == ("deny", FILECOPY_DENY)


FILECOPY_ALLOW = "qubes.Filecopy + sys-monitor secrets-vault allow"
FILECOPY_DENY = "qubes.Filecopy * sys-monitor secrets-vault deny notify=no"


@pytest.mark.parametrize("service", DISPVM_SERVICES)
def test_sys_monitor_cannot_start_a_disposable(shipped_policy, service):
    """The default policy lets any qube start a disposable of its default_dispvm
    (default-dvm, on the network) and run a shell there (qubes.VMShell) or open
    a URL: a compromised sys-monitor could send every qube's metrics out
    through one, though it has no network of its own.  Confirmed with the real
    engine (qrexec release4.2 and release4.3 parser.py, core-admin's
    90-default.policy): allowed at 90-default.policy:98 (4.2) / :102 (4.3).
    The shipped policy denies sys-monitor every call to @dispvm."""
    rules = [*_policy_rules(shipped_policy), *DEFAULT_RULES]
    got = evaluate(rules, f"{service}+", "sys-monitor", "@dispvm", "-")
    assert got == ("deny", DISPVM_DENY)
    # Another qube's disposables are its own business.
    assert evaluate(rules, f"{service}+", "work", "@dispvm", "-")[0] == "allow"


DISPVM_DENY = "* * sys-monitor @dispvm deny"


@pytest.mark.parametrize("target", ["work", "@default", "personal"])
@pytest.mark.parametrize("service", PROMPTED_SERVICES)
def test_sys_monitor_raises_no_prompt_to_send_anything_out(shipped_policy, service, target):
    """The default policy asks the user when any qube would copy a file to, open a
    file, a URL or an app in, or take an icon from, another qube (core-admin's
    90-default.policy, ``ask``): a compromised sys-monitor could word a request to
    talk the user into sending its every qube's metrics out.  Denied, no prompt;
    another qube still asks."""
    rules = [*_policy_rules(shipped_policy), *DEFAULT_RULES]
    assert evaluate(rules, f"{service}+", "sys-monitor", target, "Running") == (
        "deny",
        f"{service} * sys-monitor @anyvm deny",
    )
    assert evaluate(rules, f"{service}+", "work", "personal", "Running")[0] == "ask"


@pytest.mark.parametrize("service", ["qubes.GetDate", "qubes.Notifications"])
def test_sys_monitor_still_gets_its_clock_and_notifications_from_dom0(shipped_policy, service):
    """sys-monitor has no network: its clock comes from dom0 (qubes.GetDate), and its
    rules' notifications go to dom0 (qubes.Notifications), both asked of @default."""
    rules = [*_policy_rules(shipped_policy), *DEFAULT_RULES]
    decision, rule = evaluate(rules, f"{service}+", "sys-monitor", "@default", "-")
    assert (decision, rule.split(":")[0]) == ("allow", "90-default.policy")


@pytest.fixture(name="shipped_policy", scope="session")
def _shipped_policy(salt_root, tmp_path_factory):
    """The policy the formula writes, rendered once: some 250 tests decide on it, and a
    salt-call is about two seconds of CPU."""
    where = tmp_path_factory.mktemp("shipped-policy")
    out = where / "30-sysmon.policy"
    call_salt(
        where,
        salt_root,
        "cp.get_template",
        "salt://qubes/monitor/files/30-sysmon.policy.jinja",
        str(out),
    )
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


# --- The template states, applied for real in a fresh Debian 12 root ---------------


def root_salt_call(root: Path) -> str:
    """Salt inside the Debian 12 root (.ci/run installs it there in /opt/salt)."""
    path = "/opt/salt/bin/salt-call"
    if not (root / path.lstrip("/")).exists():
        if IN_CI:
            pytest.fail(f"{path} is required in the Debian 12 root (.ci/run installs it)")
        pytest.skip(f"no {path} in the Debian 12 root")
    return path


def test_template_states_install_the_packages_in_a_debian_template(salt_root, tmp_path):
    """template-monitor, -handler and netlog-template, applied by Salt inside a fresh
    Debian 12 root from the dom0 payload: apt installs the packages from the formula
    and their dependencies from Debian; applied again they change nothing; sysmon
    polls through the installed handler; template-uninstall removes them."""
    root = debian_root("12")
    salt_call = root_salt_call(root)
    purge_all(root)
    # An empty root_dir: this Salt's cache and the copied packages live in tmp_path.
    config = tmp_path / "salt-config"
    config.mkdir()
    (config / "minion").write_text(
        f"file_client: local\nroot_dir: {tmp_path / 'salt-root'}\nid: debian-12-xfce\n"
        f"file_roots:\n  base:\n    - {salt_root}\n"
    )

    def apply(state: str) -> dict[str, dict[str, object]]:
        done = in_root(
            root,
            [
                salt_call,
                "--local",
                f"--config-dir={config}",
                "--retcode-passthrough",
                "--out=json",
                "state.sls",
                f"qubes.monitor.{state}",
            ],
        )
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        result: dict[str, dict[str, object]] = json.loads(done.stdout)["local"]
        return result

    states = ("template-monitor", "template-handler", "netlog-template")
    try:
        for state in states:
            assert all(r["result"] for r in apply(state).values()), state
        installed = in_root(
            root,
            [
                "dpkg-query",
                "-W",
                "-f=${Package} ${Version}\\n",
                "sysmon",
                "sysmon-handler",
                "sysmon-netlog",
            ],
        )
        assert len(installed.stdout.split("\n")) >= 3, installed
        for state in states:
            again = apply(state)
            assert [k for k, r in again.items() if r["changes"]] == [], state
        assert 'vault = "secrets-vault"' in (root / "etc/sysmon/sysmon.toml").read_text()
        assert not (root / "var/cache/sysmon-packages").exists()
        world = tmp_path / "world"
        env = make_world(world, {"work": "healthy", "denied": "refused"})
        (world / "handler").write_text("/etc/qubes-rpc/qubes.Metrics.Get")
        done = in_root(
            root,
            ["sysmon", "once", "--out-dir", str(tmp_path / "out")],
            env={
                "SYSMON_FAKE_WORLD": env["SYSMON_FAKE_WORLD"],
                "PATH": f"{ROOT}/tests/fakequbes/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            },
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 qubes polled: 1 ok, 1 not ok" in done.stdout
        assert all(r["result"] for r in apply("template-uninstall").values())
        left = in_root(
            root, ["dpkg-query", "-W", "-f=${db:Status-Status}\\n", "sysmon", "sysmon-handler"]
        )
        assert set(left.stdout.split()) <= {"not-installed", "config-files"}, left.stdout
    finally:
        purge_all(root)


def test_netlog_dom0_and_firewall_file_sets(salt, tmp_path):
    """netlog's firewall and dom0 states install runnable scripts and units, as real files."""
    stage = tmp_path / "stage"
    pillar = {"sysmon": {"root": str(stage), "enable_unit": False}}
    for state in ("netlog-firewall", "netlog-backup-dom0"):
        result = salt("state.sls", f"qubes.monitor.{state}", pillar=pillar)
        assert all(r["result"] for r in result.values()), state
    for path in ("rw/config/qubes-firewall.d/50-netlog", "usr/local/bin/qubes-netlogs-backup"):
        assert (stage / path).stat().st_mode & 0o111, path
        assert not (stage / path).is_symlink()
    conf = (stage / "etc/qubes/netlog.conf").read_text()
    assert 'NETLOG_PCAP_SOURCES="sys-dns sys-vpn"' in conf
    # The backup's caps are sized from the capture settings the template gets.
    for setting in ("ROTATE_SECONDS=3600", "KEEP_FILES=48", "SNAPLEN=96", "PACKETS_PER_SECOND=100"):
        assert f"NETLOG_CAPTURE_{setting}\n" in conf
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


def salt_with_pillar(
    salt_root: Path, where: Path, pillar: Mapping[str, object] | str, *args: str
) -> subprocess.CompletedProcess[str]:
    """salt-call ``args`` with ``pillar`` from files as docs/deploy.md sets it up
    (/srv/pillar; JSON is YAML), its configuration under ``where``."""
    (where / "pillar").mkdir(parents=True)
    (where / "pillar/top.sls").write_text("base:\n  '*':\n    - sysmon\n")
    (where / "pillar/sysmon.sls").write_text(
        pillar if isinstance(pillar, str) else json.dumps(pillar)
    )
    (where / "config").mkdir()
    (where / "config/minion").write_text(
        f"file_client: local\nroot_dir: {where / 'salt-root'}\nid: sysmon-test\n"
        f"file_roots:\n  base:\n    - {salt_root}\n"
        f"pillar_roots:\n  base:\n    - {where / 'pillar'}\n"
    )
    return subprocess.run(
        [
            salt_call_path(),
            "--local",
            f"--config-dir={where / 'config'}",
            "--retcode-passthrough",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def render_with_pillar(
    salt_root: Path, where: Path, pillar: Mapping[str, object] | str
) -> subprocess.CompletedProcess[str]:
    """sysmon.toml as template-monitor writes it, with ``pillar`` from files,
    into ``where/sysmon.toml``."""
    return salt_with_pillar(
        salt_root,
        where,
        pillar,
        "cp.get_template",
        "salt://qubes/monitor/files/sysmon.toml.jinja",
        str(where / "sysmon.toml"),
    )


def test_rules_and_settings_from_pillar_reach_the_daemons_configuration(salt_root, tmp_path):
    """The state rewrites sysmon.toml, so rules (notify ones too) and any other
    setting must come from pillar; the file Salt writes is what the daemon loads."""
    rule = {
        "name": "cpu-busy",
        "file": "system",
        "expr": "cpu_user + cpu_system",
        "op": ">",
        "value": 90,
        "for": "5m",
        "notify": True,
    }
    pillar = {"sysmon": {"settings": {"notify_every": 600, "host_name": "desk-2"}, "rules": [rule]}}
    done = render_with_pillar(salt_root, tmp_path / "ok", pillar)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = load_config(tmp_path / "ok/sysmon.toml")
    assert (loaded.notify_every, loaded.host_name) == (600, "desk-2")
    (loaded_rule,) = loaded.rules
    assert (loaded_rule.name, loaded_rule.notify, loaded_rule.value) == ("cpu-busy", True, 90)
    assert loaded.vault == "secrets-vault"


def test_the_documented_pillar_for_rules_gives_the_daemon_its_rule(salt_root, tmp_path):
    """docs/deploy.md's pillar example, as written, reaches the daemon's rules."""
    text = (ROOT / "docs/deploy.md").read_text()
    section = text[text.index("**add threshold rules") :]
    block = section[section.index("```yaml\n") + 8 :]
    pillar = textwrap.dedent(block[: block.index("```")])
    done = render_with_pillar(salt_root, tmp_path, pillar)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = load_config(tmp_path / "sysmon.toml")
    assert [(r.name, r.notify) for r in loaded.rules] == [("cpu-busy", True)]
    assert (loaded.notify_every, loaded.host_name) == (600, "laptop")


def test_the_documented_pillar_for_the_agent_turns_it_on_in_those_qubes(salt_root, tmp_path):
    """docs/deploy.md's agent_qubes pillar, as written, gives each qube named
    the agent's service, and no other qube."""
    text = (ROOT / "docs/deploy.md").read_text()
    section = text[text.index("\n## The agent: ") :]
    block = section[section.index("```yaml\n") + 8 :]
    pillar = block[: block.index("```")]
    done = salt_with_pillar(
        salt_root, tmp_path, pillar, "--out=json", "state.show_sls", "qubes.monitor.sys-monitor"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    high = json.loads(done.stdout)["local"]
    enabled = {
        next(item["name"] for item in state["qvm"] if isinstance(item, dict) and "name" in item)
        for state in high.values()
        if {"enable": ["service.sysmon-agent"]} in state.get("qvm", [])
    }
    assert enabled == {"work", "personal"}


def test_a_setting_the_template_writes_itself_is_refused_by_name(salt_root, tmp_path):
    """Under settings, a key the template already writes would be a duplicate TOML
    key and the daemon would not start: Salt refuses it, naming the pillar key."""
    refused = render_with_pillar(salt_root, tmp_path, {"sysmon": {"settings": {"interval": 5}}})
    assert refused.returncode != 0
    assert "sysmon:settings:interval is set above: use pillar sysmon:interval" in (
        refused.stdout + refused.stderr
    )
    assert not (tmp_path / "sysmon.toml").exists()


@pytest.mark.parametrize(
    ("pillar", "named"),
    [
        ({"settings": {"notify_every": None}}, "sysmon:settings:notify_every"),
        ({"settings": {"views_cpu_gap": {"a": 1}}}, "sysmon:settings:views_cpu_gap"),
        ({"settings": {"exclude_more": [{"a": 1}]}}, "sysmon:settings:exclude_more"),
        ("settings: {views_cpu_gap: .nan}", "sysmon:settings:views_cpu_gap"),
        ("settings: {views_cpu_gap: -.inf}", "sysmon:settings:views_cpu_gap"),
        ({"rules": [{"name": "x", "value": None}]}, "sysmon:rules:value"),
        ({"rules": {"name": "x"}}, "sysmon:rules"),
        ({"rules": ["x"]}, "sysmon:rules"),
    ],
)
def test_a_pillar_value_toml_cannot_hold_is_refused_by_name(salt_root, tmp_path, pillar, named):
    """An empty YAML value (null), a mapping, .nan, a rule not written as a mapping:
    tojson would write what is no TOML and the daemon would not start; Salt
    refuses it, naming the pillar key."""
    # JSON is YAML; .nan and .inf are YAML only.
    yaml = pillar if isinstance(pillar, str) else json.dumps(pillar)
    done = render_with_pillar(salt_root, tmp_path, f"sysmon:\n  {yaml}\n")
    assert done.returncode != 0, (tmp_path / "sysmon.toml").read_text()
    assert f"{named}: " in done.stdout + done.stderr
    assert not (tmp_path / "sysmon.toml").exists()


@pytest.mark.parametrize(
    "key", ["exclude", "handler_templates", "netlog_fw_sources", "agent_qubes"]
)
def test_a_list_given_as_one_name_is_refused(salt_root, tmp_path, key):
    """``exclude: work`` (no dash) was the letters w, o, r, k: work was polled
    and the policy denied qubes named w, o, r and k.  Salt refuses it."""
    done = render_with_pillar(salt_root, tmp_path, {"sysmon": {key: "work"}})
    assert done.returncode != 0, (tmp_path / "sysmon.toml").read_text()
    assert f"sysmon:{key}: a list" in done.stdout + done.stderr


def test_any_text_in_pillar_is_the_same_text_in_sysmon_toml(salt_root, tmp_path):
    """tojson escapes a character past U+FFFF as a surrogate pair, which TOML
    refuses: text goes in as it is, and means the same to the daemon."""
    name = "cpu \U0001f525 <a & 'b'> \"q\" \\ \t é"
    rule = {"name": name, "file": "system", "expr": "cpu_user", "op": ">", "value": 90}
    pillar = json.dumps({"sysmon": {"rules": [rule]}}, ensure_ascii=False)
    done = render_with_pillar(salt_root, tmp_path, pillar)
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = tomllib.loads((tmp_path / "sysmon.toml").read_text(encoding="utf-8"))
    assert loaded["rules"] == [rule]


# --- docs/deploy.md's steps, run as written --------------------------------------


def documented_block(heading: str) -> list[str]:
    """The commands of the first sh block under ``heading`` in docs/deploy.md."""
    text = (ROOT / "docs/deploy.md").read_text()
    section = text[text.index(f"\n{heading}\n") :]
    block = section[section.index("```sh\n") + 6 :]
    return block[: block.index("```")].replace("\\\n", "").strip().splitlines()


def run_in_dom0(commands: list[str], dom0: Path, env: dict[str, str]) -> str:
    """Run documented dom0 commands in ``dom0`` (a folder) with the fake qvm-run;
    ``sudo`` is dropped (the tests run as root)."""
    out = ""
    for command in commands:
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", command.removeprefix("sudo ")],
            cwd=dom0,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (command, done.stderr)
        out += done.stdout
    return out


def build_qube(tmp_path: Path, artefact: Path) -> dict[str, str]:
    """A world whose qube ``build`` holds ``artefact`` where the docs say."""
    env = make_world(tmp_path / "world", {})
    # The fake runs the command in the qube's working directory, root/.
    home = tmp_path / "world/vm/build/root"
    relative = "sysmon/dist/" + ("rpm/" if artefact.suffix == ".rpm" else "") + artefact.name
    (home / relative).parent.mkdir(parents=True)
    shutil.copy(artefact, home / relative)
    (tmp_path / "world/vm/build/state").write_text("Running\n")
    for path in (home, home.parent):
        path.chmod(0o755)
    return env


def test_the_documented_copy_into_dom0_gets_the_package_intact(tmp_path):
    """Section 1 as written: qvm-run --pass-io from the build qube, sha256sum, install
    (dnf is not on Debian: the same RPM is installed with rpm into an empty root)."""
    copy, checksum, install = documented_block("## 1. Copy the dom0 package into dom0")
    package = rpm("sysmon-dom0")
    assert package.name in copy
    dom0 = tmp_path / "dom0"
    dom0.mkdir()
    out = run_in_dom0([copy, checksum], dom0, build_qube(tmp_path, package))
    assert (dom0 / "sysmon-dom0.rpm").read_bytes() == package.read_bytes()
    assert hashlib.sha256(package.read_bytes()).hexdigest() in out
    assert install == "sudo dnf install ./sysmon-dom0.rpm"
    root = tmp_path / "root"
    done = subprocess.run(
        ["rpm", f"--root={root}", "--nodeps", "-i", str(dom0 / "sysmon-dom0.rpm")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (root / FORMULA / "qubes/monitor/sys-monitor.sls").is_file()
    assert (root / "etc/salt/minion.d/formula-sysmon.conf").is_file()


def test_the_documented_developer_copy_gives_a_formula_salt_renders(salt_call_only, tmp_path):
    """The from-a-checkout path as written: the tarball into /srv/salt, states render."""
    copy, checksum, unpack = documented_block("## From a checkout, for developers")
    dom0 = tmp_path / "dom0"
    dom0.mkdir()
    tarball = dist() / "sysmon-formula.tar.gz"
    run_in_dom0([copy, checksum], dom0, build_qube(tmp_path, tarball))
    srv_salt = dom0 / "srv/salt"
    srv_salt.mkdir(parents=True)
    run_in_dom0([unpack.replace("/srv/salt", str(srv_salt))], dom0, {})
    assert [p for p in srv_salt.rglob("*") if p.is_symlink()] == []
    high = salt_call_only(srv_salt, "state.show_sls", "qubes.monitor.template-monitor")
    assert "sysmon-package" in high


def test_the_documented_salt_call_enables_the_top_the_formula_ships(salt_root):
    """Section 2: the top file it enables exists where top.enable looks for it."""
    enable, highstate = documented_block("## 2. One Salt call")
    assert enable == "sudo qubesctl top.enable qubes.monitor"
    assert (salt_root / "qubes/monitor/init.top").is_file()
    targets = highstate.split("--targets=")[1].split()[0].split(",")
    assert targets == [
        "debian-13-xfce",
        "fedora-43-xfce",
        "whonix-gateway-18",
        "whonix-workstation-18",
    ]
