"""Desktop notifications: the rule field, the limiter, the text, notify-send."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from conftest import require_tool
from csvcheck import read_day
from fakes import FakeQubes, inline
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sysmon import schema
from sysmon.commands.daemon import Collaborators, Daemon
from sysmon.commands.notify import Notifier, notifier_for, notify_argv
from sysmon.config import Config, ConfigError, config_from_mapping, load_config
from sysmon.records import AlertBatch, RuleState
from sysmon.store.commit import commit_tick
from sysmon.transform.notify import Event, Limiter, rule_events, safe
from sysmon.transform.rows import alert_row, encode_row
from sysmon.transform.rules import evaluate, parse_rules

TS = datetime(2025, 8, 31, 12, 0, 0, tzinfo=UTC)
BUSY = {"name": "cpu-busy", "file": "system", "expr": "cpu_user", "op": ">", "value": 5}
#: What a notification may hold: no markup, no control or escape bytes.
ALLOWED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.,:%+()/-?")


def fake_notify_send(tmp_path: Path, body: str = "") -> tuple[str, Path]:
    """A notify-send that records its argv (one line, fields split by 0x1f)."""
    log = tmp_path / "notify-send.log"
    program = tmp_path / "notify-send"
    program.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf '%s\\037' \"$a\"; done >>'{log}'\n"
        f"echo >>'{log}'\n{body}\n"
    )
    program.chmod(0o755)
    return str(program), log


def recorded(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]


class TestRuleField:
    def test_off_unless_asked(self) -> None:
        (rule,) = parse_rules([BUSY], "sysmon.toml")
        assert rule.notify is False
        (rule,) = parse_rules([{**BUSY, "notify": True}], "sysmon.toml")
        assert rule.notify is True

    @pytest.mark.parametrize("bad", ["yes", 1, 0, None, []])
    def test_not_a_boolean_is_an_error_naming_the_rule(self, bad: object) -> None:
        with pytest.raises(ConfigError, match=r"rule 'cpu-busy': notify must be true or false"):
            config_from_mapping({"rules": [{**BUSY, "notify": bad}]}, "sysmon.toml")

    def test_settings(self) -> None:
        config = config_from_mapping(
            {"notify_every": 60, "notify_burst": 3, "notify_timeout": 2}, "sysmon.toml"
        )
        assert (config.notify_every, config.notify_burst, config.notify_timeout) == (60.0, 3, 2.0)
        with pytest.raises(ConfigError, match="notify_burst must be a whole number"):
            config_from_mapping({"notify_burst": 1.5}, "sysmon.toml")
        with pytest.raises(ConfigError, match="notify_timeout must be above 0"):
            config_from_mapping({"notify_timeout": 0}, "sysmon.toml")

    def test_the_shipped_rules_notify_once_uncommented(self, tmp_path: Path) -> None:
        """config/sysmon.toml's rules, the "#" removed, load with notify on."""
        text = (Path(__file__).resolve().parent.parent / "config" / "sysmon.toml").read_text()
        rules = re.sub(r"(?m)^#(?=\[\[rules|\w+ = )", "", text)
        (tmp_path / "sysmon.toml").write_text(rules)
        config = load_config(tmp_path / "sysmon.toml")
        assert [(r.name, r.notify) for r in config.rules] == [
            ("cpu-busy", True),
            ("polls-failing", True),
        ]

    def test_no_notifier_without_a_rule_that_asks(self) -> None:
        assert notifier_for(Config()) is None
        rules = parse_rules([BUSY], "x")
        assert notifier_for(Config(rules=rules)) is None
        rules = parse_rules([{**BUSY, "notify": True}], "x")
        assert notifier_for(Config(rules=rules)) is not None


def event(rule: str = "r", vm: str = "work", t: float = 0.0) -> Event:
    return Event(rule, vm, "firing", TS.timestamp() + t, 97.5, TS.timestamp())


