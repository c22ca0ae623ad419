package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

func (d *hostpathDriver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := requireName(name); err != nil {
		return nil, err
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if strings.HasPrefix(name, ephemeralNamePrefix) {
		return nil, status.Errorf(codes.InvalidArgument, "volume names starting with %q are reserved for inline ephemeral volumes", ephemeralNamePrefix)
	}
	params, err := parseParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	kind, err := kindFor(req.GetVolumeCapabilities(), params.layout, d.cfg.ImageFSType)
	if err != nil {
		return nil, err
	}
	size, err := capacityFor(req.GetCapacityRange(), d.cfg.MaxVolumeSize)
	if err != nil {
		return nil, err
	}
	if err := d.checkRequisiteTopology(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}

	// A volume made from a content source: its copy runs detached, and the
	// call waits for it as long as the caller does.
	return createByName(ctx, d.core, "name", "volume", name, func(key string) (*job, *csi.CreateVolumeResponse, error) {
		return d.createVolume(ctx, req, params, kind, size, key)
	}, func(j *job) (*csi.CreateVolumeResponse, error) {
		v, err := d.store.GetVolume(j.id)
		if err != nil {
			return nil, stateError(err)
		}
		return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
	})
}

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
		j := d.jobs.start(key, v.ID, src.describe(v.ID), []string{src.lockKey}, func(jctx context.Context) error {
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

// copyIntoVolume is the job behind a restore or a clone: it copies the
// content source into the new volume (fastest mechanism first; the copy
// lands in place only once complete and on disk) and records the volume as
// ready. On failure, or when cancelled, nothing of the volume is left.
//
// limit is the request's limit_bytes (0: none), which a clone of a source
// that grew since the call must still keep.
func (d *hostpathDriver) copyIntoVolume(ctx context.Context, v *state.Volume, src *contentSource, limit int64) error {
	start := time.Now()
	st, err := d.copyStep(ctx, v.ID, func() (hostpath.CopyResult, error) {
		if src.snapshotID != "" {
			return d.vols.Restore(ctx, src.snapshotID, v.ID)
		}
		var st hostpath.CopyResult
		err := d.withCopyLocks(ctx, []string{src.volumeID}, func(vols map[string]*state.Volume, freeze []string) (err error) {
			if err := d.growForSource(v, d.heldSize(vols[src.volumeID]), limit); err != nil {
				return err
			}
			st, err = d.vols.Clone(ctx, src.volumeID, v.ID, freeze)
			return err
		})
		return st, err
	})
	if err == nil {
		err = d.fitToCapacity(v)
	}
	if err != nil {
		d.rollbackCreate(v)
		if _, ok := status.FromError(err); ok {
			return err // already says what happened, with its code
		}
		return diskError("copy content source into the new volume", err)
	}
	if err := d.markVolumeReady(v); err != nil {
		return err
	}
	// What the copy and the fit allocated is on disk now, no longer set
	// aside (and a copy-on-write copy's shared blocks are counted by what
	// they are shared with): the next sum reads them.
	d.reserved.invalidate()
	op := "clone"
	if src.snapshotID != "" {
		op = "restore"
	}
	d.metrics.copied(op, st.Mechanism, st.Bytes, time.Since(start))
	klog.InfoS("Volume made from a content source", "volumeID", v.ID, "snapshot", src.snapshotID, "volume", src.volumeID,
		"mechanism", st.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

// growForSource makes a clone whose source grew since the call (an
// expansion while the clone waited for a copy slot) as large as the source
// is now, since it holds the source whole: within the request's limit_bytes
// (OUT_OF_RANGE otherwise, the answer the same request gets from now on)
// and the largest volume, and within the node's room, checked and set aside
// in one step as a create's is.
func (d *hostpathDriver) growForSource(v *state.Volume, srcCap, limit int64) error {
	extra := srcCap - v.CapacityBytes
	if extra <= 0 {
		return nil
	}
	if limit > 0 && srcCap > limit {
		return status.Errorf(codes.OutOfRange, "the source volume grew to %d bytes since the request, more than its limit of %d bytes; ask for at least the source's size", srcCap, limit)
	}
	if srcCap > d.cfg.MaxVolumeSize {
		return status.Errorf(codes.OutOfRange, "the source volume grew to %d bytes since the request; the largest volume this driver makes is %d bytes (--max-volume-size)", srcCap, d.cfg.MaxVolumeSize)
	}
	// Held or not: a clone sets aside its whole capacity while it copies
	// (reservedBy, recordNewVolume), and the copy writes up to it.
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	avail, err := d.available()
	if err != nil {
		return err
	}
	if extra > avail {
		return status.Errorf(codes.ResourceExhausted, "the source volume grew to %d bytes since the request; the clone needs %d bytes more, and the node has %d bytes available for volumes (what volumes held to their size and copies in progress may still fill is set aside)", srcCap, extra, avail)
	}
	// The clone's claim asked what it asked: its snapshots restore at that.
	asked := v.RequestedBytes
	if asked == 0 {
		asked = v.CapacityBytes
	}
	if err := d.store.SetVolumeCapacity(v.ID, srcCap, asked); err != nil {
		return stateError(err)
	}
	v.CapacityBytes, v.RequestedBytes = srcCap, asked
	d.reserved.add(extra)
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

// fitToCapacity makes a restored or cloned volume hold its capacity, which
// may be larger than its source's: a directory's limit, an image's file
// (its filesystem grows at its first stage) or a block volume's file.
func (d *hostpathDriver) fitToCapacity(v *state.Volume) error {
	switch kindOf(v).layout {
	case LayoutImage:
		if _, err := d.vols.ExpandImage(v.ID, v.CapacityBytes); err != nil && !errors.Is(err, imagefs.ErrGrowAtNextMount) {
			return err
		}
		return nil
	case layoutBlock:
		return d.vols.ExpandBlock(v.ID, v.CapacityBytes)
	}
	return d.vols.SetDirectoryLimit(v.ID, v.Limit, v.CapacityBytes, v.ProjectID)
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

func (d *hostpathDriver) csiVolume(v *state.Volume) *csi.Volume {
	limit := v.Limit
	if limit == "" || limit == hostpath.EnforceQgroup {
		// A qgroup limit (on a volume an earlier version made) stops
		// ordinary writes, but a pod escapes it with a subvolume of its
		// own: it does not hold (hostpath.BtrfsNotHeld).
		limit = hostpath.EnforceNone
	}
	vol := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.CapacityBytes,
		AccessibleTopology: []*csi.Topology{d.topology()},
		// What the volume is and what holds it to its size, for whoever
		// reads the PV (kubectl get pv -o yaml).
		VolumeContext: map[string]string{ContextLayout: kindOf(v).layout, ContextLimit: limit},
	}
	switch {
	case v.SourceSnapshotID != "":
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnapshotID}}}
	case v.SourceVolumeID != "":
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolumeID}}}
	}
	return vol
}

