package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// Snapshots of NFS volumes are copies kept on the same export, in
// .hostpath-csi/snapshots/<key>/. They run as the driver's detached jobs,
// like hostpath copies: a retry while one runs is ABORTED at once, the first
// retry after it ended gets the result.

func nfsCSISnapshot(r *nfs.SnapshotRecord) *csi.Snapshot {
	// A hostpath volume's snapshot restores at its source's request, as a
	// local one does (csiSnapshot); an NFS volume's records none.
	return &csi.Snapshot{SnapshotId: r.ID, SourceVolumeId: r.SourceVolumeID, SizeBytes: r.RestoreRequest(),
		CreationTime: timestamppb.New(r.CreatedAt), ReadyToUse: r.Phase == nfs.PhaseReady}
}

func (d *nfsDriver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	src, err := nfsVolumeID(req.GetSourceVolumeId())
	if err != nil {
		return nil, err
	}
	return createByName(ctx, d.core, "snapname", "snapshot", req.GetName(), func(key string) (*job, *csi.CreateSnapshotResponse, error) {
		return d.nfsSnapshot(ctx, req, src, key)
	}, d.snapshotOnExport(ctx, src.Server, src.Share))
}

// snapshotOnExport answers a CreateSnapshot whose job made a snapshot on
// the export server:share (of an NFS volume, or kept off a hostpath
// volume's node) from the snapshot's record there.
func (d *nfsDriver) snapshotOnExport(ctx context.Context, server, share string) func(*job) (*csi.CreateSnapshotResponse, error) {
	return func(j *job) (*csi.CreateSnapshotResponse, error) {
		x, err := d.useExport(ctx, server, share)
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
	}
}

// nfsSnapshot is the part of CreateSnapshot under the name's lock (see
// createByName): it answers from the export's records, or starts the copy
// as a job under key.
func (d *nfsDriver) nfsSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest, src ids.NFSVolume, key string) (*job, *csi.CreateSnapshotResponse, error) {
	name, srcID := req.GetName(), req.GetSourceVolumeId()
	x, err := d.useExport(ctx, src.Server, src.Share)
	if err != nil {
		return nil, nil, err
	}
	defer x.Release()

	if resp, err := d.nfsExistingSnapshot(ctx, x, name, srcID); resp != nil || err != nil {
		return nil, resp, err
	}

	unlockSrc, err := d.rlock(ctx, "vol", srcID)
	if err != nil {
		return nil, nil, err
	}
	srcRec, err := x.GetVolume(ctx, src.Key)
	switch {
	case errors.Is(err, nfs.ErrNotFound) || (err == nil && srcRec.ID != srcID):
		err = notFound("volume %s not found on %s", srcID, x.Name())
	case err != nil:
		err = nfsError("read source volume record", err)
	case srcRec.Phase != nfs.PhaseReady:
		err = status.Errorf(codes.Aborted, "volume %s is %s; retry", srcID, srcRec.Phase)
	}
	if err != nil {
		unlockSrc()
		return nil, nil, err
	}
	id, snapKey, err := d.nfsNewSnapshotKey(ctx, x, src.Server, src.Share)
	if err != nil {
		unlockSrc()
		return nil, nil, err
	}
	rec := &nfs.SnapshotRecord{ID: id, Name: name, SourceVolumeID: srcID, SourceCapacity: srcRec.CapacityBytes,
		Phase: nfs.PhaseCreating, CreatedAt: time.Now().UTC()}
	if err := d.nfsRecordNewSnapshot(ctx, x, rec, snapKey); err != nil {
		unlockSrc()
		return nil, nil, err
	}
	what := fmt.Sprintf("snapshot %s of NFS volume %s", id, srcID)
	j := d.jobs.start(key, id, what, []string{"vol/" + srcID}, func(jctx context.Context) error {
		defer unlockSrc()
		return d.nfsTakeSnapshot(jctx, src, srcRec.SubDir, rec, snapKey)
	}, d.nfsAbandonSnapshot)
	return j, nil, nil
}

