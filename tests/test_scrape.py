"""scrape_round on virtual time, with a fake transport (no processes)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import attrs
import trio
import trio.lowlevel

from sysmon.collect import scrape
from sysmon.collect.process import ProcessResult
from sysmon.collect.scrape import scrape_round

GOOD = b"sys: protocol=1 boot_id=b btime=1\n"


@attrs.define
class FakeTransport:
    """Each qube answers as told.

    bytes, ("exit", n), ("slow", s), "hang", "oserror", "flood" (stdout), "stderr-flood".
    """

    behaviours: dict[str, object]
    running: int = 0
    max_running: int = 0
    argv_seen: list[list[str]] = attrs.field(factory=list)

    def metrics_argv(self, target: str, argument: str) -> list[str]:
        return [target, argument]

    async def call(
        self, argv: Sequence[str], *, max_stdout: int, env: Mapping[str, str] | None = None
    ) -> ProcessResult:
        self.argv_seen.append(list(argv))
        behaviour = self.behaviours[argv[0]]
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if behaviour == "hang":
                await trio.sleep_forever()
            if behaviour == "oserror":
                raise FileNotFoundError(2, "No such file or directory")
            if behaviour == "flood":
                return ProcessResult(-9, GOOD + b"x" * max_stdout, b"", stdout_overflow=True)
            if behaviour == "stderr-flood":
                return ProcessResult(-9, GOOD, b"y\n" * 2048, stderr_overflow=True)
            if isinstance(behaviour, tuple) and behaviour[0] == "slow":
                await trio.sleep(behaviour[1])
                return ProcessResult(0, GOOD, b"")
            if isinstance(behaviour, tuple) and behaviour[0] == "exit":
                return ProcessResult(behaviour[1], b"", b"Request refused\n")
            assert isinstance(behaviour, bytes)
            return ProcessResult(0, behaviour, b"")
        finally:
            self.running -= 1


class TestScrapeRound:
    async def test_every_failure_has_its_status(self, autojump_clock):
        transport = FakeTransport(
            {
                "ok": GOOD,
                "hang": "hang",
                "refused": ("exit", 126),
                "nosvc": ("exit", 127),
                "qrexec": ("exit", 125),
                "other": ("exit", 3),
                "garbage": b"\x00\x01",
                "oserror": "oserror",
                "flood": "flood",
                "stderr-flood": "stderr-flood",
            }
        )
        vms = list(transport.behaviours)
        results = await scrape_round(transport, vms, {}, per_qube_timeout=8, concurrency=4)
        assert [r.vm for r in results] == vms
        assert {r.vm: r.status for r in results} == {
            "ok": "ok",
            "hang": "timeout",
            "refused": "refused",
            "nosvc": "no-service",
            "qrexec": "error",
            "other": "error",
            "garbage": "bad-output",
            "oserror": "error",
            "flood": "too-big",
            "stderr-flood": "too-big",
        }

    async def test_a_hung_qube_costs_only_its_own_timeout(self, autojump_clock):
        """The round ends at the timeout, and the others' durations are untouched."""
        transport = FakeTransport({"hang": "hang", "a": ("slow", 0.2), "b": GOOD})
        start = trio.current_time()
        results = await scrape_round(
            transport, ["hang", "a", "b"], {}, per_qube_timeout=8, concurrency=8
        )
        assert trio.current_time() - start == 8
        durations = {r.vm: r.duration_ms for r in results}
        assert durations == {"hang": 8000, "a": 200, "b": 0}

    async def test_concurrency_cap_and_timeout_starts_after_the_slot(self, autojump_clock):
        """Waiting for a slot does not eat into a qube's own timeout."""
        transport = FakeTransport({f"q{i}": ("slow", 5) for i in range(6)})
        results = await scrape_round(
            transport, list(transport.behaviours), {}, per_qube_timeout=8, concurrency=2
        )
        assert transport.max_running == 2
        assert {r.status for r in results} == {"ok"}

    async def test_cursor_is_passed_per_qube(self, autojump_clock):
        transport = FakeTransport({"a": GOOD, "b": GOOD})
        await scrape_round(
            transport, ["a", "b"], {"a": "abc.1.0"}, per_qube_timeout=1, concurrency=2
        )
        assert sorted(transport.argv_seen) == [["a", "abc.1.0"], ["b", ""]]


async def _loop_turns_during_scrape(transport: FakeTransport) -> int:
    """How often another task ran while ``evil`` was scraped (and its reply parsed)."""
    ran = 0

    async def other_qubes() -> None:
        nonlocal ran
        while True:
            await trio.lowlevel.checkpoint()
            ran += 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_qubes)
            await trio.lowlevel.checkpoint()
            before = ran
            await scrape_round(transport, ["evil"], {}, per_qube_timeout=20, concurrency=1)
            during = ran - before
            nursery.cancel_scope.cancel()
    return during


async def test_a_hostile_payload_is_parsed_off_the_event_loop(monkeypatch):
    """A reply at the caps (~300x a normal parse) does not hold the loop the other
    qubes' polls run on: other tasks keep running while it is parsed (real clock)."""
    lines = [GOOD.rstrip()]
    lines += [b"net: if=eth%04d rx_bytes=1 rx_errs=0 rx_drop=0 tx_bytes=1" % i for i in range(512)]
    lines += [b"alert: %d kernel: %s" % (1_700_000_000_000_000 + i, b"y" * 900) for i in range(200)]
    lines += [b"junk %d =====" % i for i in range(3000)]
    transport = FakeTransport({"evil": b"\n".join(lines)[: 256 * 1024]})
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the GIL changes hands often enough to see it
    try:
        monkeypatch.setattr(scrape, "PARSE_INLINE_MAX", 10**9)
        inline = await _loop_turns_during_scrape(transport)
        monkeypatch.setattr(scrape, "PARSE_INLINE_MAX", 16 * 1024)
        offloaded = await _loop_turns_during_scrape(transport)
    finally:
        sys.setswitchinterval(interval)
    assert offloaded >= 5 * max(inline, 1), (inline, offloaded)