func (c *core) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKeyNode: c.cfg.NodeID}}
}

// checkRequisiteTopology refuses a request that may only be placed on other
// nodes: the data would live here, where the pod cannot reach it.
func (d *hostpathDriver) checkRequisiteTopology(tr *csi.TopologyRequirement) error {
	if len(tr.GetRequisite()) == 0 {
		return nil
	}
	for _, t := range tr.GetRequisite() {
		if d.topologyMatches(t) {
			return nil
		}
	}
	return status.Errorf(codes.ResourceExhausted, "requisite topology does not include this node (%s=%s)", TopologyKeyNode, d.cfg.NodeID)
}

func (d *hostpathDriver) topologyMatches(t *csi.Topology) bool {
	for k, v := range t.GetSegments() {
		if k != TopologyKeyNode || v != d.cfg.NodeID {
			return false
		}
	}
	return true
}

func (d *hostpathDriver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := ids.ValidateVolumeID(id); err != nil {
		// No volume can have this ID, so it is already gone.
		klog.V(2).InfoS("DeleteVolume of an ID this driver never made; nothing to do", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	unlock, err := d.lockForDelete(ctx, "vol", id)
	if err != nil {
		return nil, err
	}
	defer unlock()

	v, err := d.store.GetVolume(id)
	if errors.Is(err, state.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, stateError(err)
	}
	pubs, err := d.store.PublicationsOf(id)
	if err != nil {
		return nil, stateError(err)
	}
	if len(pubs) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still %sd at %s on node %s; unpublish it first",
			id, pubs[0].Kind, pubs[0].Path, pubs[0].NodeID)
	}
	if v.Phase != state.PhaseDeleting {
		if err := d.store.SetVolumePhase(id, state.PhaseDeleting); err != nil {
			return nil, stateError(err)
		}
	}
	if err := d.removeVolumeData(v); err != nil {
		if perr := d.store.SetVolumePhase(id, v.Phase); perr != nil {
			klog.ErrorS(perr, "Cannot restore the phase of a volume whose delete failed", "volumeID", id)
		}
		return nil, diskError("delete volume data", err)
	}
	if err := d.store.DeleteVolume(id); err != nil {
		return nil, stateError(err)
	}
	d.usage.forget(id)
	klog.V(2).InfoS("Volume deleted", "volumeID", id, "name", v.Name)
	return &csi.DeleteVolumeResponse{}, nil
}

// removeVolumeData frees what a volume holds on the node (a block or image
// file's loop devices a crash may have left) and moves its data to the trash.
// Its reservation is given back once the data is gone, not before: a
// removal that fails keeps the volume, and what it may fill. Given back by
// taking the sum again, not by subtracting what the volume set aside: a
// sum taken since its phase became deleting no longer counts it, and a
// subtraction then took it out twice.
func (d *hostpathDriver) removeVolumeData(v *state.Volume) error {
	if kindOf(v).layout != LayoutDirectory {
		if err := d.vols.DetachBlock(v.ID); err != nil {
			return err
		}
	}
	if err := d.vols.Delete(v.ID); err != nil {
		return err
	}
	d.reserved.invalidate()
	return nil
}

