#!/usr/bin/env bash
# Node 2 lost, as a machine that dies is: its driver and sidecars (the
# processes node2.sh started) killed with SIGKILL, by their PIDs. Its data
# directory stays, as a disk would; node2.sh brings the node back.
set -euo pipefail
source "$(dirname "$0")/env.sh"
for f in "$E2E_DIR"/pids/node2-*.pid; do
	[ -f "$f" ] || continue
	pid=$(cat "$f")
	kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
done
# Its driver's socket goes with the machine (a reboot empties /run): a
# stale one would pass node2.sh's wait before the new driver listens.
rm -f "$E2E_DIR/node2/csi.sock"
log "node 2 ($NODE2) is down: its processes killed"
