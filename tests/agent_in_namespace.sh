#!/bin/sh
# Run by tests/test_agent.py under `unshare --mount --propagation private`:
# mounts IMAGE read-only at MOUNT (seen by nothing outside), asks the agent
# for a disk poll, then runs the awk handler for the same, into WORK.
set -eu
mount -o ro,loop "$IMAGE" "$MOUNT"
printf '#!/bin/sh\necho x >> "%s/handler-runs"\nexec "%s" "$@"\n' "$WORK" "$HANDLER" >"$WORK/wrapper"
chmod 755 "$WORK/wrapper"
SYSMON_HANDLER="$WORK/wrapper" systemd-socket-activate -E SYSMON_HANDLER \
    -l "$WORK/agent.sock" "$AGENT" 2>"$WORK/agent.err" &
agent_pid=$!
trap 'kill "$agent_pid" 2>/dev/null || true' EXIT
# Listening, not only bound (its file is there before listen()).
until awk -v p="$WORK/agent.sock" '$NF == p && $4 == "00010000" {f = 1} END {exit !f}' \
    /proc/net/unix; do sleep 0.02; done
python3 - "$WORK/agent.sock" >"$WORK/agent.out" <<'PY'
import socket
import sys

with socket.socket(socket.AF_UNIX) as conn:
    conn.settimeout(30)
    conn.connect(sys.argv[1])
    conn.sendall(b"qubes.Metrics.Get+noalerts. sys-monitor\0")
    conn.shutdown(socket.SHUT_WR)
    while chunk := conn.recv(65536):
        sys.stdout.buffer.write(chunk)
PY
"$HANDLER" noalerts. >"$WORK/handler.out"
