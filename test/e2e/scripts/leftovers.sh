#!/usr/bin/env bash
# leftovers.sh NODE_MNT_NS: after cluster-down.sh, print what the cluster
# left behind and exit 1 if anything: processes (any of the node's mount
# namespace, whose inode is NODE_MNT_NS, read before the teardown, or any
# naming the cluster's directories), mounts, interfaces, addresses,
# iptables rules, directories. (Loop devices are found by cluster-down.sh,
# which fails when it has to detach one: it matches them by their backing
# files, which are gone by now.)
# make e2e and make conformance call it after their teardown.
set -uo pipefail
source "$(dirname "$0")/env.sh"
node_ns=${1:-}
dirs=(/var/lib/kubelet "$E2E_DIR" "$E2E_RUN" /var/lib/hostpath-csi)
left=""
for p in /proc/[0-9]*; do
	pid=${p#/proc/}
	[ "$pid" = $$ ] && continue
	if [ -n "$node_ns" ] && [ "$(stat -L -c %i "$p/ns/mnt" 2>/dev/null)" = "$node_ns" ]; then
		left="$left process:$pid($(cat "$p/comm" 2>/dev/null))"
		continue
	fi
	cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
	for d in "$E2E_DIR" "$E2E_RUN"; do
		case $cmd in *"$d"*) left="$left process:$pid($(cat "$p/comm" 2>/dev/null))"; break ;; esac
	done
done
for d in "${dirs[@]}"; do
	grep -qs -e " $d " -e " $d/" /proc/self/mountinfo && left="$left mounts:$d"
	[ -e "$d" ] && left="$left $d"
done
ip link show "$BRIDGE" >/dev/null 2>&1 && left="$left bridge"
ip link show "$NODE_LINK" >/dev/null 2>&1 && left="$left veth"
ip addr show dev lo | grep -q "$SERVICE_IP/" && left="$left service-ip"
iptables -S FORWARD | grep -q hostpath-csi-e2e && left="$left iptables"
if [ -n "$left" ]; then
	log "teardown left behind:$left"
	exit 1
fi