class TestLimiter:
    def test_one_per_rule_and_qube_per_interval_then_a_summary(self) -> None:
        limiter = Limiter(every=300, burst=5)
        assert len(limiter.admit([event()], 0)) == 1
        assert limiter.admit([event(), event()], 10) == []  # same rule and qube
        assert len(limiter.admit([event(vm="other")], 20)) == 1
        assert limiter.held == 2
        assert limiter.admit([], 309) == []  # an interval after the first held back
        assert limiter.admit([], 310) == [
            (
                "sysmon: 2 more notifications held back",
                "since 12:00:00 UTC: every rule alert is in alerts.csv",
            ),
        ]
        assert limiter.held == 0
        assert len(limiter.admit([event()], 311)) == 1  # the interval has passed

    def test_a_storm_is_capped(self) -> None:
        limiter = Limiter(every=60, burst=3)
        storm = [event(vm=f"q{i}") for i in range(100)]
        assert len(limiter.admit(storm, 0)) == 3
        assert limiter.held == 97
        (summary,) = limiter.admit([], 60)
        assert summary[0] == "sysmon: 97 more notifications held back"

    def test_disposables_cannot_take_the_burst_from_other_qubes(self) -> None:
        """Any qube may start disposables, each a new name dom0 gives: five of
        them firing every interval took the whole burst, and an honest qube's
        notification was only counted in a summary.  Disposables together have
        one notification an interval, whatever the rule."""
        limiter = Limiter(every=300, burst=5)
        storm = [event(rule=rule, vm=f"disp{i}") for i in range(1, 6) for rule in "ab"]
        assert len(limiter.admit(storm, 0)) == 1
        assert limiter.held == 9
        assert [title for title, _ in limiter.admit([event(vm="work")], 10)] == [
            "sysmon: r firing on work"
        ]
        assert limiter.admit([event(vm="disp7")], 20) == []
        assert [title for title, _ in limiter.admit([event(vm="disp8")], 301)] == [
            "sysmon: 10 more notifications held back",
            "sysmon: r firing on disp8",
        ]

    def test_one_qube_with_several_notifying_rules_cannot_take_the_burst(self) -> None:
        """With three notifying rules, one qube firing (or flapping) all of them
        every poll, and its disposables, held the whole burst for ever: its
        three, the disposables' one and the summary its held-back events made,
        renewed each interval.  An honest qube's notification was only counted.
        The last one of the burst is kept for a qube that had none in the
        interval."""
        limiter = Limiter(every=300, burst=5)
        told: list[str] = []
        for tick in range(360):  # an hour of polls
            now = tick * 10.0
            storm = [event(rule, "evil", now) for rule in "abc"]
            storm += [event(rule, f"disp{tick}", now) for rule in "abc"]
            if tick in {100, 200, 300}:
                storm.append(event("a", "work", now))
            told += [title for title, _ in limiter.admit(storm, now)]
        assert told.count("sysmon: a firing on work") == 3
        # The flooder still gets its own, and what is held back is said.
        assert told.count("sysmon: a firing on evil") >= 12
        assert any("held back" in title for title in told)

    def test_the_last_of_the_burst_is_for_a_qube_that_had_none(self) -> None:
        limiter = Limiter(every=300, burst=3)
        assert len(limiter.admit([event("a", "evil"), event("b", "evil")], 0)) == 2
        assert limiter.admit([event("c", "evil"), event("a", "disp1")], 1) == []
        (sent,) = limiter.admit([event("a", "work")], 2)
        assert sent[0] == "sysmon: a firing on work"
        assert limiter.admit([event("a", "mail")], 3) == []  # the burst is spent
        assert limiter.held == 3

    def test_a_burst_of_one_is_anyones(self) -> None:
        limiter = Limiter(every=300, burst=1)
        assert len(limiter.admit([event("a", "disp1")], 0)) == 1
        assert [t for t, _ in limiter.admit([], 300)] == []  # nothing held
        limiter.admit([event("a", "work"), event("b", "work")], 301)
        assert [t for t, _ in limiter.admit([], 601)] == ["sysmon: 1 more notification held back"]

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.floats(0, 100, allow_nan=False),
                st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from("xyz")), max_size=8),
            ),
            max_size=40,
        ),
        st.floats(1, 60, allow_nan=False),
        st.integers(1, 6),
    )
    def test_limits_hold_and_nothing_is_lost(
        self, steps: list[tuple[float, list[tuple[str, str]]]], every: float, burst: int
    ) -> None:
        """Per (rule, qube) one per interval; at most ``burst`` in any interval;
        every event is either sent or counted in a summary."""
        limiter = Limiter(every=every, burst=burst)
        now, sent, total, told = 0.0, [], 0, 0
        for gap, pairs in steps:
            now += gap
            events = [event(rule, vm) for rule, vm in pairs]
            total += len(events)
            for title, _body in limiter.admit(events, now):
                sent.append((now, title))
        quiet = now + 2 * every  # a quiet tick, an interval after (with rounding's margin)
        for title, _body in limiter.admit([], quiet):
            sent.append((quiet, title))
        per_key: dict[str, float] = {}
        for t, title in sent:
            if "held back" in title:
                told += int(title.split()[1])
                continue
            assert title not in per_key or t - per_key[title] >= every
            per_key[title] = t
        times = [t for t, _ in sent]
        for t in times:
            assert sum(t <= u < t + every for u in times) <= burst
        assert sum("held back" not in title for _, title in sent) + told == total


