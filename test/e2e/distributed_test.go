package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// overlays/distributed replaces the single-node one (a rolling update of the
// DaemonSet), and a second node joins: a Node and CSINode object and the
// driver with its sidecars as processes. Both nodes then publish their
// capacity, and the resizers of both elect one leader.
func testSwitchToDistributed(t *testing.T, c *cluster) {
	c.script(t, "deploy.sh", "distributed")
	eventually(t, 2*time.Minute, "the driver pod running with --node-deployment csi-snapshotter", func() (bool, error) {
		p := c.driverPod(t, c.node1)
		for _, ct := range p.Spec.Containers {
			if ct.Name == "csi-snapshotter" && !strings.Contains(strings.Join(ct.Args, " "), "--node-deployment=true") {
				return false, fmt.Errorf("old pod %s", p.Name)
			}
		}
		return podReady(p), nil
	})
	c.script(t, "node2.sh")
	for _, node := range []string{c.node1, c.node2} {
		eventually(t, 2*time.Minute, "a CSIStorageCapacity for "+node, func() (bool, error) {
			var caps storagev1.CSIStorageCapacityList
			if err := c.list(&caps, "-n", "hostpath-csi", "csistoragecapacities"); err != nil {
				return false, err
			}
			for _, sc := range caps.Items {
				if sc.NodeTopology != nil && sc.NodeTopology.MatchLabels[topologyKey] == node && sc.Capacity != nil && sc.Capacity.Value() > 0 {
					return true, nil
				}
			}
			return false, nil
		})
	}
	eventually(t, time.Minute, "a csi-resizer holding the leader Lease", func() (bool, error) {
		var lease coordinationv1.Lease
		ok, err := c.tryGet(&lease, "-n", "hostpath-csi", "lease", "external-resizer-hostpath-csi-github-io")
		return ok && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "", err
	})
}

// selectedClaim is a claim already placed on node by the scheduler's
// annotation (as the scheduler sets it when a pod using the claim is
// scheduled there), so node 2, which runs no pods, gets volumes too.
func selectedClaim(name, node, extra string) string {
	return strings.Replace(claim(name, "16Mi", extra), "metadata:\n  name: "+name,
		"metadata:\n  name: "+name+"\n  annotations:\n    volume.kubernetes.io/selected-node: "+node, 1)
}

func snapshotOf(name, claimName string) string {
	return fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: %s
spec:
  volumeSnapshotClassName: hostpath-csi
  source:
    persistentVolumeClaimName: %s
`, name, claimName)
}

const fromSnapshot = `  dataSource:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: %s
`

// Each node makes the volumes and snapshots of the claims placed on it, in
// its own data directory, and never touches the other's: the PV's node
// affinity, the VolumeSnapshotContent's managed-by label and the data
// directories say so. Restores are made on the snapshot's node.
func testPlacedOnSelectedNode(t *testing.T, c *cluster) {
	ns := c.namespace(t, "placement")
	dirs := map[string]string{c.node1: c.dataDir1, c.node2: c.dataDir2}
	other := map[string]string{c.node1: c.node2, c.node2: c.node1}
	for _, node := range []string{c.node1, c.node2} {
		c.apply(t, ns, selectedClaim("on-"+node, node, ""))
	}
	for _, node := range []string{c.node1, c.node2} {
		pv := c.boundPV(t, ns, "on-"+node)
		if got := pvNode(pv); got != node {
			t.Errorf("claim on-%s: PV on node %q", node, got)
		}
		h := pv.Spec.CSI.VolumeHandle
		if !exists(volumeDir(dirs[node], h)) || exists(volumeDir(dirs[other[node]], h)) {
			t.Errorf("volume %s of on-%s: in %s=%v, in %s=%v; want only on its node", h, node,
				node, exists(volumeDir(dirs[node], h)), other[node], exists(volumeDir(dirs[other[node]], h)))
		}
		// Data for the snapshot: written on the host, as a pod would.
		if err := os.WriteFile(filepath.Join(volumeDir(dirs[node], h), "where"), []byte(node+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		c.apply(t, ns, snapshotOf("snap-"+node, "on-"+node))
	}
	for _, node := range []string{c.node1, c.node2} {
		var snap volumeSnapshot
		eventually(t, 2*time.Minute, "snapshot of on-"+node+" ready", func() (bool, error) {
			ok, err := c.tryGet(&snap, "-n", ns, "volumesnapshot", "snap-"+node)
			return ok && snap.Status != nil && snap.Status.ReadyToUse != nil && *snap.Status.ReadyToUse, err
		})
		var content volumeSnapshotContent
		c.get(t, &content, "volumesnapshotcontent", *snap.Status.BoundVolumeSnapshotContentName)
		if by := content.Labels["snapshot.storage.kubernetes.io/managed-by"]; by != node {
			t.Errorf("snapshot of on-%s is managed by %q", node, by)
		}
		h := *content.Status.SnapshotHandle
		if !exists(snapshotDir(dirs[node], h)) || exists(snapshotDir(dirs[other[node]], h)) {
			t.Errorf("snapshot %s of on-%s is not (only) on its node", h, node)
		}
		c.apply(t, ns, selectedClaim("restored-"+node, node, fmt.Sprintf(fromSnapshot, "snap-"+node)))
	}
	for _, node := range []string{c.node1, c.node2} {
		pv := c.boundPV(t, ns, "restored-"+node)
		got, err := os.ReadFile(filepath.Join(volumeDir(dirs[node], pv.Spec.CSI.VolumeHandle), "where"))
		if pvNode(pv) != node || err != nil || string(got) != node+"\n" {
			t.Errorf("restore of snap-%s: PV on %q holds %q (%v)", node, pvNode(pv), got, err)
		}
	}
	// A pod on node 1 reads its restore.
	c.runPod(t, ns, "reader", "restored-"+c.node1, "grep -qx "+c.node1+" /data/where")

	// Deleting removes each node's data from that node.
	var handles []string
	for _, node := range []string{c.node1, c.node2} {
		handles = append(handles, c.boundPV(t, ns, "on-"+node).Spec.CSI.VolumeHandle)
	}
	c.k(t, "-n", ns, "delete", "pod", "reader")
	c.k(t, "-n", ns, "delete", "volumesnapshots,pvc", "--all")
	eventually(t, 2*time.Minute, "the volumes gone from both nodes", func() (bool, error) {
		for i, node := range []string{c.node1, c.node2} {
			if exists(volumeDir(dirs[node], handles[i])) {
				return false, nil
			}
		}
		return true, nil
	})
}
