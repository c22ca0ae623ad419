#!/usr/bin/env bash
# Tear down what cluster-up.sh (and node2.sh) made: pods are deleted through
# the API first, so the kubelet unmounts their volumes and the runtime
# releases their networks; then every process is stopped by the PID recorded
# at its start, leftover mounts under the cluster's directories are
# unmounted, and the changes recorded in $E2E_DIR/undo (interfaces,
# addresses, iptables rules, directories) are undone in reverse order.
# Safe to run twice, and after a failed start.
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ -d "$E2E_DIR" ] || { log "no cluster at $E2E_DIR: nothing to tear down"; exit 0; }

# alive NAME: the daemon or anything of its process group (a daemon started
# through nsenter is the leader's child, and outlives it if it is killed).
alive() {
	local pid
	[ -f "$E2E_DIR/pids/$1.pid" ] || return 1
	pid=$(cat "$E2E_DIR/pids/$1.pid")
	kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null
}

# stop NAME: SIGTERM, up to 30 s to exit, then SIGKILL. The process group
# goes with it (setsid made the daemon its leader).
stop() {
	local f=$E2E_DIR/pids/$1.pid pid
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
		# The whole group: a daemon started through nsenter is its child.
		for _ in $(seq 60); do kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
	fi
	rm -f "$f"
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
	awk -v d="$1" '{ p=$5; gsub(/\\040/, " ", p); if (p==d || index(p, d "/")==1) print p }' /proc/self/mountinfo |
		awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}

# safe_rm DIR: remove DIR unless something is still mounted below it (then
# removing would reach into that filesystem).
safe_rm() {
	local m; m=$(mounts_under "$1")
	if [ -n "$m" ]; then log "not removing $1: still mounted: $m"; return 1; fi
	rm -rf "$1"
}

if alive kube-apiserver && alive kubelet; then
	log "deleting pods through the API"
	for ns in $($KUBECTL get ns -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
		case $ns in hostpath-csi|kube-system|kube-public|kube-node-lease) continue ;; esac
		$KUBECTL -n "$ns" delete statefulsets,deployments,daemonsets,jobs,pods --all --wait=false >/dev/null 2>&1
	done
	# The driver must outlive its pods: it unpublishes their volumes.
	end=$((SECONDS + 120))
	while [ $SECONDS -lt $end ] &&
		[ -n "$($KUBECTL get pods -A --field-selector "spec.nodeName=$NODE1" -o name 2>/dev/null |
			grep -v -e '^pod/hostpath-csi-' -e '^pod/snapshot-controller-')" ]; do sleep 1; done
	$KUBECTL delete -k "$E2E_ROOT/deploy/kubernetes/overlays/single-node" --wait=false >/dev/null 2>&1
	$KUBECTL -n kube-system delete deployment snapshot-controller --wait=false >/dev/null 2>&1
	end=$((SECONDS + 90))
	while [ $SECONDS -lt $end ] &&
		[ -n "$($KUBECTL get pods -A --field-selector "spec.nodeName=$NODE1" -o name 2>/dev/null)" ]; do sleep 1; done
fi

log "stopping processes"
if [ -f "$E2E_DIR/pids/order" ]; then
	for name in $(tac "$E2E_DIR/pids/order"); do
		[ "$name" = containerd ] && continue
		case $name in kube-apiserver|etcd|svcproxy|node) continue ;; esac
		stop "$name"
	done
fi
if alive containerd; then
	# Containers the kubelet did not remove (it was killed, or a pod hung).
	for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
	sleep 1
	for t in $($CTR tasks ls -q 2>/dev/null); do $CTR tasks delete -f "$t" >/dev/null 2>&1; done
	for c in $($CTR containers ls -q 2>/dev/null); do $CTR containers delete "$c" >/dev/null 2>&1; done
fi
stop containerd
# containerd's shims outlive it; ours carry our socket's path.
for p in /proc/[0-9]*; do
	if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "-address $E2E_RUN/containerd.sock"; then
		kill -KILL "${p#/proc/}" 2>/dev/null
	fi
done
# The node's PID 1 last of the node: its exit ends anything left in its
# namespaces, and their mounts with them.
stop node
# The node's PID 1 by the PID it recorded, should it have outlived its
# process group (its unshare parent killed alone): its exit ends the node.
if [ -s "$E2E_RUN/node.pid" ]; then
	np=$(cat "$E2E_RUN/node.pid")
	if [ "$(cat "/proc/$np/comm" 2>/dev/null)" = nodeinit ]; then
		kill -KILL "$np" 2>/dev/null
		for _ in $(seq 20); do [ -d "/proc/$np" ] || break; sleep 0.5; done
		[ -d "/proc/$np" ] && { log "the node's PID 1 ($np) is still alive"; exit 1; }
	fi
fi
for name in svcproxy kube-apiserver etcd; do stop "$name"; done

log "unmounting"
for d in /var/lib/kubelet/pods /var/lib/kubelet/plugins "$E2E_RUN" "$E2E_DIR" /var/lib/hostpath-csi; do
	for m in $(mounts_under "$d"); do umount "$m" 2>/dev/null || umount -l "$m"; done
done
# Loop devices of the driver's files (node 1's and node 2's data), found by
# the backing file's device and inode: its path is the attacher's (the
# driver's container), unreachable from here once that is gone. Every
# volume was unstaged by now, so any is a leak: detached, and the teardown
# fails. Not checked: the kubelet's own loop on a mapped block volume's
# device node, which the kubelet detaches when it unmaps the volume (the
# pods' deletion above waits for that): its backing node is in the driver
# container's /dev, matched here by neither its path nor its inode.
leaked=$(cluster_loops /var/lib/hostpath-csi "$E2E_DIR")
for dev in $leaked; do
	# Still ours (not released and taken by another program meanwhile).
	case " $(cluster_loops /var/lib/hostpath-csi "$E2E_DIR") " in *" $dev "*) ;; *) continue ;; esac
	losetup -d "$dev" 2>/dev/null || log "cannot detach $dev"
done
[ -z "$leaked" ] || log "left behind: loop devices $(echo $leaked), detached"
# Network namespaces the CNI made for pods that were not torn down.
if [ -d /var/run/netns ]; then
	for n in $(ls /var/run/netns | sort | comm -13 "$E2E_DIR/netns-before" - 2>/dev/null); do
		case $n in cni-*) umount "/var/run/netns/$n" 2>/dev/null; rm -f "/var/run/netns/$n" ;; esac
	done
fi

log "undoing changes"
if [ -f "$E2E_DIR/undo" ]; then
	tac "$E2E_DIR/undo" | while read -r line; do
		case $line in
		"rm -rf "*) safe_rm "${line#rm -rf }" ;;
		*) eval "$line" 2>/dev/null ;;
		esac
	done
fi
left=$(mounts_under "$E2E_DIR")
[ -z "$left" ] || { log "still mounted: $left"; exit 1; }
rm -rf "$E2E_DIR"
[ -z "$leaked" ] || { log "torn down, but loop devices were left behind"; exit 1; }
log "torn down"