class TestText:
    @given(st.text())
    def test_only_plain_characters_reach_a_notification(self, text: str) -> None:
        assert set(safe(text)) <= ALLOWED
        assert len(safe(text)) <= 200

    def test_a_qubes_bytes_never_reach_the_text(self) -> None:
        """An interface named with markup and escape sequences fires a rule: the
        alert row keeps it (quoted by the CSV), the notification does not."""
        rules = parse_rules(
            [
                {
                    "name": "rx",
                    "file": "network",
                    "expr": "rx_bytes",
                    "op": ">",
                    "value": 1,
                    "notify": True,
                }
            ],
            "x",
        )
        hostile = "<b>e</b>&\x1b]0;pwn\x07"
        row = encode_row(
            schema.NETWORK,
            {"ts": TS, "vm": "work", "if": hostile, "rx_bytes": 5, "tx_bytes": 0},
        )
        fired, after = evaluate(rules, TS.timestamp(), {"network.csv": [row]}, {})
        assert fired
        assert "<b>e</b>&" in fired[0][1]
        assert "pwn" in fired[0][1]
        batches = [AlertBatch(vm, (alert_row(TS, vm, message),), None) for vm, message in fired]
        (ev,) = rule_events(rules, batches, {}, after, TS.timestamp())
        assert (ev.rule, ev.vm, ev.kind, ev.value) == ("rx", "work", "firing", 5.0)
        for text in (ev.title(), ev.body()):
            assert set(text) <= ALLOWED
            assert "pwn" not in text
            assert "<" not in text

    def test_a_journal_line_dressed_as_a_rule_alert_notifies_nothing(self) -> None:
        """A qube's journal rows begin with their entry's time: never sysmon's words."""
        rules = parse_rules([{**BUSY, "notify": True}], "x")
        forged = "2025-08-31T11:59:59.000000Z sysmon: rule cpu-busy firing on work: (now 1)"
        batch = AlertBatch("work", (alert_row(TS, "work", forged),), None)
        assert rule_events(rules, [batch], {}, {}, TS.timestamp()) == []

    def test_a_name_dom0_would_not_list_is_left_out(self) -> None:
        rules = parse_rules([{**BUSY, "notify": True}], "x")
        vm = "<i>x"
        message = "sysmon: rule cpu-busy firing on <i>x: cpu_user > 5 (now 9)"
        batch = AlertBatch(vm, (alert_row(TS, vm, message),), None)
        assert rule_events(rules, [batch], {}, {}, TS.timestamp()) == []

    def test_since_and_value(self) -> None:
        rules = parse_rules([{**BUSY, "notify": True, "for": "5m"}], "x")
        start = TS.timestamp() - 400
        state = {"cpu-busy\0work\0": RuleState(since=start, polls=40, firing=True)}
        message = "sysmon: rule cpu-busy firing on work: cpu_user > 5 for 300s (now 97.5)"
        batch = AlertBatch("work", (alert_row(TS, "work", message),), None)
        (ev,) = rule_events(rules, [batch], {}, state, TS.timestamp())
        assert ev.title() == "sysmon: cpu-busy firing on work"
        assert ev.body() == "value 97.5, since 11:53:20 UTC, at 12:00:00 UTC (alerts.csv)"

    def test_disposables_flapping_many_instances_cost_linear_time(self) -> None:
        """Each disposable may flap 64 interfaces on each notifying rule every
        poll: every event scanned the whole rule state for its start, on the
        daemon's event loop: 40 of them on 3 rules, 7,680 events, took 3.3 s a
        tick here (20: 0.8 s), quadratic.  The starts are indexed once."""
        rules = parse_rules(
            [{**BUSY, "name": f"r{k}", "file": "network", "expr": "rx_bytes", "notify": True}
             for k in range(3)],
            "x",
        )  # fmt: skip
        state, batches = {}, []
        for d in range(40):
            vm = f"disp{d + 1000}"
            rows = []
            for k in range(3):
                for i in range(64):
                    state[f"r{k}\0{vm}\0eth{i}"] = RuleState(since=TS.timestamp() - i, polls=1)
                    message = f"sysmon: rule r{k} firing on {vm} eth{i}: rx_bytes > 5 (now 9)"
                    rows.append(alert_row(TS, vm, message))
            batches.append(AlertBatch(vm, tuple(rows), None))
        started = time.perf_counter()
        found = rule_events(rules, batches, {}, state, TS.timestamp())
        assert time.perf_counter() - started < 1.0
        assert len(found) == 40 * 3 * 64
        assert {ev.since for ev in found} == {TS.timestamp() - 63}

    def test_argv_ends_options_before_the_texts(self) -> None:
        argv = notify_argv("notify-send", "-x", "--y", urgent=True)
        assert argv[-3:] == ["--", "-x", "--y"]
        assert "--urgency=critical" in argv


