package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// The create lifecycle of a hostpath volume, under its name's lock
// (createByName): a name on record answered or finished (existingVolume),
// the intent recorded with its room (newVolume, recordNewVolume), the data
// made (makeEmpty, or a copy from a content source: sources.go) and the
// result recorded (markVolumeReady); undone on failure (rollbackCreate,
// undoCreate), and removed when nobody came back for it (abandonVolume).

// createVolume does the part of CreateVolume that holds the name's lock (see
// createByName). An empty volume is made at once; for a restore or a clone
// it records the intent and starts the copy as a job under key, which it
// returns for the caller to wait on without the lock.
func (d *hostpathDriver) createVolume(ctx context.Context, req *csi.CreateVolumeRequest, params volumeParams, kind volumeKind, size int64, key string) (*job, *csi.CreateVolumeResponse, error) {
	name := req.GetName()
	existing, err := d.store.GetVolumeByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
	case err != nil:
		return nil, nil, stateError(err)
	case existing.Phase == state.PhaseCreating && existing.HasSource():
		// A copy that no job runs any more (its rollback failed, or it
		// was cut short): nobody was told of it. Undo it and start over.
		if err := d.undoCreate(existing); err != nil {
			return nil, nil, err
		}
	default:
		resp, err := d.existingVolume(existing, req, params, kind)
		return nil, resp, err
	}

	var src *contentSource
	if cs := req.GetVolumeContentSource(); cs != nil {
		if src, err = d.lockContentSource(ctx, cs); err != nil {
			return nil, nil, err
		}
		started := false
		defer func() {
			if !started {
				src.unlock()
			}
		}()
		if src.kind != kind {
			// The spec's code for a source the new volume cannot be made from.
			return nil, nil, status.Errorf(codes.InvalidArgument, "the source is a %s volume; this request asks for a %s volume (use the source's volume mode, layout and filesystem)", src.kind, kind)
		}
		if size, err = sizeFor(req.GetCapacityRange(), size, src.capacity, src.least); err != nil {
			return nil, nil, err
		}
		// A block volume in whole sectors, as an empty one (sizeFor may
		// give what was asked, 3000000 bytes say).
		if size, err = sizeForKind(size, kind, req.GetCapacityRange()); err != nil {
			return nil, nil, err
		}
		if size > d.cfg.MaxVolumeSize {
			return nil, nil, status.Errorf(codes.OutOfRange, "the source needs %d bytes; the largest volume this driver makes is %d bytes (--max-volume-size)", size, d.cfg.MaxVolumeSize)
		}
		v, err := d.newVolume(req, kind, size, src)
		if err != nil {
			return nil, nil, err
		}
		v.Formatted = src.formatted
		started = true
		j := d.jobs.start(key, v.ID, src.describe(v.ID), src.reads(), func(jctx context.Context) error {
			defer src.unlock()
			return d.copyIntoVolume(jctx, v, src, req.GetCapacityRange().GetLimitBytes())
		}, d.abandonVolume)
		return j, nil, nil
	}

	if size, err = sizeForKind(size, kind, req.GetCapacityRange()); err != nil {
		return nil, nil, err
	}
	v, err := d.newVolume(req, kind, size, nil)
	if err != nil {
		return nil, nil, err
	}
	if err := d.makeEmpty(v, params.mode); err != nil {
		d.rollbackCreate(v)
		return nil, nil, err
	}
	if err := d.markVolumeReady(v); err != nil {
		return nil, nil, err
	}
	return nil, &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// newVolume checks there is room and records the intent to make a volume
// (phase creating: a crash after this point is rolled back at start-up).
func (d *hostpathDriver) newVolume(req *csi.CreateVolumeRequest, kind volumeKind, size int64, src *contentSource) (*state.Volume, error) {
	v := &state.Volume{Name: req.GetName(), Parameters: req.GetParameters(), AccessType: "mount", Layout: kind.layout, FSType: kind.fsType}
	// Checked by CreateVolume; applied at each attach of the volume's device.
	if m, err := parseHostpathMutable(req.GetMutableParameters(), kind); err == nil && len(m) > 0 {
		v.Mutable = m
	}
	if r := req.GetCapacityRange().GetRequiredBytes(); r > 0 && r < size {
		v.RequestedBytes = r // made larger than asked: a filesystem's minimum, a larger source
	}
	switch kind.layout {
	case layoutBlock:
		v.AccessType, v.Layout, v.Limit = "block", "", hostpath.EnforceImage
	case LayoutImage:
		v.Limit = hostpath.EnforceImage
	default:
		v.Limit, _ = d.vols.DirectoryLimit()
	}
	return d.recordNewVolume(v, size, src)
}