// readyVolume returns a volume that exists and is ready, or NotFound.
func (d *hostpathDriver) readyVolume(id string) (*state.Volume, error) {
	if err := volumeIDOrNotFound(id); err != nil {
		return nil, err
	}
	v, err := d.store.GetVolume(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil, notFound("volume %s not found", id)
	}
	if err != nil {
		return nil, stateError(err)
	}
	if v.Phase != state.PhaseReady {
		return nil, status.Errorf(codes.Aborted, "volume %s is %s; retry", id, v.Phase)
	}
	return v, nil
}

func (d *hostpathDriver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	v, err := d.readyVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := servesKind(kindOf(v), c); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
		}
	}
	if p := req.GetParameters(); len(p) > 0 && !sameClassParameters(p, v.Parameters) {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "the volume was created with other parameters"}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// pageToken checks a starting token: "" or a volume ID (the first ID of the
// page). Anything else did not come from us: Aborted, as the spec says.
func pageToken(maxEntries int32, token string) error {
	if maxEntries < 0 {
		return status.Errorf(codes.InvalidArgument, "max_entries is negative (%d)", maxEntries)
	}
	if token == "" {
		return nil
	}
	if err := ids.ValidateVolumeID(token); err != nil {
		return status.Errorf(codes.Aborted, "starting_token %.64q was not issued by this driver; restart the listing without it", token)
	}
	return nil
}

// controllerListed keeps the volumes the controller lists: ready, and made by
// CreateVolume (an inline ephemeral volume belongs to its pod alone).
func controllerListed(v *state.Volume) bool { return v.Phase == state.PhaseReady && !v.Ephemeral }

// ListVolumes is the hostpath part of a listing: the router's merged listing
// ends it with the NFS volumes.
func (d *hostpathDriver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if err := pageToken(req.GetMaxEntries(), req.GetStartingToken()); err != nil {
		return nil, err
	}
	vols, next, err := d.store.ListVolumes(req.GetStartingToken(), int(req.GetMaxEntries()), controllerListed)
	if err != nil {
		return nil, stateError(err)
	}
	resp := &csi.ListVolumesResponse{NextToken: next, Entries: make([]*csi.ListVolumesResponse_Entry, 0, len(vols))}
	for _, v := range vols {
		nodes, err := d.publishedNodes(v.ID)
		if err != nil {
			return nil, stateError(err)
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: d.csiVolume(v),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: nodes},
		})
	}
	return resp, nil
}

// publishedNodes lists the nodes where a volume is published to a pod.
func (d *hostpathDriver) publishedNodes(id string) ([]string, error) {
	pubs, err := d.store.PublicationsOf(id)
	if err != nil {
		return nil, err
	}
	var nodes []string
	seen := map[string]bool{}
	for _, p := range pubs {
		if p.Kind == state.KindPublish && !seen[p.NodeID] {
			seen[p.NodeID] = true
			nodes = append(nodes, p.NodeID)
		}
	}
	return nodes, nil
}

func (d *hostpathDriver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	v, err := d.readyVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	nodes, err := d.publishedNodes(v.ID)
	if err != nil {
		return nil, stateError(err)
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: d.csiVolume(v),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: nodes},
	}, nil
}

func (d *hostpathDriver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	// csi-provisioner passes a class's parameters here as written, with
	// the keys it keeps for itself (csi.storage.k8s.io/fstype, secrets'
	// names), which it takes out before CreateVolume.
	params := maps.Clone(req.GetParameters())
	maps.DeleteFunc(params, func(k, _ string) bool { return strings.HasPrefix(k, "csi.storage.k8s.io/") })
	if _, err := parseParameters(params); err != nil {
		return nil, err
	}
	for _, c := range req.GetVolumeCapabilities() {
		if checkCapability(c) != nil {
			return &csi.GetCapacityResponse{}, nil // no capacity for what we cannot serve
		}
	}
	if t := req.GetAccessibleTopology(); t != nil && !d.topologyMatches(t) {
		return &csi.GetCapacityResponse{}, nil // another node's capacity is not ours to report
	}
	avail, err := d.available()
	if err != nil {
		return nil, err
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(min(avail, d.cfg.MaxVolumeSize)),
	}, nil
}

// copyStep runs one copy of a job, after the test seam if one is set.
func (c *core) copyStep(ctx context.Context, id string, copy func() (hostpath.CopyResult, error)) (hostpath.CopyResult, error) {
	if c.beforeCopy != nil {
		if err := c.beforeCopy(ctx, id); err != nil {
			return hostpath.CopyResult{}, err
		}
	}
	return copy()
}