def collector(tmp_path: Path, program: str, **config: object) -> Daemon:
    """A daemon on the real clock, file work inline, polled a tick at a time."""
    rules = parse_rules([{**BUSY, "notify": True}], "x")
    cfg = Config(out_dir=tmp_path / "out", rules=rules, **config)  # type: ignore[arg-type]
    notifier = notifier_for(cfg)
    assert notifier is not None
    notifier.program = program
    qubes = FakeQubes({"a": "ok", "b": "ok"})
    uses = Collaborators(
        committer=functools.partial(commit_tick, sync=False),
        notify=lambda _message: None,
        offload=inline,
        parse_offload=inline,
    )
    return Daemon(cfg, qubes, qubes, uses, notifier=notifier)


async def ticks(daemon: Daemon, n: int) -> None:
    for i in range(n):
        await daemon.run_tick(TS + timedelta(seconds=10 * i))


class TestDaemon:
    async def test_a_firing_rule_notifies_once_per_qube(self, tmp_path: Path) -> None:
        program, log = fake_notify_send(tmp_path)
        daemon = collector(tmp_path, program)
        await ticks(daemon, 4)
        calls = recorded(log)
        assert sorted(c[-2] for c in calls) == [
            "sysmon: cpu-busy firing on a",
            "sysmon: cpu-busy firing on b",
        ]
        for call in calls:
            assert call[:3] == ["--app-name=sysmon", "--urgency=critical", "--"]
            assert call[-1].startswith("value 10, since 12:00:10 UTC, at 12:00:10 UTC")
        alerts = read_day(tmp_path / "out" / "2025-08-31")["alerts.csv"]
        assert sum("rule cpu-busy firing" in r["msg"] for r in alerts) == 2  # the record

    async def test_a_rule_without_notify_sends_nothing(self, tmp_path: Path) -> None:
        program, log = fake_notify_send(tmp_path)
        daemon = collector(tmp_path, program)
        assert daemon.notifier is not None
        daemon.notifier.rules = parse_rules([BUSY], "x")
        await ticks(daemon, 3)
        assert recorded(log) == []

    @pytest.mark.parametrize(
        ("how", "said"),
        [
            ("missing", "No such file"),
            ("exit 1", "exited 1: no server"),
            ("sleep 100", "no answer within 0.5 s"),
        ],
    )
    async def test_undelivered_is_logged_once_and_costs_nothing_else(
        self, tmp_path: Path, how: str, said: str
    ) -> None:
        if how == "missing":
            program = str(tmp_path / "no-such-notify-send")
        else:
            program, _log = fake_notify_send(tmp_path, f"echo no server >&2; {how}")
        daemon = collector(tmp_path, program, notify_timeout=0.5, notify_every=1)
        with capture_logs() as logs:
            await ticks(daemon, 3)
            await trio.sleep(1)  # past notify_every: the same pairs again
            await daemon.run_tick(TS + timedelta(seconds=30))
        assert daemon.notifier is not None
        assert daemon.notifier.failed >= 2
        warned = [e for e in logs if e["event"] == "notification_not_delivered"]
        assert len(warned) == 1
        assert said in warned[0]["error"]
        files = read_day(tmp_path / "out" / "2025-08-31")
        assert len(files["system.csv"]) == 8  # every tick's rows
        assert sum("firing" in r["msg"] for r in files["alerts.csv"]) == 2
        if how == "sleep 100":  # the hung notify-send's group is gone
            assert (
                subprocess.run(
                    ["pgrep", "-f", f"{tmp_path}/notify-send"], capture_output=True, check=False
                ).returncode
                == 1
            )


