"""The nouns every layer shares.

A poll's result, a qube's remembered state, a tick's rows and what committing
them did.  Pure: no I/O, no trio.

What the protocol parses (``Snapshot``, ``QubeInfo``, ``DomainStats``) is
defined in :mod:`sysmon.protocol`; what is built from it lives here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from sysmon.protocol.metrics import Snapshot


class Status(enum.StrEnum):
    """A poll's outcome: the ``status`` column of scrapes.csv."""

    OK = "ok"
    TIMEOUT = "timeout"
    REFUSED = "refused"  # qrexec 126
    NO_SERVICE = "no-service"  # qrexec 127
    TOO_BIG = "too-big"  # over a cap; rows within the caps are kept
    BAD_OUTPUT = "bad-output"  # no valid sys: line
    ERROR = "error"  # any other exit, 125, a signal
    SKIPPED = "skipped"  # not polled this tick: in flight, or backing off
    OVER_BUDGET = "over-budget"  # polled, but past its daily budget: no metric rows


@attrs.frozen
class Budget:
    """Each qube's share of sys-monitor per UTC day.

    ``bytes_per_day``: the bytes its rows may take (metric rows and journal
    alerts); past it, its metric rows stop until midnight UTC.
    ``names_per_day``: distinct interface and filesystem names; rows for a
    new name past it are dropped.  ``cursor_seen``: digests an alert cursor
    keeps of the entries filed at its microsecond.  ``alert_percent``: the
    part of ``bytes_per_day`` its journal alerts may take (past it they wait
    for tomorrow; its metric rows keep the rest).  ``dispvm_bytes_per_day``:
    what all disposables together may take; ``new_bytes_per_day``: what all
    qube names first seen today together may take (each still within its
    own ``bytes_per_day``).
    """

    bytes_per_day: int = 16 * 1024 * 1024
    names_per_day: int = 256
    cursor_seen: int = 64
    alert_percent: int = 25
    dispvm_bytes_per_day: int = 32 * 1024 * 1024
    new_bytes_per_day: int = 32 * 1024 * 1024

    @property
    def alert_bytes_per_day(self) -> int:
        """The journal alerts' share of a qube's day."""
        return self.bytes_per_day * self.alert_percent // 100


@attrs.frozen
class ScrapeResult:
    """The outcome of polling one qube once."""

    vm: str
    status: Status = attrs.field(converter=Status)
    duration_ms: int
    n_bytes: int = 0
    lines_ok: int = 0
    lines_rejected: int = 0
    snapshot: Snapshot | None = None
    detail: str = ""


def boot_cursor_id(boot_id: str) -> str:
    """How the cursor names a boot: the first 16 characters without dashes.

    64 bits tell boots apart; the whole id would make ``SERVICE+ARG`` long.
    """
    return boot_id.replace("-", "")[:16]


