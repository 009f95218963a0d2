#!/bin/sh
# The floors the handler is measured against: read the same /proc files and
# run df on the same filesystems, nothing else.  Arguments: the mount points.
# Run as "sh floor.sh" it is a shell and cat (two processes), plus df for a
# full poll; "sh floor.sh --list" prints the files, for the floor of one cat
# run on its own (bench/handler.py).
P=${SYSMON_PROC_ROOT:-/proc}
set_files() {
    files="$P/sys/kernel/random/boot_id $P/stat $P/loadavg $P/meminfo $P/net/dev"
    files="$files $P/net/snmp $P/net/sockstat $P/self/mountinfo"
    [ -r "$P/net/sockstat6" ] && files="$files $P/net/sockstat6"
}
set_files
if [ "${1:-}" = --list ]; then
    # shellcheck disable=SC2086 # split on purpose, as below
    printf '%s\n' $files
    exit 0
fi
# shellcheck disable=SC2086 # $files is split on purpose: /proc paths hold no blanks
cat $files >/dev/null
# FLOOR_NO_DF: the floor of a fast poll (/proc only).
[ -n "${FLOOR_NO_DF:-}" ] || df -P -k -- "$@" >/dev/null
