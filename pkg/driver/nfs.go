package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
)

// nfsDriver serves the volumes of NFS classes (IDs nfs1:, snapshots nfss1:):
// the spec's controller and node services for them, behind the router
// (router.go), which sends it CreateVolume and GetCapacity by the class's
// server parameter and every other call by the ID's prefix.
//
// What the controller must remember lives on the export (package nfs): a
// controller started on another node, with an empty state directory, finds
// every volume and snapshot by name and by ID there. What a node mounts is
// in the node's state, as a hostpath volume's mounts are.
type nfsDriver struct {
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	*core

	// exports mounts the NFS exports, and runs every operation on one
	// under the NFS timeout.
	exports *nfs.Backend
	// sweeps reconciles each export's unfinished operations once.
	sweeps nfsSweeps
}

var (
	_ csi.ControllerServer = (*nfsDriver)(nil)
	_ csi.NodeServer       = (*nfsDriver)(nil)
)

// useExport mounts (or shares the mount of) the export of an NFS volume or
// snapshot, with the class's mount options when the call has them; the
// caller releases it.
func (d *nfsDriver) useExport(ctx context.Context, server, share string, options ...string) (*nfs.Export, error) {
	x, err := d.exports.Use(ctx, server, share, options...)
	if err != nil {
		return nil, nfsError("mount NFS export "+server+":"+share, err)
	}
	d.sweepOnce(x)
	return x, nil
}