SESSION_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={socket}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/>
<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>
"""


def _wait_for(path: Path, text: str) -> None:
    for _ in range(400):
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{path}: no {text!r}")


@pytest.mark.slow
def test_the_real_notify_send_reaches_a_notification_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notify-send (libnotify-bin) on a private session bus (dbus-daemon), to a
    small org.freedesktop.Notifications server that records what it is shown."""
    notify_send = require_tool("notify-send")
    dbus_daemon = require_tool("dbus-daemon")
    bus_socket = tmp_path / "bus"
    (tmp_path / "session.conf").write_text(SESSION_CONF.format(socket=bus_socket))
    shown = tmp_path / "shown.log"
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={bus_socket}")
    children = []
    try:
        children.append(
            subprocess.Popen(
                [dbus_daemon, f"--config-file={tmp_path / 'session.conf'}", "--nofork"],
                stderr=subprocess.DEVNULL,
            )
        )
        _wait_for_socket(bus_socket)
        server = Path(__file__).with_name("notification_server.py")
        children.append(subprocess.Popen([sys.executable, str(server), str(shown)]))
        _wait_for(shown, "ready")
        rules = parse_rules([{**BUSY, "notify": True}], "x")
        notifier = Notifier(rules, 300, 5, 10, program=notify_send)
        notifier.queue.append(("sysmon: cpu-busy firing on work", "value 97.5, since 12:00 UTC"))
        trio.run(notifier.deliver)
        assert (notifier.sent, notifier.failed, notifier.last_error) == (1, 0, None)
        _wait_for(shown, "cpu-busy")
        assert shown.read_text().splitlines()[1:] == [
            "sysmon\tsysmon: cpu-busy firing on work\tvalue 97.5, since 12:00 UTC"
        ]
        # The server gone: undelivered, said once, nothing else.
        children[-1].terminate()
        children[-1].wait(timeout=10)
        notifier.queue.append(("sysmon: cpu-busy resolved on work", "value 3"))
        with capture_logs() as logs:
            trio.run(notifier.deliver)
        assert (notifier.sent, notifier.failed) == (1, 1)
        assert [e["event"] for e in logs] == ["notification_not_delivered"]
    finally:
        for child in reversed(children):
            child.terminate()
            child.wait(timeout=10)


def _wait_for_socket(path: Path) -> None:
    for _ in range(400):
        if path.exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"no bus at {path}")
