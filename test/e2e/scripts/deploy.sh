#!/usr/bin/env bash
# Deploy hostpath-csi from deploy/kubernetes, unchanged, as a user would:
# the snapshot-controller overlay, then the given flavour (single-node or
# distributed), and wait until the driver is registered on the node.
set -euo pipefail
source "$(dirname "$0")/env.sh"
flavour=${1:-single-node}
log "deploying overlays/snapshot-controller and overlays/$flavour"
$KUBECTL apply -k "$E2E_ROOT/deploy/kubernetes/overlays/snapshot-controller" >/dev/null
$KUBECTL wait --for condition=Established --timeout 60s \
	crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotclasses.snapshot.storage.k8s.io \
	crd/volumesnapshotcontents.snapshot.storage.k8s.io >/dev/null
if [ "$flavour" = distributed ]; then
	# The nodes' transfer key, as the install docs make it.
	KUBECONFIG=$KUBECONFIG_E2E PATH=$E2E_BIN:$PATH "$E2E_ROOT/deploy/kubernetes/transfer-keys.sh" create >&2
fi
$KUBECTL apply -k "$E2E_ROOT/deploy/kubernetes/overlays/$flavour" >/dev/null
$KUBECTL -n hostpath-csi rollout status daemonset/hostpath-csi --timeout 180s >&2
$KUBECTL -n kube-system rollout status deployment/snapshot-controller --timeout 120s >&2
wait_for 60 "the driver in CSINode $NODE1" sh -c \
	"$KUBECTL get csinode $NODE1 -o jsonpath='{.spec.drivers[*].name}' | grep -qw hostpath-csi.github.io"