// nfsExistingSnapshot answers a CreateSnapshot from the records of export
// x: the snapshot of that name when it is ready and of the same source,
// ALREADY_EXISTS when it is of another, ABORTED while it is deleted; nil
// and nil when there is none to answer from (no snapshot of that name, or
// one a kill cut short, undone here to be taken anew). The caller holds
// the name's lock.
func (d *nfsDriver) nfsExistingSnapshot(ctx context.Context, x *nfs.Export, name, srcID string) (*csi.CreateSnapshotResponse, error) {
	id, err := x.LookupName(ctx, nfs.KindSnapshot, name)
	if errors.Is(err, nfs.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, nfsError("look up snapshot name", err)
	}
	s, perr := ids.ParseNFSSnapshotID(id)
	var existing *nfs.SnapshotRecord
	if perr == nil {
		existing, err = x.GetSnapshot(ctx, s.Key)
	}
	switch {
	case perr != nil || errors.Is(err, nfs.ErrNotFound):
	case err != nil:
		return nil, nfsError("read snapshot record", err)
	case existing.ID != id:
		// An entry whose create found its key taken: the record is
		// another snapshot's. Take this one anew.
	case existing.SourceVolumeID != srcID:
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for volume %s, not %s", name, existing.SourceVolumeID, srcID)
	case existing.Phase == nfs.PhaseReady:
		return &csi.CreateSnapshotResponse{Snapshot: nfsCSISnapshot(existing)}, nil
	case existing.Phase == nfs.PhaseCreating:
		// No job makes it here: cut short by a kill. Undo, take anew.
		if err := d.nfsUndoSnapshot(ctx, x, existing, s.Key); err != nil {
			return nil, err
		}
		klog.InfoS("Rolled back an NFS snapshot that was interrupted", "snapshotID", existing.ID, "name", name)
	default:
		return nil, status.Errorf(codes.Aborted, "snapshot %q is %s; retry", name, existing.Phase)
	}
	return nil, nil
}

// nfsNewSnapshotKey draws the ID of a new snapshot on export x (server
// and share as its ID spells them), and its key.
func (d *nfsDriver) nfsNewSnapshotKey(ctx context.Context, x *nfs.Export, server, share string) (string, string, error) {
	id, snapKey, err := drawUnusedKey(ctx, "snapshot", func() (string, string, error) {
		id, s, err := ids.NewNFSSnapshotID(server, share)
		if err != nil {
			return "", "", status.Errorf(codes.Internal, "%v", err)
		}
		return id, s.Key, nil
	}, func(ctx context.Context, key string) error {
		_, err := x.GetSnapshot(ctx, key)
		return err
	})
	if err == nil {
		warnLongID("snapshot", id)
	}
	return id, snapKey, err
}

// nfsRecordNewSnapshot records the intent of a new snapshot (rec, in phase
// creating) and its name on export x, before any of its data is copied: a
// kill from here on leaves a record that a retry of the name, or the
// export's sweep, undoes (see nfsExistingSnapshot, sweepExport).
func (d *nfsDriver) nfsRecordNewSnapshot(ctx context.Context, x *nfs.Export, rec *nfs.SnapshotRecord, snapKey string) error {
	err := x.PutName(ctx, nfs.KindSnapshot, rec.Name, rec.ID)
	if err == nil {
		err = x.CreateSnapshot(ctx, rec, snapKey)
	}
	if err != nil {
		return nfsError("record the new snapshot", err)
	}
	return nil
}