// makeEmpty makes the data of a new, empty volume: a directory held to its
// size where the data filesystem can, or an image or block file.
func (d *hostpathDriver) makeEmpty(v *state.Volume, mode os.FileMode) error {
	switch k := kindOf(v); k.layout {
	case LayoutImage, layoutBlock:
		if err := d.vols.CreateImage(v.ID, v.CapacityBytes, k.fsType); err != nil {
			return diskError("create volume image", err)
		}
		// Its file now holds its blocks, which the data filesystem's
		// free space shows: the next sum counts them there, no longer as
		// room set aside.
		d.reserved.invalidate()
	default:
		if err := d.vols.Create(v.ID, mode); err != nil {
			return diskError("create volume directory", err)
		}
		if err := d.vols.SetDirectoryLimit(v.ID, v.Limit, v.CapacityBytes, v.ProjectID); err != nil {
			return diskError("limit the volume to its size", err)
		}
	}
	return nil
}

// recordNewVolume fills in and records v as a new volume in phase creating.
func (d *hostpathDriver) recordNewVolume(v *state.Volume, size int64, src *contentSource) (*state.Volume, error) {
	// What sets room aside: a volume held to its size, and any copy (a
	// restore or a clone writes up to its size, held or not) until it is
	// made.
	setsAside := enforced(v) || src != nil
	if setsAside {
		// The check and the record under one lock: concurrent creates
		// of different names must not all take the same free bytes.
		d.roomMu.Lock()
		defer d.roomMu.Unlock()
	}
	if avail, err := d.available(); err != nil {
		return nil, err
	} else if size > avail {
		return nil, status.Errorf(codes.ResourceExhausted, "requested %d bytes but the node's data directory has %d bytes available (what volumes held to their size may still fill is set aside)", size, avail)
	}
	v.ID, v.CapacityBytes, v.NodeID = ids.NewVolumeID(), size, d.cfg.NodeID
	if v.AccessType == "" {
		v.AccessType = "mount"
	}
	v.Phase, v.CreatedAt = state.PhaseCreating, time.Now().UTC()
	if src != nil {
		v.SourceSnapshotID, v.SourceVolumeID = src.snapshotID, src.volumeID
		if src.remote != nil {
			v.SourceNode = src.remote.Node
		}
	}
	if v.Limit == hostpath.EnforceProject {
		// Allocated and recorded under one lock, so two volumes never
		// share a project.
		d.projectMu.Lock()
		defer d.projectMu.Unlock()
		id, err := d.nextProjectID()
		if err != nil {
			return nil, err
		}
		v.ProjectID = id
	}
	if err := d.store.PutVolume(v); err != nil {
		return nil, stateError(err)
	}
	if setsAside {
		d.reserved.add(size)
	}
	return v, nil
}

// nextProjectID is one past the highest project ID on record (IDs of deleted
// volumes are not reused while a higher one lives, which keeps allocation a
// scan instead of a free list). d.projectMu is held.
func (d *hostpathDriver) nextProjectID() (uint32, error) {
	vols, _, err := d.store.ListVolumes("", 0, nil)
	if err != nil {
		return 0, stateError(err)
	}
	next := uint32(hostpath.ProjectIDBase)
	for _, v := range vols {
		if v.ProjectID >= next {
			next = v.ProjectID + 1
		}
	}
	return next, nil
}

// markVolumeReady records the result: the data is complete and durable.
func (d *hostpathDriver) markVolumeReady(v *state.Volume) error {
	v.Phase = state.PhaseReady
	if err := d.store.PutVolume(v); err != nil {
		d.rollbackCreate(v)
		return stateError(err)
	}
	klog.V(2).InfoS("Volume created", "volumeID", v.ID, "name", v.Name, "capacity", v.CapacityBytes,
		"pvc", klog.KRef(v.Parameters[ParamPVCNamespace], v.Parameters[ParamPVCName]))
	return nil
}

