"""Desktop notifications of the rules that ask for them, through ``notify-send``.

The daemon hands :meth:`Notifier.watch` each tick's plan and, once the tick
is committed, :meth:`Notifier.committed` its outcome: the rule alerts of a
kept tick go through the limiter (transform/notify.py).  :meth:`deliver`
then runs ``notify-send`` (Debian's libnotify-bin) on the user's session bus
through the bounded runner, one at a time, each under ``timeout`` seconds.
On Qubes 4.3 the qube's notification proxy carries it to dom0; on 4.2 the
qube's own notification daemon draws it (docs/notifications.md).  The row
in alerts.csv is the record: a notification that cannot be delivered (no
notify-send, no bus, no server) is logged once, until one gets through,
and costs nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime

import attrs
import structlog
import trio

from sysmon import events
from sysmon.collect.process import run_bounded
from sysmon.config import Config
from sysmon.records import State, TickOutcome, TickRows
from sysmon.transform.notify import Limiter, rule_events
from sysmon.transform.rules import Rule

Plan = Callable[[State], TickRows]
#: Notifications waiting for notify-send; the limiter keeps it far below.
MAX_QUEUED = 64


def notify_argv(program: str, title: str, body: str, *, urgent: bool) -> list[str]:
    """notify-send's command line: options, then ``--``, then the two texts."""
    return [
        program,
        "--app-name=sysmon",
        f"--urgency={'critical' if urgent else 'normal'}",
        "--",
        title,
        body,
    ]


@attrs.define
class Notifier:
    """The rules' notifications: watch a tick, limit, deliver."""

    rules: tuple[Rule, ...]
    every: float
    burst: int
    timeout: float
    program: str = "notify-send"
    limiter: Limiter = attrs.field()
    queue: deque[tuple[str, str]] = attrs.field(factory=deque)
    #: Notifications handed to notify-send, and those it did not take.
    sent: int = 0
    failed: int = 0
    last_error: str | None = None
    #: The demo says it in its own words instead.
    log_failures: bool = True
    _watched: list[tuple[float, TickRows, State]] = attrs.field(factory=list)
    _lock: trio.Lock = attrs.field(factory=trio.Lock)
    _failing: bool = False

    @limiter.default
    def _limiter(self) -> Limiter:
        return Limiter(self.every, self.burst)

    @property
    def enabled(self) -> bool:
        """Any rule asks to notify."""
        return any(r.notify for r in self.rules)

    def watch(self, plan: Plan, ts: datetime) -> Plan:
        """``plan``, keeping what it built (it runs in the commit's thread)."""
        if not self.enabled:
            return plan
        self._watched.clear()  # a commit that raised left its tick here: not kept

        def watched(previous: State) -> TickRows:
            built = plan(previous)
            self._watched.append((ts.timestamp(), built, previous))
            return built

        return watched

    def committed(self, outcome: TickOutcome) -> None:
        """The watched tick is done: its rule alerts, if kept, go to the limiter."""
        watched, self._watched = self._watched, []
        if not self.enabled:
            return
        kept = outcome.skipped is None and not any(e.startswith("state: ") for e in outcome.errors)
        events = []
        for ts, built, previous in watched if kept else ():
            events += rule_events(self.rules, built.alerts, previous.rules, built.rule_state, ts)
        # trio's clock: a step of the wall clock neither floods nor silences.
        for title, body in self.limiter.admit(events, trio.current_time()):
            if len(self.queue) < MAX_QUEUED:
                self.queue.append((title, body))

    async def deliver(self) -> None:
        """Send what is queued, one notify-send at a time."""
        async with self._lock:
            while self.queue:
                title, body = self.queue.popleft()
                await self._send(title, body)

    async def _send(self, title: str, body: str) -> None:
        log = structlog.get_logger()
        # "sysmon: RULE firing on QUBE": a rule's name has no space.
        urgent = title.split(" ")[2:3] == ["firing"]
        argv = notify_argv(self.program, title, body, urgent=urgent)
        error = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                result = await run_bounded(argv, max_stdout=4096, max_stderr=1024)
            except OSError as exc:
                error = f"{self.program}: {exc.strerror or exc}"
            else:
                if result.returncode != 0:
                    said = result.stderr.decode("ascii", errors="replace").strip()
                    error = f"{self.program} exited {result.returncode}: {said[:200]}"
        if scope.cancelled_caught:
            error = f"{self.program}: no answer within {self.timeout:g} s"
        if error is None:
            self.sent += 1
            if self._failing:
                log.info(events.NOTIFICATION_DELIVERED_AGAIN)
            self._failing = False
            return
        self.failed += 1
        self.last_error = error
        if not self._failing and self.log_failures:  # once, until one gets through
            log.warning(events.NOTIFICATION_NOT_DELIVERED, error=error, record="alerts.csv")
        self._failing = True


def notifier_for(config: Config) -> Notifier | None:
    """The daemon's notifier, when some rule asks to notify."""
    notifier = Notifier(
        config.rules, config.notify_every, config.notify_burst, config.notify_timeout
    )
    return notifier if notifier.enabled else None