@attrs.frozen
class AlertCursor:
    """Where a qube's alerts stand.

    Its boot, the newest entry's time, how many entries were filed at
    exactly that microsecond (``filed``), and digests of the first of them
    (``seen``, at most ``Budget.cursor_seen``): the handler skips ``filed``
    entries there, the digests drop what a handler that ignored the cursor
    sends again.  A qube stamping every line with one microsecond grows
    ``filed``, a number, not the state file.
    """

    boot_id: str
    ts_us: int
    seen: frozenset[str] = frozenset()
    filed: int = attrs.field()

    @filed.default
    def _filed(self) -> int:
        return len(self.seen)

    @filed.validator
    def _check_filed(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if value < len(self.seen):
            raise ValueError(f"cursor: {value} filed, fewer than {len(self.seen)} seen")

    def argument(self) -> str:
        """The cursor as the handler's service argument (``[A-Za-z0-9_.-]``).

        The last part tells the handler how many entries of exactly that
        microsecond to skip, so a burst larger than its line cap still moves.
        """
        return f"{boot_cursor_id(self.boot_id)}.{self.ts_us}.{self.filed}"


@attrs.frozen
class QubeState:
    """What the collector remembers of one qube between polls.

    ``day`` (UTC, ``YYYY-MM-DD``), ``day_bytes`` and ``over_budget`` are its
    share of the disk today; ``day_names`` the interface and filesystem
    names it used today, each as an 8-hex-digit digest (the cap on names
    bounds what it adds to the state file: 11 bytes a name).
    """

    boot_id: str | None = None
    cpu_ticks: tuple[int, ...] | None = None
    cursor: AlertCursor | None = None
    day: str = ""
    day_bytes: int = 0
    over_budget: bool = False
    day_names: frozenset[str] = frozenset()
    #: The UUID dom0 listed (4.3): another one under this name is another
    #: qube, and starts with a fresh allowance.
    uuid: str | None = None
    #: The UTC day this name was first sampled ("" for before, or a fresh
    #: start): names first seen today share ``Budget.new_bytes_per_day``.
    first_day: str = ""
    #: Today's journal alert bytes, whether they reached their share, and
    #: the identifiers that wrote the most of them (at most four).
    alert_bytes: int = 0
    alerts_over: bool = False
    alert_by: tuple[tuple[str, int], ...] = ()


@attrs.frozen
class PoolState:
    """A budget qubes share for the UTC day (all disposables; names new today).

    ``by``: the members that spent the most of it (at most four), to say who;
    ``told``: the members told in ``alerts.csv`` that it stopped them.
    """

    day: str
    day_bytes: int = 0
    over: bool = False
    by: tuple[tuple[str, int], ...] = ()
    told: int = 0


@attrs.frozen
class PendingTick:
    """A tick being written: each daily file's size before it.

    Saved before the first row is appended and cleared by the final save;
    found after a crash, every file is cut back to these sizes -- the tick
    is rolled back whole, in every file, and no qube's state (alert cursor)
    moved, so its entries are filed at the next poll, once.
    """

    folder: str
    sizes: tuple[tuple[str, int], ...]


@attrs.frozen
class QubeView:
    """One qube's counters at its last sample, and where its disagreement of views stands."""

    cpu_ticks: tuple[int, ...] | None = None
    boot_id: str | None = None
    net_bytes: int | None = None
    #: The tick of ``cpu_ticks`` and ``net_bytes``.
    sampled: float | None = None
    #: When the current run of disagreeing (or agreeing) ticks began.
    disagree_since: float | None = None
    last_disagree: float | None = None
    agree_since: float | None = None
    alerted: bool = False


#: Qubes the views keep: as many as dom0's list may name (protocol.admin.MAX_QUBES).
MAX_VIEW_QUBES = 10_000
#: Vif readings the views keep: far above a real host's (one or two a qube);
#: a hostile qube naming vifs cannot grow the state file past it.
MAX_VIEW_VIFS = 4096


@attrs.frozen
class ViewsState:
    """Where the comparison of views stands (sysmon.transform.views): saved with the state.

    Per qube its counters and sustain clock; per (netvm, vif, qube) the
    vif's bytes and the tick they were read at; per qube served, the netvm
    that last reported its vifs alone.
    """

    qubes: Mapping[str, QubeView] = attrs.field(factory=dict)
    vifs: Mapping[tuple[str, str, str], tuple[int, float]] = attrs.field(factory=dict)
    served_by: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class State:
    """The whole state file."""

    qubes: Mapping[str, QubeState] = attrs.field(factory=dict)
    last_ts: int = 0
    pending: PendingTick | None = None
    rules: Mapping[str, RuleState] = attrs.field(factory=dict)
    pools: Mapping[str, PoolState] = attrs.field(factory=dict)
    views: ViewsState = attrs.field(factory=ViewsState)


@attrs.frozen
class RuleState:
    """Where one rule stands for one qube (and interface or mount)."""

    since: float
    polls: int
    firing: bool = False
    #: When its row was last seen (defaults to ``since``): an instance whose
    #: row stops coming -- a qube gone, a name vanished -- is dropped after a
    #: grace period.
    seen: float = attrs.field()

    @seen.default
    def _seen(self) -> float:
        return self.since


@attrs.frozen
class Row:
    """One row of a daily file: its values keyed by column, and its line.

    The transform and the rules work on ``values``; ``line`` is their
    encoding (``DailyFile.encode``), made once where the daily budget needs
    the row's size, and is what the store appends -- nothing is decoded back.
    """

    file: str
    values: Mapping[str, object]
    line: bytes = attrs.field(eq=False, repr=False)


@attrs.frozen
class AlertBatch:
    """One qube's alert rows of a tick and the state to commit after them.

    ``view``: for an alert of its views, where they stand once it is written
    (until then the tick's :attr:`TickRows.views` keeps the qube's view as it
    was, so an alert a full disk cut is told again, not lost).
    """

    vm: str
    rows: tuple[Row, ...]
    next_state: QubeState | None
    view: QubeView | None = None


@attrs.frozen
class TickRows:
    """Everything a tick writes.  ``rows`` maps file name to rows (no alerts)."""

    rows: Mapping[str, tuple[Row, ...]]
    alerts: tuple[AlertBatch, ...]
    states: Mapping[str, QubeState]
    restarted: tuple[str, ...] = ()
    #: Where every threshold rule stands after this tick.
    rule_state: Mapping[str, RuleState] = attrs.field(factory=dict)
    #: Qubes not sampled for days (a DispVM gone): their state is dropped.
    forget: tuple[str, ...] = ()
    #: The shared budgets after this tick.
    pools: Mapping[str, PoolState] = attrs.field(factory=dict)
    #: The views after this tick; None: not compared (no stats stream), kept as they were.
    views: ViewsState | None = None


@attrs.frozen
class TickOutcome:
    """What a commit did.  ``skipped`` says why nothing was written."""

    written: dict[str, int] = attrs.field(factory=dict)
    dropped: dict[str, int] = attrs.field(factory=dict)
    errors: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    skipped: str | None = None
    #: Seconds the clock had stepped back past the newest row, when this
    #: commit wrote anyway (the clock that ran ahead was wrong).
    stepped_back: float | None = None
    #: Daily files that were not sysmon's (a symlink, a FIFO, a wrong
    #: header), moved aside under these names in the day's folder.
    moved_aside: tuple[str, ...] = ()

    @property
    def rows_dropped(self) -> int:
        """Rows of this tick that could not be written."""
        return sum(self.dropped.values())
