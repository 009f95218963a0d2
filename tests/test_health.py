"""Per-qube health and backoff: pure, no trio."""

from __future__ import annotations

import math

from sysmon.collect.health import Health, backoff_delay
from sysmon.records import ScrapeResult, Status


def result(vm: str, status: str) -> ScrapeResult:
    return ScrapeResult(vm, status, 1)


class TestBackoff:
    def test_doubles_from_one_interval_and_caps(self):
        """20 s, 40 s, ... then 5 min."""
        assert [backoff_delay(10, n) for n in range(1, 8)] == [0, 20, 40, 80, 160, 300, 300]


class TestHealth:
    def test_a_refusing_qube_waits_and_is_skipped_meanwhile(self):
        """After two refusals the qube waits 20 s; until then it is skipped as backoff."""
        health = Health(interval=10)
        health.record([result("deny", "refused")], now=0)
        health.record([result("deny", "refused")], now=10)
        poll, skipped = health.plan(["deny", "ok"], now=20)
        assert poll == ["ok"]
        assert [(r.vm, r.status, r.detail) for r in skipped] == [
            ("deny", Status.SKIPPED, "backoff")
        ]
        assert health.plan(["deny"], now=30)[0] == ["deny"]

    def test_in_flight_is_skipped_never_polled_twice(self):
        health = Health(interval=10)
        health.set_in_flight(["slow"], in_flight=True)
        poll, skipped = health.plan(["slow"], now=0)
        assert (poll, skipped[0].detail) == ([], "in flight")
        health.set_in_flight(["slow"], in_flight=False)
        assert health.plan(["slow"], now=0)[0] == ["slow"]

    def test_status_changes_are_reported_once(self):
        """One change per change, and recovery resets the backoff."""
        health = Health(interval=10)
        changes = [
            health.record([result("q", s)], now=float(i))
            for i, s in enumerate(["refused", "refused", "ok"])
        ]
        assert [[(c.status, c.was) for c in cs] for cs in changes] == [
            [(Status.REFUSED, None)],
            [],
            [(Status.OK, Status.REFUSED)],
        ]
        assert health.qubes["q"].next_attempt == -math.inf

    def test_qubes_gone_from_the_list_are_forgotten(self):
        health = Health(interval=10)
        health.record([result("dispvm1", "ok"), result("work", "ok")], now=0)
        health.keep_only(["work"])
        assert set(health.qubes) == {"work"}
