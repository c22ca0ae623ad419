package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Snapshots kept off the node. A local snapshot of a hostpath volume lives
// in the data directory of the volume's node, and is lost with the node. A
// VolumeSnapshotClass with the parameters server and share keeps it on that
// NFS export instead, as an NFS snapshot: its ID is an NFS snapshot's
// (nfss1:), so DeleteSnapshot, GetSnapshot and ListSnapshots go to the NFS
// family by the prefix, on any node or the NFS controller; its record is
// on the export, among the NFS snapshots' (phase creating first, undone by
// a retry of the name or the export's sweep), and says which kind of
// hostpath volume it is of; its data is in .hostpath-csi/snapshots/<key>/.
// The copy is the point in time a local snapshot is (the same locks,
// freeze and refusals), run as a detached job. A hostpath class restores
// it on any node, copying the tree out of the export into a new volume; an
// NFS class refuses it.

// createOffNodeSnapshot is CreateSnapshot of a hostpath volume whose class
// names an NFS export (the router checked the parameters).
func (d *hostpathDriver) createOffNodeSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest, exp *snapshotExport) (*csi.CreateSnapshotResponse, error) {
	return createByName(ctx, d.core, "snapname", "snapshot", req.GetName(), func(key string) (*job, *csi.CreateSnapshotResponse, error) {
		return d.offNodeSnapshot(ctx, req, exp, key)
	}, func(j *job) (*csi.CreateSnapshotResponse, error) {
		x, err := d.nfs.useExport(ctx, exp.server, exp.share)
		if err != nil {
			return nil, err
		}
		defer x.Release()
		s, _ := ids.ParseNFSSnapshotID(j.id)
		rec, err := x.GetSnapshot(ctx, s.Key)
		if err != nil {
			return nil, nfsError("read the snapshot's record", err)
		}
		return &csi.CreateSnapshotResponse{Snapshot: nfsCSISnapshot(rec)}, nil
	})
}

// offNodeSnapshot is the part of createOffNodeSnapshot under the name's
// lock (see createByName): it answers from the export's records, or
// records the intent there and starts the copy as a job under key.
func (d *hostpathDriver) offNodeSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest, exp *snapshotExport, key string) (*job, *csi.CreateSnapshotResponse, error) {
	name, srcID := req.GetName(), req.GetSourceVolumeId()
	if local, err := d.store.GetSnapshotByName(name); err == nil {
		// The class was changed under a snapshot already taken: one name,
		// one snapshot.
		return nil, nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists as %s, kept on node %s, not on NFS export %s:%s", name, local.ID, d.cfg.NodeID, exp.server, exp.share)
	} else if !errors.Is(err, state.ErrNotFound) {
		return nil, nil, stateError(err)
	}
	x, err := d.nfs.useExport(ctx, exp.server, exp.share)
	if err != nil {
		return nil, nil, err
	}
	defer x.Release()
	if resp, err := d.nfs.nfsExistingSnapshot(ctx, x, name, srcID); resp != nil || err != nil {
		return nil, resp, err
	}

	if err := volumeIDOrNotFound(srcID); err != nil {
		return nil, nil, err
	}
	unlockSrc, err := d.rlock(ctx, "vol", srcID)
	if err != nil {
		return nil, nil, err
	}
	src, err := d.readyVolume(srcID)
	if err == nil {
		_, err = d.copyPlanOf(src, true) // refuse at once what cannot be copied
	}
	var id, snapKey string
	if err == nil {
		id, snapKey, err = d.nfs.nfsNewSnapshotKey(ctx, x, exp.server, exp.share)
	}
	if err != nil {
		unlockSrc()
		return nil, nil, err
	}
	rec := &nfs.SnapshotRecord{ID: id, Name: name, SourceVolumeID: srcID, Phase: nfs.PhaseCreating, CreatedAt: time.Now().UTC(),
		SourceFamily: nfs.FamilyHostpath, SourceNode: d.cfg.NodeID,
		SourceAccessType: src.AccessType, SourceLayout: src.Layout, SourceFSType: src.FSType, SourceFormatted: src.Formatted}
	d.sizeOffNodeSnapshot(rec, src)
	if err := d.nfs.nfsRecordNewSnapshot(ctx, x, rec, snapKey); err != nil {
		unlockSrc()
		return nil, nil, err
	}
	what := fmt.Sprintf("snapshot %s of volume %s, kept on NFS export %s", id, srcID, x.Name())
	j := d.jobs.start(key, id, what, []string{"vol/" + srcID}, func(jctx context.Context) error {
		defer unlockSrc()
		err := d.withCopyLocksOf(jctx, []string{srcID}, true, func(vols map[string]*state.Volume, freeze []string) error {
			// The source as it is now, under its node lock (see
			// createSnapshot).
			d.sizeOffNodeSnapshot(rec, vols[srcID])
			return d.takeOffNodeSnapshot(jctx, exp, rec, snapKey, freeze)
		})
		if err != nil {
			d.rollbackOffNodeSnapshot(exp, rec, snapKey)
		}
		return err
	}, d.nfs.nfsAbandonSnapshot)
	return j, nil, nil
}

