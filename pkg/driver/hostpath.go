package driver

import (
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
)

// hostpathDriver serves the volumes of the node's data directory (IDs hpv1-,
// snapshots hps1-): directories, filesystem images and block volumes, with
// their snapshots, clones, inline (ephemeral) volumes and group snapshots.
// It is the spec's controller and node services for them, behind the router
// (router.go), which sends it CreateVolume and GetCapacity for a class that
// names no NFS server and every call whose ID is not an NFS one.
type hostpathDriver struct {
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	*core

	vols *hostpath.Backend
	// nfs is the NFS family, whose exports keep the snapshots of hostpath
	// volumes that a VolumeSnapshotClass sends there (offnode.go).
	nfs   *nfsDriver
	usage usageCache
	// reserved is what enforced volumes may still fill, cached; roomMu
	// makes a check for room and the reservation that follows one step.
	reserved reservation
	roomMu   sync.Mutex
	// projectMu serializes the allocation of project IDs.
	projectMu sync.Mutex
	// ephemeralMu makes the check of the inline volumes' bounds and the
	// record of a new one one step (see admitEphemeral).
	ephemeralMu sync.Mutex
	// sweep removes inline volumes left without a mount (ephemeral_sweep.go).
	sweep ephemeralSweep
	// wholeCopies are the image and block volumes a full copy reads now,
	// without their node locks (see withCopyLocks).
	wholeCopies wholeCopies
	// offNodeBeat is how often a copy to an export refreshes its record's
	// heartbeat (offNodeHeartbeat when 0; shorter in tests).
	offNodeBeat time.Duration
	// xnode serves and fetches copies across nodes (nil: off).
	xnode *xnode
}

var (
	_ csi.ControllerServer = (*hostpathDriver)(nil)
	_ csi.NodeServer       = (*hostpathDriver)(nil)
)

// warnQgroupVolumes says at start-up how many volumes an earlier version
// made with a btrfs qgroup limit: they keep it (and it grows with them),
// but a pod escapes it with a subvolume of its own, so they are reported
// as not held.
func (d *hostpathDriver) warnQgroupVolumes() {
	vols, _, err := d.store.ListVolumes("", 0, nil)
	if err != nil {
		return // reconcile has said why already
	}
	n := 0
	for _, v := range vols {
		if v.Limit == hostpath.EnforceQgroup {
			n++
		}
	}
	if n > 0 {
		klog.InfoS("Volumes made by an earlier version keep their btrfs qgroup limit, which stops ordinary writes past their size but not a pod that makes a subvolume inside its volume: they are reported with size-limit none; recreate them with StorageClass parameter layout: image where a size must hold", "volumes", n)
	}
}
