package driver

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// Content sources of a new NFS volume: an NFS snapshot or volume on the same
// export, held shared while the copy runs as a job.

// nfsSource is what a new NFS volume is copied from, held shared.
type nfsSource struct {
	snapshotID, volumeID string
	snapKey, subDir      string
	capacity             int64
	lockKey              string
	unlock               func()
}

func (s *nfsSource) describe(newID string) string {
	if s.snapshotID != "" {
		return fmt.Sprintf("restore of NFS volume %s from snapshot %s", newID, s.snapshotID)
	}
	return fmt.Sprintf("clone of NFS volume %s into volume %s", s.volumeID, newID)
}

// nfsLockSource checks a content source of a new volume on export x: an
// NFS snapshot or volume on the same export, ready; it is held shared.
func (d *nfsDriver) nfsLockSource(ctx context.Context, x *nfs.Export, cs *csi.VolumeContentSource) (*nfsSource, error) {
	sameExport := func(server, share string) error {
		if ids.CanonicalNFSServer(server) != x.Server() || share != x.Share() {
			return status.Errorf(codes.InvalidArgument, "the source is on NFS export %s:%s; a volume on %s is made from a source on the same export", server, share, x.Name())
		}
		return nil
	}
	switch {
	case cs.GetSnapshot() != nil:
		id := cs.GetSnapshot().GetSnapshotId()
		if id == "" { // as in a hostpath class: a malformed request, not a missing snapshot
			return nil, status.Error(codes.InvalidArgument, "snapshot ID is required")
		}
		if ids.ValidateSnapshotID(id) == nil {
			return nil, status.Errorf(codes.InvalidArgument, "snapshot %.64q is not an NFS snapshot; an NFS volume is restored from a snapshot of an NFS volume", id)
		}
		s, err := nfsSnapshotID(id)
		if err != nil {
			return nil, err
		}
		if err := sameExport(s.Server, s.Share); err != nil {
			return nil, err
		}
		unlock, err := d.rlock(ctx, "snap", id)
		if err != nil {
			return nil, err
		}
		rec, sx, err := d.nfsReadySnapshot(ctx, id)
		if err != nil {
			unlock()
			return nil, err
		}
		sx.Release()
		if rec.OfHostpath() {
			// Its tree is a hostpath volume's (an image file, a block
			// device file): see offnode.go.
			unlock()
			return nil, status.Errorf(codes.InvalidArgument, "snapshot %s is a snapshot of a hostpath volume (%s): restore it into a hostpath class", id, rec.SourceVolumeID)
		}
		return &nfsSource{snapshotID: id, snapKey: s.Key, capacity: rec.SourceCapacity, lockKey: "snap/" + id, unlock: unlock}, nil
	case cs.GetVolume() != nil:
		id := cs.GetVolume().GetVolumeId()
		if id == "" {
			return nil, status.Error(codes.InvalidArgument, "volume ID is required")
		}
		if ids.ValidateVolumeID(id) == nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume %.64q is not an NFS volume; an NFS volume is cloned from an NFS volume", id)
		}
		v, err := nfsVolumeID(id)
		if err != nil {
			return nil, err
		}
		if err := sameExport(v.Server, v.Share); err != nil {
			return nil, err
		}
		unlock, err := d.rlock(ctx, "vol", id)
		if err != nil {
			return nil, err
		}
		rec, vx, err := d.nfsReadyVolume(ctx, id)
		if err != nil {
			unlock()
			return nil, err
		}
		vx.Release()
		return &nfsSource{volumeID: id, subDir: rec.SubDir, capacity: rec.CapacityBytes, lockKey: "vol/" + id, unlock: unlock}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "volume content source has neither a snapshot nor a volume")
}

// nfsCopyIntoVolume is the job behind an NFS restore or clone.
func (d *nfsDriver) nfsCopyIntoVolume(ctx context.Context, p nfsParams, rec *nfs.VolumeRecord, recKey string, src *nfsSource) error {
	x, err := d.useExport(ctx, p.server, p.share)
	if err != nil {
		return err
	}
	defer x.Release()
	start := time.Now()
	st, err := d.copyStep(ctx, rec.ID, func() (hostpath.CopyResult, error) {
		if src.snapshotID != "" {
			s, err := x.Restore(ctx, src.snapKey, rec.SubDir, recKey, p.mode)
			return hostpath.CopyResult{Mechanism: string(s.Mechanism()), Files: s.Files, Bytes: s.Bytes}, err
		}
		s, err := x.Clone(ctx, src.subDir, rec.SubDir, recKey, p.mode)
		return hostpath.CopyResult{Mechanism: string(s.Mechanism()), Files: s.Files, Bytes: s.Bytes}, err
	})
	if err != nil {
		if uerr := d.nfsUndoCreate(context.Background(), x, rec, recKey); uerr != nil {
			klog.ErrorS(uerr, "Rolling back a failed NFS copy; a retry of the name will finish it", "volumeID", rec.ID)
		}
		return nfsError("copy content source into the new volume", err)
	}
	rec.Phase = nfs.PhaseReady
	if err := x.PutVolume(context.Background(), rec, recKey); err != nil {
		return nfsError("record the volume as ready", err)
	}
	op := "clone"
	if src.snapshotID != "" {
		op = "restore"
	}
	d.metrics.copied(op, st.Mechanism, st.Bytes, time.Since(start))
	klog.InfoS("NFS volume made from a content source", "volumeID", rec.ID, "snapshot", src.snapshotID, "volume", src.volumeID,
		"mechanism", st.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}
