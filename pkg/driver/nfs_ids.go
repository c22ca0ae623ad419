package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// keyDraws bounds the draws of a fresh NFS key. With 64 random bits a key
// already taken on the export is one chance in 2^64 per record; a second
// one in a row means the random source is broken.
const keyDraws = 3

// drawUnusedKey draws a new NFS ID (draw returns the ID and its key) until
// its key names no record on the export (lookup returns nfs.ErrNotFound):
// a new record must never replace another volume's or snapshot's.
func drawUnusedKey(ctx context.Context, what string, draw func() (id, key string, err error), lookup func(ctx context.Context, key string) error) (string, string, error) {
	for i := 0; i < keyDraws; i++ {
		id, key, err := draw()
		if err != nil {
			return "", "", err
		}
		err = lookup(ctx, key)
		if errors.Is(err, nfs.ErrNotFound) {
			return id, key, nil
		}
		if err != nil {
			return "", "", nfsError("check that the new "+what+"'s key is free", err)
		}
		klog.InfoS("Random NFS key already in use on the export; drawing another", "kind", what, "key", key)
	}
	return "", "", status.Errorf(codes.Internal, "%d random keys for a new %s were all in use on the export: the random source is broken", keyDraws, what)
}

// warnLongID logs an ID longer than the CSI spec allows.
//
// Such an ID is allowed, not refused: csi.proto says string fields SHALL NOT
// exceed 128 bytes, but refusing would break the default subDir template on
// ordinary classes. A PV is named pvc-<36-character uuid> (40 bytes), so a
// default-template volume ID on a 64-byte server and a 32-byte share is
// 5+64+1+32+1+40+1+16 = 160 bytes: only a server and share of at most 64
// bytes together keep every such ID within 128. Kubernetes stores a
// volumeHandle or snapshotHandle of any length, so the volume works there;
// the log says which volume went over and what shortens it. (A snapshot ID
// holds no subDir: with a server of up to 64 bytes and a share of up to 32
// it always fits.)
func warnLongID(kind, id string) {
	if len(id) <= ids.CSIMaxStringBytes {
		return
	}
	klog.InfoS("NFS "+kind+" ID is longer than the 128 bytes the CSI spec allows; Kubernetes accepts it, other container orchestrators may not. A shorter subDir template (such as ${pvc.metadata.name}), share or server name keeps it within",
		kind+"ID", id, "bytes", len(id))
}

// nfsVolumeID parses an NFS volume ID; a malformed one names no volume.
func nfsVolumeID(id string) (ids.NFSVolume, error) {
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		return v, status.Errorf(codes.NotFound, "volume not found: %v", err)
	}
	return v, nil
}

// nfsSnapshotID parses an NFS snapshot ID; a malformed one names no snapshot.
func nfsSnapshotID(id string) (ids.NFSSnapshot, error) {
	s, err := ids.ParseNFSSnapshotID(id)
	if err != nil {
		return s, status.Errorf(codes.NotFound, "snapshot not found: %v", err)
	}
	return s, nil
}
