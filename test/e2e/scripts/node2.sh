#!/usr/bin/env bash
# The distributed flavour's second node, with no second kubelet: a Node and
# a CSINode object for $NODE2 (tainted, so no DaemonSet pod is scheduled to
# it), and the driver with csi-provisioner, csi-snapshotter and csi-resizer
# as processes on this host, started with the same flags as in
# overlays/distributed, under the node name $NODE2 and with their own state
# and data directories. cluster-down.sh stops them by their PIDs.
set -euo pipefail
source "$(dirname "$0")/env.sh"
n2=$E2E_DIR/node2
mkdir -p "$n2"
$KUBECTL apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: Node
metadata:
  name: $NODE2
  labels:
    kubernetes.io/hostname: $NODE2
    topology.hostpath-csi.github.io/node: $NODE2
spec:
  taints:
    - key: hostpath-csi.github.io/e2e-no-kubelet
      effect: NoSchedule
---
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata:
  name: $NODE2
spec:
  drivers:
    - name: hostpath-csi.github.io
      nodeID: $NODE2
      topologyKeys: [topology.hostpath-csi.github.io/node]
EOF2
sock=$n2/csi.sock
# The transfer key from its Secret, as the kubelet would mount it; node 2
# finds node 1's driver as node 1 would find it: its pod, by the API.
$KUBECTL -n hostpath-csi get secret hostpath-csi-transfer -o jsonpath='{.data.keys}' | base64 -d >"$n2/transfer-keys"
chmod 0400 "$n2/transfer-keys"
# And kept up to date as the kubelet keeps a mounted Secret (a rotation):
# copied every 2 s, replaced by a rename so the driver never reads half.
start node2-transfer-keys sh -c "while :; do
	$KUBECTL -n hostpath-csi get secret hostpath-csi-transfer -o jsonpath='{.data.keys}' | base64 -d >'$n2/transfer-keys.new' &&
		[ -s '$n2/transfer-keys.new' ] && chmod 0400 '$n2/transfer-keys.new' && mv -f '$n2/transfer-keys.new' '$n2/transfer-keys'
	sleep 2
done"
start node2-driver "$E2E_CACHE/local/hostpath-plugin" --endpoint "unix://$sock" --nodeid "$NODE2" \
	--state-dir "$n2/state" --data-dir "$n2/data" --v=2 \
	--transfer-keys "$n2/transfer-keys" --transfer-peers=kubernetes --kubeconfig "$KUBECONFIG_E2E" \
	--transfer-namespace hostpath-csi
wait_for 30 "node 2's driver socket" test -S "$sock"
export NODE_NAME=$NODE2 NAMESPACE=hostpath-csi POD_NAME=$NODE2-processes
# No pod owns node 2's CSIStorageCapacity objects (--capacity-ownerref-level=-1);
# they go with the cluster.
start node2-csi-provisioner "$E2E_BIN/csi-provisioner" --kubeconfig "$KUBECONFIG_E2E" --csi-address "$sock" \
	--node-deployment=true --strict-topology=true --immediate-topology=false --extra-create-metadata=true \
	--enable-capacity=true --capacity-ownerref-level=-1 --v=2
start node2-csi-snapshotter "$E2E_BIN/csi-snapshotter" --kubeconfig "$KUBECONFIG_E2E" --csi-address "$sock" \
	--extra-create-metadata=true --node-deployment=true --v=2
start node2-csi-resizer "$E2E_CACHE/local/csi-resizer" --kubeconfig "$KUBECONFIG_E2E" --csi-address "$sock" \
	--leader-election=true --leader-election-namespace hostpath-csi --v=2
log "node 2 ($NODE2) is up: driver, csi-provisioner, csi-snapshotter, csi-resizer"