// sizeOffNodeSnapshot records src's size in rec, as sizeSnapshot does in a
// local snapshot's record.
func (d *hostpathDriver) sizeOffNodeSnapshot(rec *nfs.SnapshotRecord, src *state.Volume) {
	rec.SourceCapacity = d.heldSize(src)
	rec.SourceRequested = requestOf(src, rec.SourceCapacity)
}

// takeOffNodeSnapshot copies rec's source volume (held, and frozen where
// freeze says) into the export's snapshot directory, then records the
// snapshot as ready. The caller rolls back on error.
func (d *hostpathDriver) takeOffNodeSnapshot(ctx context.Context, exp *snapshotExport, rec *nfs.SnapshotRecord, snapKey string, freeze []string) error {
	x, err := d.nfs.useExport(ctx, exp.server, exp.share)
	if err != nil {
		return err
	}
	defer x.Release()
	start := time.Now()
	st, err := d.copyStep(ctx, rec.ID, func() (res hostpath.CopyResult, err error) {
		err = d.vols.CopyOut(ctx, rec.SourceVolumeID, freeze, func(src *beneath.Dir) error {
			s, err := x.SnapshotFrom(ctx, src, snapKey)
			res = hostpath.CopyResult{Mechanism: string(s.Mechanism()), Files: s.Files, Bytes: s.Bytes}
			return err
		})
		return res, err
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return nfsError("copy volume into snapshot on the export", err)
	}
	rec.SizeBytes, rec.Phase = st.Bytes, nfs.PhaseReady
	if err := x.PutSnapshot(context.Background(), rec, snapKey); err != nil {
		return nfsError("record the snapshot as ready", err)
	}
	d.metrics.copied("snapshot", st.Mechanism, st.Bytes, time.Since(start))
	klog.InfoS("Snapshot kept on an NFS export", "snapshotID", rec.ID, "name", rec.Name, "source", rec.SourceVolumeID, "export", x.Name(),
		"mechanism", st.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

// rollbackOffNodeSnapshot undoes a snapshot whose copy failed or was
// cancelled: its data, then its record and name. What it cannot undo stays
// in phase creating, never listed, which a retry of the name or the
// export's sweep undoes.
func (d *hostpathDriver) rollbackOffNodeSnapshot(exp *snapshotExport, rec *nfs.SnapshotRecord, snapKey string) {
	ctx, cancel := context.WithTimeout(context.Background(), d.nfs.exports.Timeout())
	defer cancel()
	x, err := d.nfs.useExport(ctx, exp.server, exp.share)
	if err == nil {
		defer x.Release()
		err = d.nfs.nfsUndoSnapshot(ctx, x, rec, snapKey)
	}
	if err != nil {
		klog.ErrorS(err, "Rolling back a failed snapshot kept on an NFS export; a retry of the name or the export's sweep will finish it", "snapshotID", rec.ID)
	}
}

// lockOffNodeSnapshot is lockContentSource for an NFS snapshot: one of a
// hostpath volume, ready, held shared (the NFS family's lock of its
// snapshots: a delete waits for the copy).
func (d *hostpathDriver) lockOffNodeSnapshot(ctx context.Context, id string) (*contentSource, error) {
	s, err := nfsSnapshotID(id)
	if err != nil {
		return nil, err
	}
	unlock, err := d.rlock(ctx, "snap", id)
	if err != nil {
		return nil, err
	}
	rec, x, err := d.nfs.nfsReadySnapshot(ctx, id)
	if err != nil {
		unlock()
		return nil, err
	}
	x.Release()
	if !rec.OfHostpath() {
		unlock()
		return nil, status.Errorf(codes.InvalidArgument, "snapshot %s is of NFS volume %s: restore it into an NFS class on %s; a hostpath volume is made from a snapshot of a hostpath volume", id, rec.SourceVolumeID, s.Export())
	}
	kind := kindOf(&state.Volume{AccessType: rec.SourceAccessType, Layout: rec.SourceLayout, FSType: rec.SourceFSType})
	return &contentSource{snapshotID: id, capacity: rec.SourceCapacity, least: rec.RestoreRequest(), kind: kind, formatted: rec.SourceFormatted,
		lockKey: "snap/" + id, unlock: unlock, export: &s}, nil
}

// restoreOffNode copies the data of an NFS snapshot of a hostpath volume
// into new volume v (partial/, then renamed into place: see
// hostpath.Backend.RestoreFrom), mounting its export as any NFS call does.
func (d *hostpathDriver) restoreOffNode(ctx context.Context, v *state.Volume, src *contentSource) (hostpath.CopyResult, error) {
	x, err := d.nfs.useExport(ctx, src.export.Server, src.export.Share)
	if err != nil {
		return hostpath.CopyResult{}, err
	}
	defer x.Release()
	dir, err := x.OpenSnapshot(ctx, src.export.Key)
	if err != nil {
		return hostpath.CopyResult{}, nfsError("open the snapshot's data", err)
	}
	defer dir.Close()
	return d.vols.RestoreFrom(ctx, dir, v.ID)
}
