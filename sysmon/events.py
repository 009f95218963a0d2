"""The log events sysmon writes, named once.

Every structlog event name is declared here, so that the journal's
vocabulary is one list: docs and tests refer to these names, an operator's
``journalctl -u sysmon`` filter stays true, and a rename is one change.
Plain strings (what structlog and the JSON lines carry).  Pure: no imports.
"""

from __future__ import annotations

from typing import Final

# -- the daemon and its ticks --------------------------------------------------
SYSMON_STARTED: Final = "sysmon_started"
SYSMON_STOPPED: Final = "sysmon_stopped"
SIGNAL_RECEIVED: Final = "signal_received"
#: The canonical line of a tick: qubes, ok, failed, skipped, slowest, rows.
TICK_DONE: Final = "tick_done"
TICK_NOT_WRITTEN: Final = "tick_not_written"
TICK_WRITE_FAILED: Final = "tick_write_failed"
TICKS_MISSED: Final = "ticks_missed"
CLOCK_STEPPED: Final = "clock_stepped"
SD_NOTIFY_FAILED: Final = "sd_notify_failed"
STATE_UNREADABLE: Final = "state_unreadable"
HOST_IDENTITY_NOT_WRITTEN: Final = "host_identity_not_written"
HOST_IDENTITY_REFUSED: Final = "host_identity_refused"
HOST_NAME_NOT_WRITTEN: Final = "host_name_not_written"

# -- discovery and polls -------------------------------------------------------
DISCOVERY_FAILED: Final = "discovery_failed"
DISCOVERY_STILL_FAILING: Final = "discovery_still_failing"
DISCOVERY_RECOVERED: Final = "discovery_recovered"
DISCOVERY_LINE_REJECTED: Final = "discovery_line_rejected"
#: The canonical line of one qube's poll: status, duration, bytes, lines, detail.
SCRAPE_DONE: Final = "scrape_done"
QUBE_STATUS_CHANGED: Final = "qube_status_changed"

# -- the files -----------------------------------------------------------------
TICK_ROLLED_BACK: Final = "tick_rolled_back"
TICK_COMMIT_FAILED: Final = "tick_commit_failed"
DAILY_FILE_MOVED_ASIDE: Final = "daily_file_moved_aside"
TORN_LINE_REPAIRED: Final = "torn_line_repaired"
STATE_DAMAGED: Final = "state_damaged"
#: One section of the state (a qube's entry, rules, pools, views) started afresh.
STATE_SECTION_RESET: Final = "state_section_reset"
META_LINK_REMOVED: Final = "meta_link_removed"

# -- the nightly archive -------------------------------------------------------
ARCHIVE_BUSY: Final = "archive_busy"
ARCHIVE_DELIVERED: Final = "archive_delivered"
ARCHIVE_FAILED: Final = "archive_failed"
ARCHIVE_PRUNED: Final = "archive_pruned"

# -- desktop notifications (rules with notify = true) ---------------------------
#: notify-send failed or did not answer: said once, until one gets through.
NOTIFICATION_NOT_DELIVERED: Final = "notification_not_delivered"
NOTIFICATION_DELIVERED_AGAIN: Final = "notification_delivered_again"

# -- dom0's stats stream -------------------------------------------------------
XEN_STATS_BROKEN: Final = "xen_stats_broken"
XEN_STATS_DISABLED: Final = "xen_stats_disabled"
XEN_STATS_RECONNECTING: Final = "xen_stats_reconnecting"

# -- each qube's Xen id (views.csv: a netvm's vifs named by the qube they serve) --
XID_FORGOTTEN: Final = "xid_forgotten"
#: Two running qubes said to have one id: neither is named by it this tick.
XID_CLAIMED_TWICE: Final = "xid_claimed_twice"
XID_NOT_READ: Final = "xid_not_read"

#: Every event name above.
ALL: Final = frozenset(
    value for name, value in tuple(globals().items()) if name.isupper() and isinstance(value, str)
)
