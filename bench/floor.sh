#!/bin/sh
# The floor the handler is measured against: read the same /proc files and
# run df on the same filesystems, nothing else.  Arguments: the mount points.
P=${SYSMON_PROC_ROOT:-/proc}
cat "$P/sys/kernel/random/boot_id" "$P/stat" "$P/loadavg" "$P/meminfo" "$P/net/dev" \
    "$P/net/snmp" "$P/net/sockstat" "$P/self/mountinfo" >/dev/null
[ -r "$P/net/sockstat6" ] && cat "$P/net/sockstat6" >/dev/null
# FLOOR_NO_DF: the floor of a fast poll (/proc only, no process).
[ -n "${FLOOR_NO_DF:-}" ] || df -P -k -- "$@" >/dev/null
