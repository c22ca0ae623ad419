// Package e2e runs hostpath-csi on a real Kubernetes cluster on this machine
// (test/e2e/scripts/cluster-up.sh: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, a kubelet with containerd, the
// driver deployed from deploy/kubernetes unchanged) and checks what a user
// sees. `make e2e` brings the cluster up, runs this and tears it down; with
// no cluster (E2E_KUBECONFIG unset) every test skips.
//
// Adding a scenario: write a func(t *testing.T, c *cluster) and add a line to
// singleNode (runs with overlays/single-node deployed) or distributed (runs
// after the switch to overlays/distributed, with a second node). Each
// scenario gets its own namespace from c.namespace and leaves nothing behind.
package e2e

import (
	"os"
	"testing"
)

type scenario struct {
	name string
	run  func(t *testing.T, c *cluster)
}

// singleNode runs in this order against overlays/single-node.
var singleNode = []scenario{
	{"server-side-dry-run", testServerSideDryRun},
	{"driver-deployed", testDriverDeployed},
	{"claim-bound-and-used", testClaimBoundAndUsed},
	{"statefulset-keeps-data", testStatefulSet},
	{"snapshot-restore-clone", testSnapshotRestoreClone},
	{"private-class-fsgroup", testPrivateClass},
	{"expansion", testExpansion},
	{"modify-volume", testModifyVolume},
	{"storage-capacity", testStorageCapacity},
	{"delete-removes-data", testDeleteRemovesData},
	{"driver-not-restarted", testDriverNotRestarted},
	{"attach-limit", testAttachLimit},
	{"image-volume-size-and-online-expansion", testImageVolume},
	{"block-volume", testBlockVolume},
	{"inline-ephemeral-volume", testInlineVolume},
	{"metrics", testMetrics},
	{"driver-killed", testDriverKilled},
	{"docs-commands", testDocsCommands},
	{"docs-default-class", testDocsDefaultClass},
	{"nothing-mounted", testNothingMounted},
}

// distributed runs after singleNode, against overlays/distributed with a
// second node whose driver and sidecars run as processes.
var distributed = []scenario{
	{"switch-to-distributed", testSwitchToDistributed},
	{"placed-on-selected-node", testPlacedOnSelectedNode},
	{"restore-on-another-node", testRestoreOnAnotherNode},
	{"pod-on-node1", testClaimBoundAndUsed},
	{"docs-distributed", testDocsDistributed},
	{"restore-after-key-rotation", testRestoreAfterKeyRotation},
	{"node-gone-for-good", testNodeGoneForGood},
	{"nothing-mounted", testNothingMounted},
	{"docs-uninstall", testDocsUninstall},
}

func TestE2E(t *testing.T) {
	c, err := newCluster()
	if err != nil {
		t.Fatal(err)
	}
	if c == nil {
		t.Skip("no end-to-end cluster: run `make e2e` (needs root); E2E_KUBECONFIG is not set")
	}
	if os.Getenv("E2E_ONLY") != "" {
		// E2E_ONLY=name runs one scenario against a cluster from make e2e-cluster.
		for _, s := range append(append(append([]scenario{}, singleNode...), distributed...), helm...) {
			if s.name == os.Getenv("E2E_ONLY") {
				t.Run(s.name, func(t *testing.T) { s.run(t, c) })
			}
		}
		return
	}
	for _, s := range singleNode {
		t.Run("single-node/"+s.name, func(t *testing.T) { s.run(t, c) })
	}
	for _, s := range distributed {
		if !t.Run("distributed/"+s.name, func(t *testing.T) { s.run(t, c) }) && s.name == "switch-to-distributed" {
			t.Fatal("the distributed flavour did not come up; its scenarios cannot run")
		}
	}
	for _, s := range helm {
		if !t.Run("helm/"+s.name, func(t *testing.T) { s.run(t, c) }) && s.name == "helm-install" {
			t.Fatal("the Helm install did not come up; its scenarios cannot run")
		}
	}
}
