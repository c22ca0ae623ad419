#!/usr/bin/env bash
# make e2e: bring the cluster up (cluster-up.sh), run the scenarios
# (go test in test/e2e), and always tear it all down (cluster-down.sh), even
# when something fails; then check that nothing is left behind.
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ "$(id -u)" = 0 ] || { echo "make e2e needs root (it runs a kubelet, mounts, and makes network interfaces)"; exit 1; }
started=$SECONDS
# A cluster already up is someone else's (make e2e-cluster, another run):
# refuse before the trap is set, so this run never tears it down.
if [ -e "$E2E_DIR" ]; then
	log "error: $E2E_DIR exists: a cluster is up (or was not torn down); run make e2e-down first"
	exit 1
fi
trap '"$E2E_ROOT/test/e2e/scripts/cluster-down.sh"' EXIT
"$E2E_ROOT/test/e2e/scripts/cluster-up.sh" || exit 1
log "cluster up in $((SECONDS - started)) s"
"$E2E_ROOT/test/e2e/scripts/scenarios.sh"
rc=$?
# The node's mount namespace, to find any of its processes after the
# teardown (its mounts live as long as one does).
node_ns=$(node_mnt_ns)
trap - EXIT
"$E2E_ROOT/test/e2e/scripts/cluster-down.sh" || rc=1
# Nothing of the cluster may be left: processes, mounts (loop devices:
# cluster-down.sh finds and fails on them),
# interfaces, rules, directories.
"$E2E_ROOT/test/e2e/scripts/leftovers.sh" "$node_ns" || rc=1
log "make e2e: $([ $rc = 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s"
exit $rc