// existingVolume answers a CreateVolume for a name already on record: the
// same volume if the request is compatible with it, AlreadyExists if not.
func (d *hostpathDriver) existingVolume(v *state.Volume, req *csi.CreateVolumeRequest, params volumeParams, kind volumeKind) (*csi.CreateVolumeResponse, error) {
	if v.Phase == state.PhaseDeleting {
		return nil, status.Errorf(codes.Aborted, "volume %s with name %q is being deleted; retry", v.ID, v.Name)
	}
	if k := kindOf(v); k != kind {
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists as a %s volume; this request asks for a %s volume", v.Name, k, kind)
	}
	req0, lim := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	switch {
	case v.CapacityBytes < req0 || (lim > 0 && v.CapacityBytes > lim):
		asked := fmt.Sprintf("at least %d bytes", req0)
		if lim > 0 {
			asked = fmt.Sprintf("%d to %d bytes", req0, lim)
		}
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with %d bytes; this request asks for %s", v.Name, v.CapacityBytes, asked)
	case !maps.Equal(v.Parameters, req.GetParameters()):
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with other parameters", v.Name)
	case v.SourceSnapshotID != req.GetVolumeContentSource().GetSnapshot().GetSnapshotId() ||
		v.SourceVolumeID != req.GetVolumeContentSource().GetVolume().GetVolumeId():
		return nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with other content (snapshot %q, volume %q)", v.Name, v.SourceSnapshotID, v.SourceVolumeID)
	}
	// A retry whose VolumeAttributesClass changed meanwhile: the keys it
	// names are recorded, as ControllerModifyVolume would record them
	// (checked by CreateVolume), rather than answered OK with the old
	// values. The volume is not attached before its CreateVolume has been
	// answered; should a stale retry come later, the next attach applies them.
	if asked, err := parseHostpathMutable(req.GetMutableParameters(), kind); err == nil && len(asked) > 0 {
		merged := maps.Clone(v.Mutable)
		if merged == nil {
			merged = map[string]string{}
		}
		maps.Copy(merged, asked)
		if !maps.Equal(merged, v.Mutable) {
			if err := d.store.SetVolumeMutable(v.ID, merged); err != nil {
				return nil, stateError(err)
			}
			v.Mutable = merged
		}
	}
	if v.Phase == state.PhaseCreating {
		// An earlier attempt of this call failed half way in this process:
		// finish it instead of making a second volume.
		if err := d.makeEmpty(v, params.mode); err != nil {
			return nil, err
		}
		v.Phase = state.PhaseReady
		if err := d.store.PutVolume(v); err != nil {
			return nil, stateError(err)
		}
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// rollbackCreate undoes a create that failed; what it cannot undo stays in
// phase creating, which a retry of the name or the next start-up undoes.
func (d *hostpathDriver) rollbackCreate(v *state.Volume) {
	if err := d.undoCreate(v); err != nil {
		klog.ErrorS(err, "Rolling back a failed create; a retry of the name or the next start-up will finish it", "volumeID", v.ID)
	}
}

// undoCreate removes a volume that was never made ready: data, then record.
func (d *hostpathDriver) undoCreate(v *state.Volume) error {
	if err := d.removeVolumeData(v); err != nil {
		return diskError(fmt.Sprintf("remove the data of unfinished volume %s", v.ID), err)
	}
	if err := d.store.DeleteVolume(v.ID); err != nil {
		return stateError(err)
	}
	d.reserved.invalidate() // what it set aside goes with its record
	return nil
}

// abandonVolume removes a restore or clone that finished while no caller
// waited, and that no retry came for: nobody knows its ID (see jobs.start).
func (d *hostpathDriver) abandonVolume(j *job) {
	v, err := d.store.GetVolume(j.id)
	if err != nil {
		return
	}
	unlock, err := d.lock(context.Background(), "name", v.Name)
	if err != nil {
		return
	}
	defer unlock()
	if !d.jobs.stillUncollected(j) || d.jobs.reading("vol/"+v.ID) != nil {
		return
	}
	unlockVol, err := d.lock(context.Background(), "vol", v.ID)
	if err != nil {
		return
	}
	defer unlockVol()
	if pubs, err := d.store.PublicationsOf(v.ID); err != nil || len(pubs) > 0 {
		return
	}
	if err := d.undoCreate(v); err != nil {
		klog.ErrorS(err, "Cannot remove a volume whose caller never came back for it", "volumeID", v.ID, "name", v.Name)
		return
	}
	klog.InfoS("Removed a volume whose caller never came back for it (its claim was deleted while it was copied?)", "volumeID", v.ID, "name", v.Name, "after", d.jobs.keep)
}
