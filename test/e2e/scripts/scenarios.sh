#!/usr/bin/env bash
# Run the end-to-end scenarios (go test in test/e2e) against the cluster that
# cluster-up.sh (make e2e-cluster) brought up. E2E_ONLY=<scenario name> runs
# one of them; extra arguments go to go test.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ -f "$KUBECONFIG_E2E" ] || die "no cluster: run make e2e-cluster first"
cd "$E2E_ROOT/test/e2e"
E2E_KUBECONFIG=$KUBECONFIG_E2E E2E_KUBECTL=$E2E_BIN/kubectl E2E_NODE1=$NODE1 E2E_NODE2=$NODE2 \
	E2E_CTR="$CTR" exec go test -count=1 -v -timeout 40m "$@" .
