# Shared settings of the end-to-end cluster (sourced by the scripts here).
# Everything the cluster makes lives under E2E_DIR and E2E_RUN, or is
# recorded in $E2E_DIR/undo so that cluster-down.sh can remove it; the
# binaries, root filesystem and images are cached in E2E_CACHE and survive.
E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
E2E_CACHE=${E2E_CACHE:-/var/cache/hostpath-csi/e2e}
E2E_DIR=${E2E_DIR:-/var/lib/hostpath-csi-e2e}
E2E_RUN=${E2E_RUN:-/run/hostpath-csi-e2e}
E2E_BIN=$E2E_CACHE/bin
KUBECONFIG_E2E=$E2E_DIR/kubeconfig
KUBECTL="$E2E_BIN/kubectl --kubeconfig=$KUBECONFIG_E2E"
CTR="ctr --address $E2E_RUN/containerd.sock --namespace k8s.io"

# Addresses: all on this machine, nothing routed off it.
POD_CIDR=10.200.0.0/24      # the bridge hpcsi0 (gateway .1), pods' addresses
SERVICE_CIDR=10.200.1.0/24  # no kube-proxy; only the kubernetes Service is reachable
SERVICE_IP=10.200.1.1       # put on lo, forwarded to the API server by svcproxy
NODE_IP=10.200.2.1          # the node's address, on a veth pair of this host
BRIDGE=hpcsi0
NODE_LINK=hpcsi-node0       # and its peer hpcsi-node1
APISERVER_PORT=16443
ETCD_PORT=23790
KUBELET_PORT=20250
NODE1=hostpath-e2e-node1
NODE2=hostpath-e2e-node2    # distributed flavour: a Node object, a driver as processes

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# cluster_loops DIR...: the loop devices backed by a regular file under a
# DIR, matched by the file's device and inode, then those backed by one of
# these devices' nodes (a loop on a loop), until no more are found.
cluster_loops() {
	local files found=" " more=1 name majmin ino key
	files=$(find "$@" -xdev -type f -printf '%D %i\n' 2>/dev/null | sort -u)
	while [ $more = 1 ]; do
		more=0
		while read -r name majmin ino; do
			[ -n "$name" ] || continue
			case $found in *" $name "*) continue ;; esac
			# losetup gives MAJ:MIN, find and stat the kernel's number:
			# minor's low byte, major << 8, the minor's other bits << 12.
			key=$(awk -v m="$majmin" -v i="$ino" 'BEGIN { split(m, a, ":"); print a[1] * 256 + a[2] % 256 + int(a[2] / 256) * 1048576, i }')
			if grep -qxF "$key" <<<"$files"; then
				found="$found$name "
				files=$files$'\n'$(stat -c '%d %i' "$name")
				more=1
			fi
		done < <(losetup -n -l -O NAME,BACK-MAJ:MIN,BACK-INO 2>/dev/null)
	done
	echo $found
}

# node_mnt_ns: the inode of the node's mount namespace, if its PID 1 still
# runs (a PID reused by another process would name the host's own).
node_mnt_ns() {
	local np; np=$(cat "$E2E_RUN/node.pid" 2>/dev/null) || return 0
	[ "$(cat "/proc/$np/comm" 2>/dev/null)" = nodeinit ] || return 0
	stat -L -c %i "/proc/$np/ns/mnt" 2>/dev/null
}

# undo CMD...: record a command that cluster-down.sh runs (in reverse order).
undo() { printf '%s\n' "$*" >>"$E2E_DIR/undo"; }

# start NAME CMD...: run a daemon in the background, its output in
# $E2E_DIR/logs/NAME.log, its PID in $E2E_DIR/pids/NAME.pid.
start() {
	local name=$1; shift
	mkdir -p "$E2E_DIR/logs" "$E2E_DIR/pids"
	setsid "$@" >>"$E2E_DIR/logs/$name.log" 2>&1 </dev/null &
	echo $! >"$E2E_DIR/pids/$name.pid"
	echo "$name" >>"$E2E_DIR/pids/order"
}

# wait_for SECONDS WHAT CMD...: retry CMD until it succeeds.
wait_for() {
	local secs=$1 what=$2; shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
		sleep 0.5
	done
}