// nfsTakeSnapshot is the job: copy, then the record says ready (the copy is
// on the server by then: see nfs.Export.Snapshot).
func (d *nfsDriver) nfsTakeSnapshot(ctx context.Context, src ids.NFSVolume, subDir string, rec *nfs.SnapshotRecord, snapKey string) error {
	x, err := d.useExport(ctx, src.Server, src.Share)
	if err != nil {
		return err
	}
	defer x.Release()
	start := time.Now()
	st, err := d.copyStep(ctx, rec.ID, func() (hostpath.CopyResult, error) {
		s, err := x.Snapshot(ctx, subDir, snapKey)
		return hostpath.CopyResult{Mechanism: string(s.Mechanism()), Files: s.Files, Bytes: s.Bytes}, err
	})
	if err != nil {
		if uerr := d.nfsUndoSnapshot(context.Background(), x, rec, snapKey); uerr != nil {
			klog.ErrorS(uerr, "Rolling back a failed NFS snapshot; a retry of the name will finish it", "snapshotID", rec.ID)
		}
		return nfsError("copy volume into snapshot", err)
	}
	rec.SizeBytes, rec.Phase = st.Bytes, nfs.PhaseReady
	if err := x.PutSnapshot(context.Background(), rec, snapKey); err != nil {
		return nfsError("record the snapshot as ready", err)
	}
	d.metrics.copied("snapshot", st.Mechanism, st.Bytes, time.Since(start))
	klog.InfoS("NFS snapshot created", "snapshotID", rec.ID, "name", rec.Name, "source", rec.SourceVolumeID,
		"mechanism", st.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

func (d *nfsDriver) nfsUndoSnapshot(ctx context.Context, x *nfs.Export, rec *nfs.SnapshotRecord, snapKey string) error {
	if err := x.RemoveSnapshotData(ctx, snapKey); err != nil {
		return nfsError(fmt.Sprintf("remove the data of snapshot %s", rec.ID), err)
	}
	if err := x.DeleteSnapshot(ctx, rec, snapKey); err != nil {
		return nfsError("remove snapshot record", err)
	}
	return nil
}

func (d *nfsDriver) nfsAbandonSnapshot(j *job) {
	s, err := ids.ParseNFSSnapshotID(j.id)
	if err != nil {
		return
	}
	ctx := context.Background()
	x, err := d.exports.Use(ctx, s.Server, s.Share)
	if err != nil {
		return
	}
	defer x.Release()
	rec, err := x.GetSnapshot(ctx, s.Key)
	if err != nil {
		return
	}
	unlock, err := d.lock(ctx, "snapname", rec.Name)
	if err != nil {
		return
	}
	defer unlock()
	if !d.jobs.stillUncollected(j) || d.jobs.reading("snap/"+j.id) != nil {
		return
	}
	if err := d.nfsUndoSnapshot(ctx, x, rec, s.Key); err != nil {
		klog.ErrorS(err, "Cannot remove an NFS snapshot whose caller never came back for it", "snapshotID", j.id)
	}
}

func (d *nfsDriver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	s, err := ids.ParseNFSSnapshotID(id)
	if err != nil {
		return &csi.DeleteSnapshotResponse{}, nil // no snapshot can have this ID
	}
	unlock, err := d.lockForDelete(ctx, "snap", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	x, err := d.useExport(ctx, s.Server, s.Share)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	rec, err := x.GetSnapshot(ctx, s.Key)
	if errors.Is(err, nfs.ErrNotFound) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, nfsError("read snapshot record", err)
	}
	rec.Phase = nfs.PhaseDeleting
	if err := x.PutSnapshot(ctx, rec, s.Key); err != nil {
		return nil, nfsError("record the delete", err)
	}
	if err := d.nfsUndoSnapshot(ctx, x, rec, s.Key); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("NFS snapshot deleted", "snapshotID", id, "name", rec.Name)
	return &csi.DeleteSnapshotResponse{}, nil
}

// nfsReadySnapshot returns the record of a ready NFS snapshot, or NotFound;
// the caller releases the export.
func (d *nfsDriver) nfsReadySnapshot(ctx context.Context, id string) (*nfs.SnapshotRecord, *nfs.Export, error) {
	s, err := nfsSnapshotID(id)
	if err != nil {
		return nil, nil, err
	}
	x, err := d.useExport(ctx, s.Server, s.Share)
	if err != nil {
		return nil, nil, err
	}
	rec, err := x.GetSnapshot(ctx, s.Key)
	if errors.Is(err, nfs.ErrNotFound) || (err == nil && rec.ID != id) {
		x.Release()
		return nil, nil, notFound("snapshot %s not found on %s", id, s.Export())
	}
	if err != nil {
		x.Release()
		return nil, nil, nfsError("read snapshot record", err)
	}
	if rec.Phase != nfs.PhaseReady {
		x.Release()
		return nil, nil, status.Errorf(codes.Aborted, "snapshot %s is %s; retry", id, rec.Phase)
	}
	return rec, x, nil
}

func (d *nfsDriver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	rec, x, err := d.nfsReadySnapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	x.Release()
	return &csi.GetSnapshotResponse{Snapshot: nfsCSISnapshot(rec)}, nil
}
