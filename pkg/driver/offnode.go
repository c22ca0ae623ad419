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
// freeze and refusals), run as a detached job: under the freeze it is a
// copy on the node (partial/, a reflink where the data filesystem can),
// and only that copy goes to the export, with nothing frozen, so a slow or
// dead server never hangs a pod's writes. While it copies, the job
// refreshes its record's heartbeat, so that no other node's sweep of the
// export takes it for abandoned, and it records the snapshot ready only if
// its record is still there as it made it. A hostpath class restores
// it on any node, copying the tree out of the export into a new volume; an
// NFS class refuses it.

// createOffNodeSnapshot is CreateSnapshot of a hostpath volume whose class
// names an NFS export (the router checked the parameters).
func (d *hostpathDriver) createOffNodeSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest, exp *snapshotExport) (*csi.CreateSnapshotResponse, error) {
	return createByName(ctx, d.core, "snapname", "snapshot", req.GetName(), func(key string) (*job, *csi.CreateSnapshotResponse, error) {
		return d.offNodeSnapshot(ctx, req, exp, key)
	}, d.nfs.snapshotOnExport(ctx, exp.server, exp.share))
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
	// The source first, from this node's state: a missing one is
	// NOT_FOUND whatever the export does (down, slow, refusing the mount).
	if err := volumeIDOrNotFound(srcID); err != nil {
		return nil, nil, err
	}
	if _, err := d.store.GetVolume(srcID); errors.Is(err, state.ErrNotFound) {
		return nil, nil, notFound("volume %s not found", srcID)
	} else if err != nil {
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
		var dir string
		release := func() {}
		err := d.withCopyLocksOf(jctx, []string{srcID}, true, func(vols map[string]*state.Volume, freeze []string) error {
			// The source as it is now, under its node lock (see
			// createSnapshot).
			d.sizeOffNodeSnapshot(rec, vols[srcID])
			_, err := d.copyStep(jctx, rec.ID, func() (res hostpath.CopyResult, err error) {
				dir, release, err = d.offNodeCopySource(jctx, vols[srcID], freeze)
				return res, err
			})
			return err
		})
		if err == nil {
			// The point in time is taken and the freeze is over: the copy
			// to the export, as long as the server takes, holds up no
			// write of the pod's.
			err = d.takeOffNodeSnapshot(jctx, exp, rec, snapKey, dir)
			release()
		}
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

// offNodeCopySource is what the copy to the export reads, taken under the
// source's copy locks (see withCopyLocksOf): a point-in-time copy of v on
// this node (partial/, a reflink or btrfs snapshot where the data
// filesystem can, a full copy otherwise, with the freeze of freeze held
// only for it), removed by release; or, for a directory volume on a data
// filesystem without reflinks, the volume itself, as a local snapshot
// copies it (no point in time to freeze, and a copy of it here first would
// take its size again from the node's room). The copy over NFS then runs
// with nothing frozen: a slow or dead server never hangs a pod's writes.
func (d *hostpathDriver) offNodeCopySource(ctx context.Context, v *state.Volume, freeze []string) (dir string, release func(), err error) {
	if kindOf(v).layout == LayoutDirectory && !d.vols.CanReflink() {
		return d.vols.Path(v.ID), func() {}, nil
	}
	if !d.vols.CanReflink() {
		// A whole copy of an image or block file, here until it is on
		// the export.
		if err := d.roomFor(d.heldSize(v)); err != nil {
			return "", nil, err
		}
	}
	dir, release, err = d.vols.PointInTimeCopy(ctx, v.ID, freeze)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return "", nil, err
		}
		return "", nil, diskError("take the point-in-time copy of volume "+v.ID+" on the node", err)
	}
	return dir, release, nil
}

// offNodeHeartbeat is how often the job copying a snapshot to an export
// refreshes its record's heartbeat: well within nfsSweepAge, so that no
// sweep on another node takes a copy in flight for one a kill abandoned.
const offNodeHeartbeat = 2 * time.Minute

// takeOffNodeSnapshot copies dir (offNodeCopySource's) into the export's
// snapshot directory, refreshing rec's heartbeat meanwhile, then records
// the snapshot as ready, only if its record is still the one this job
// made. The caller rolls back on error.
func (d *hostpathDriver) takeOffNodeSnapshot(ctx context.Context, exp *snapshotExport, rec *nfs.SnapshotRecord, snapKey, dir string) error {
	x, err := d.nfs.useExport(ctx, exp.server, exp.share)
	if err != nil {
		return err
	}
	defer x.Release()
	src, err := beneath.OpenRoot(dir)
	if err != nil {
		return diskError("open the snapshot's source", err)
	}
	defer src.Close()
	start := time.Now()
	cctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopBeat := d.heartbeatOffNodeSnapshot(cctx, cancel, x, *rec, snapKey)
	st, err := x.SnapshotFrom(cctx, src, snapKey)
	stopBeat()
	if err != nil && ctx.Err() == nil {
		if cause := context.Cause(cctx); cause != nil {
			err = cause // the heartbeat found the record gone
		}
	}
	if err != nil {
		return nfsError("copy volume into snapshot on the export", err)
	}
	rec.SizeBytes, rec.Phase = st.Bytes, nfs.PhaseReady
	if err := x.UpdateCreatingSnapshot(context.Background(), rec, snapKey); err != nil {
		return offNodeRecordError("record the snapshot as ready", err)
	}
	d.metrics.copied("snapshot", string(st.Mechanism()), st.Bytes, time.Since(start))
	klog.InfoS("Snapshot kept on an NFS export", "snapshotID", rec.ID, "name", rec.Name, "source", rec.SourceVolumeID, "export", x.Name(),
		"mechanism", st.Mechanism(), "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

// heartbeatOffNodeSnapshot refreshes the UpdatedAt of rec (a copy: the
// caller's is not touched) every d.offNodeBeat until stop, which waits for
// it. A record found gone or replaced (a sweep on another node undid it)
// cancels the copy with that cause; a write the server does not answer in
// time is only logged, and tried again at the next beat.
func (d *hostpathDriver) heartbeatOffNodeSnapshot(ctx context.Context, cancel context.CancelCauseFunc, x *nfs.Export, rec nfs.SnapshotRecord, snapKey string) (stop func()) {
	every := d.offNodeBeat
	if every <= 0 {
		every = offNodeHeartbeat
	}
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			rec.UpdatedAt = time.Now().UTC()
			err := x.UpdateCreatingSnapshot(ctx, &rec, snapKey)
			switch {
			case errors.Is(err, nfs.ErrNotFound), errors.Is(err, nfs.ErrSnapshotReplaced):
				cancel(offNodeRecordError("refresh the heartbeat of the snapshot's record", err))
				return
			case err != nil && ctx.Err() == nil:
				klog.ErrorS(err, "Cannot refresh the heartbeat of a snapshot being copied to an NFS export; trying again", "snapshotID", rec.ID, "export", x.Name())
			}
		}
	}()
	return func() { close(quit); <-done }
}

// offNodeRecordError is the error of a write of a creating snapshot's
// record that found it gone or replaced: ABORTED (the job rolls back, a
// retry of the name takes the snapshot anew), not the NOT_FOUND a caller
// would take for its source's.
func offNodeRecordError(what string, err error) error {
	if errors.Is(err, nfs.ErrNotFound) || errors.Is(err, nfs.ErrSnapshotReplaced) {
		return status.Errorf(codes.Aborted, "%s: %v (another node's sweep of the export took the copy for abandoned); retry", what, err)
	}
	return nfsError(what, err)
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
