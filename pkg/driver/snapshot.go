package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// snapshotParams says what the class of a snapshot or of a group snapshot
// may carry: known holds the metadata keys csi-snapshotter adds with
// --extra-create-metadata, own the parameters of the driver's own (a
// VolumeSnapshotClass's server and share, which keep a hostpath volume's
// snapshot on an NFS export: offnode.go).
type snapshotParams struct {
	what  string // "snapshot", "group snapshot"
	class string // the Kubernetes kind that holds the parameters
	known map[string]bool
	own   []string
}

var (
	snapshotParameters = snapshotParams{what: "snapshot", class: "VolumeSnapshotClass", known: map[string]bool{
		"csi.storage.k8s.io/volumesnapshot/name":        true,
		"csi.storage.k8s.io/volumesnapshot/namespace":   true,
		"csi.storage.k8s.io/volumesnapshotcontent/name": true,
	}, own: []string{ParamServer, ParamShare}}
	groupSnapshotParameters = snapshotParams{what: "group snapshot", class: "VolumeGroupSnapshotClass", known: map[string]bool{
		"csi.storage.k8s.io/volumegroupsnapshot/name":        true,
		"csi.storage.k8s.io/volumegroupsnapshot/namespace":   true,
		"csi.storage.k8s.io/volumegroupsnapshotcontent/name": true,
	}}
)

// ignoredSnapshotParameters are keys a class carries that mean nothing to
// the driver but are no mistake: the Kubernetes storage e2e suite
// (test/e2e/storage/testsuites, and classes copied from it) repeats a
// class's deletionPolicy in its parameters, where csi-snapshotter passes it
// on. The class's own deletionPolicy field is what the sidecars act on, so
// the key is accepted, logged and ignored (csi-driver-host-path ignores
// every key it does not use). Any other unknown key stays an error: a typo
// in a class must say so, not be dropped in silence.
var ignoredSnapshotParameters = map[string]bool{
	"deletionPolicy": true,
}

func (p snapshotParams) check(params map[string]string) error {
	if len(params) > maxParams {
		return status.Errorf(codes.InvalidArgument, "too many parameters: %d (at most %d)", len(params), maxParams)
	}
	for _, k := range slices.Sorted(maps.Keys(params)) {
		switch {
		case p.known[k], slices.Contains(p.own, k):
		case ignoredSnapshotParameters[k]:
			klog.V(2).InfoS("Ignoring a "+p.class+" parameter the driver does not use", "parameter", k, "value", params[k],
				"why", "the class's own field of that name is what applies")
		case len(p.own) > 0:
			return status.Errorf(codes.InvalidArgument, "unknown %s parameter %.64q; a %s takes %s (to keep snapshots of hostpath volumes on an NFS export) and nothing else of its own: remove it from the %s (deletionPolicy belongs in the class's own field)",
				p.what, k, p.class, strings.Join(p.own, " and "), p.class)
		default:
			return status.Errorf(codes.InvalidArgument, "unknown %s parameter %.64q; %ss take no parameters of their own: remove it from the %s (deletionPolicy belongs in the class's own field)",
				p.what, k, p.what, p.class)
		}
	}
	return nil
}

// snapshotExport is the NFS export a VolumeSnapshotClass keeps its
// snapshots of hostpath volumes on.
type snapshotExport struct{ server, share string }

// parse checks a class's parameters (see check) and returns the export
// its parameters server and share name, or nil when they name none. They
// are checked as an NFS StorageClass's are (parseNFSParameters); one
// without the other is INVALID_ARGUMENT naming the one missing.
func (p snapshotParams) parse(params map[string]string) (*snapshotExport, error) {
	if err := p.check(params); err != nil {
		return nil, err
	}
	server, hasServer := params[ParamServer]
	share, hasShare := params[ParamShare]
	switch {
	case !hasServer && !hasShare:
		return nil, nil
	case !hasServer:
		return nil, status.Errorf(codes.InvalidArgument, "%s parameter %s needs the parameter %s too: they name the NFS export (server:share) where snapshots of hostpath volumes are kept", p.class, ParamShare, ParamServer)
	case !hasShare:
		return nil, status.Errorf(codes.InvalidArgument, "%s parameter %s needs the parameter %s too (the exported path, such as /export): they name the NFS export where snapshots of hostpath volumes are kept", p.class, ParamServer, ParamShare)
	}
	np, err := parseNFSParameters(map[string]string{ParamServer: server, ParamShare: share})
	if err != nil {
		return nil, err
	}
	return &snapshotExport{server: np.server, share: np.share}, nil
}

func csiSnapshot(s *state.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		// The least size a restore asks for (Kubernetes shows it as
		// restoreSize, and csi-provisioner refuses a claim asking less):
		// the source's capacity, or its request where the driver made it
		// larger than asked; never the bytes copied.
		SizeBytes:       s.RestoreRequest(),
		CreationTime:    timestamppb.New(s.CreatedAt),
		ReadyToUse:      s.Phase == state.PhaseReady,
		GroupSnapshotId: s.GroupID,
	}
}

// CreateSnapshot copies the source volume with the fastest mechanism its
// filesystem offers. The copy runs detached from the call (see job): a retry
// while it runs is ABORTED at once, and the first retry after it ended gets
// the snapshot. The source is held shared, so it cannot be deleted mid-copy
// while its pods' mounts and other copies of it go on.
func (d *hostpathDriver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	return createByName(ctx, d.core, "snapname", "snapshot", req.GetName(), func(key string) (*job, *csi.CreateSnapshotResponse, error) {
		return d.createSnapshot(ctx, req, key)
	}, func(j *job) (*csi.CreateSnapshotResponse, error) {
		snap, err := d.store.GetSnapshot(j.id)
		if err != nil {
			return nil, stateError(err)
		}
		return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
	})
}

// createSnapshot is the part of CreateSnapshot under the name's lock (see
// createByName): it answers from the record, or starts the copy as a job
// under key.
func (d *hostpathDriver) createSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest, key string) (*job, *csi.CreateSnapshotResponse, error) {
	name, srcID := req.GetName(), req.GetSourceVolumeId()
	existing, err := d.store.GetSnapshotByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
	case err != nil:
		return nil, nil, stateError(err)
	case existing.SourceVolumeID != srcID:
		return nil, nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for volume %s, not %s", name, existing.SourceVolumeID, srcID)
	case existing.Phase == state.PhaseReady:
		return nil, &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(existing)}, nil
	case existing.Phase == state.PhaseCreating:
		// No job makes it any more: undo it and take the snapshot anew.
		if err := d.undoSnapshot(existing); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, status.Errorf(codes.Aborted, "snapshot %q is %s; retry", name, existing.Phase)
	}

	if err := volumeIDOrNotFound(srcID); err != nil {
		return nil, nil, err
	}
	unlockSrc, err := d.rlock(ctx, "vol", srcID)
	if err != nil {
		return nil, nil, err
	}
	src, err := d.readyVolume(srcID)
	if err != nil {
		unlockSrc()
		return nil, nil, err
	}
	if _, err := d.copyPlan(src); err != nil { // refuse at once what cannot be copied
		unlockSrc()
		return nil, nil, err
	}
	snap := d.newSnapshotOf(src, ids.NewSnapshotID(), name)
	snap.Parameters = req.GetParameters()
	what := fmt.Sprintf("snapshot %s of volume %s", snap.ID, srcID)
	j := d.jobs.start(key, snap.ID, what, []string{"vol/" + srcID}, func(jctx context.Context) error {
		defer unlockSrc()
		return d.withCopyLocks(jctx, []string{srcID}, func(vols map[string]*state.Volume, freeze []string) error {
			// The source as it is now, under its node lock: an expansion
			// since the call changed its size, and one a kill cut short
			// left its file larger than its record.
			d.sizeSnapshot(snap, vols[srcID])
			if err := d.setAsideSnapshots([]*state.Snapshot{snap}, vols); err != nil {
				return err
			}
			return d.takeSnapshot(jctx, snap, vols[srcID], freeze)
		})
	}, d.abandonSnapshot)
	return j, nil, nil
}

// takeSnapshot copies snap's source (its intent on record with its room,
// see setAsideSnapshots) and records the result; on failure nothing of it
// is left. The caller holds the source volume shared.
func (d *hostpathDriver) takeSnapshot(ctx context.Context, snap *state.Snapshot, src *state.Volume, freeze []string) error {
	start := time.Now()
	st, err := d.copyStep(ctx, snap.ID, func() (hostpath.CopyResult, error) {
		return d.vols.Snapshot(ctx, snap.SourceVolumeID, snap.ID, freeze)
	})
	if err != nil {
		d.rollbackSnapshot(snap)
		return diskError("copy volume into snapshot", err)
	}
	snap.SizeBytes, snap.Mechanism, snap.Phase = st.Bytes, st.Mechanism, state.PhaseReady
	snap.RoomBytes = roomAfterCopy(src, st.Mechanism, st.Bytes)
	if err := d.store.PutSnapshot(snap); err != nil {
		d.rollbackSnapshot(snap)
		return stateError(err)
	}
	// The copy is on disk, and a source that shares blocks with it sets
	// aside more: the next sum reads both.
	d.reserved.invalidate()
	d.metrics.copied("snapshot", snap.Mechanism, st.Bytes, time.Since(start))
	klog.InfoS("Snapshot created", "snapshotID", snap.ID, "name", snap.Name, "source", snap.SourceVolumeID, "group", snap.GroupID,
		"mechanism", snap.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

// abandonSnapshot removes a snapshot that finished while no caller waited,
// and that no retry came for (see jobs.start).
func (d *hostpathDriver) abandonSnapshot(j *job) {
	snap, err := d.store.GetSnapshot(j.id)
	if err != nil {
		return
	}
	unlock, err := d.lock(context.Background(), "snapname", snap.Name)
	if err != nil {
		return
	}
	defer unlock()
	if !d.jobs.stillUncollected(j) || d.jobs.reading("snap/"+snap.ID) != nil {
		return
	}
	if err := d.removeSnapshot(snap); err != nil {
		klog.ErrorS(err, "Cannot remove a snapshot whose caller never came back for it", "snapshotID", snap.ID, "name", snap.Name)
		return
	}
	klog.InfoS("Removed a snapshot whose caller never came back for it (its VolumeSnapshot was deleted while it was copied?)", "snapshotID", snap.ID, "name", snap.Name, "after", d.jobs.keep)
}

// newSnapshotOf is the record of a new snapshot of src, in phase creating.
// Its size is what a copy of src holds now (see heldSize), which a restore
// must have room for.
func (d *hostpathDriver) newSnapshotOf(src *state.Volume, id, name string) *state.Snapshot {
	snap := &state.Snapshot{ID: id, Name: name, SourceVolumeID: src.ID,
		SourceAccessType: src.AccessType, SourceLayout: src.Layout, SourceFSType: src.FSType, SourceFormatted: src.Formatted,
		Phase: state.PhaseCreating, CreatedAt: time.Now().UTC()}
	d.sizeSnapshot(snap, src)
	return snap
}

// sizeSnapshot records what a copy of src holds now (see heldSize) as snap's
// size, and the request a claim like src's makes (see requestOf).
func (d *hostpathDriver) sizeSnapshot(snap *state.Snapshot, src *state.Volume) {
	snap.SourceCapacity = d.heldSize(src)
	snap.SourceRequested = requestOf(src, snap.SourceCapacity)
}

// requestOf is the size the CO asked for v when the driver made v larger
// (RequestedBytes), or 0. held is v's heldSize: a volume that is growing, or
// whose file grew beyond its record, is sized by that alone.
func requestOf(v *state.Volume, held int64) int64 {
	if r := v.RequestedBytes; r > 0 && r < held && held == v.CapacityBytes {
		return r
	}
	return 0
}

// rollbackSnapshot undoes a snapshot that failed; what it cannot undo stays
// in phase creating, which a retry of the name or the next start-up undoes.
func (d *hostpathDriver) rollbackSnapshot(s *state.Snapshot) {
	if err := d.undoSnapshot(s); err != nil {
		klog.ErrorS(err, "Rolling back a failed snapshot; a retry of the name or the next start-up will finish it", "snapshotID", s.ID)
	}
}

// undoSnapshot removes a snapshot that was never made ready: data, then record.
func (d *hostpathDriver) undoSnapshot(s *state.Snapshot) error {
	if err := d.vols.DeleteSnapshot(s.ID); err != nil {
		return diskError(fmt.Sprintf("remove the data of unfinished snapshot %s", s.ID), err)
	}
	if err := d.store.DeleteSnapshot(s.ID); err != nil {
		return stateError(err)
	}
	d.reserved.invalidate() // its room set aside goes with its record
	return nil
}

func (d *hostpathDriver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if ids.ValidateSnapshotID(id) != nil {
		return &csi.DeleteSnapshotResponse{}, nil // no snapshot can have this ID
	}
	unlock, err := d.lockForDelete(ctx, "snap", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	snap, err := d.store.GetSnapshot(id)
	if errors.Is(err, state.ErrNotFound) {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, stateError(err)
	}
	if snap.GroupID != "" {
		// The spec's code for "part of a group, cannot be deleted alone".
		return nil, status.Errorf(codes.InvalidArgument, "snapshot %s is a member of group snapshot %s and cannot be deleted alone; delete the group", id, snap.GroupID)
	}
	if err := d.removeSnapshot(snap); err != nil {
		return nil, err
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// removeSnapshot deletes a snapshot's data and record, intent first.
func (d *hostpathDriver) removeSnapshot(snap *state.Snapshot) error {
	id := snap.ID
	snap.Phase = state.PhaseDeleting
	if err := d.store.PutSnapshot(snap); err != nil {
		return stateError(err)
	}
	if err := d.vols.DeleteSnapshot(id); err != nil {
		return diskError("delete snapshot data", err)
	}
	if err := d.store.DeleteSnapshot(id); err != nil {
		return stateError(err)
	}
	// Its room set aside goes with its record, and a source that shared
	// blocks with it owns them alone again.
	d.reserved.invalidate()
	klog.V(2).InfoS("Snapshot deleted", "snapshotID", id, "name", snap.Name)
	return nil
}

// ListSnapshots is the hostpath part of a listing (the router's merged
// listing ends a complete one with the NFS snapshots), or the hostpath
// snapshot of an ID.
func (d *hostpathDriver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	token := req.GetStartingToken()
	if token != "" && ids.ValidateSnapshotID(token) != nil {
		return nil, status.Errorf(codes.Aborted, "starting_token %.64q was not issued by this driver; restart the listing without it", token)
	}
	if id := req.GetSnapshotId(); id != "" {
		snap, err := d.store.GetSnapshot(id)
		if err != nil || snap.Phase != state.PhaseReady || (req.GetSourceVolumeId() != "" && snap.SourceVolumeID != req.GetSourceVolumeId()) {
			return &csi.ListSnapshotsResponse{}, nil
		}
		return &csi.ListSnapshotsResponse{Entries: []*csi.ListSnapshotsResponse_Entry{{Snapshot: csiSnapshot(snap)}}}, nil
	}
	keep := func(s *state.Snapshot) bool {
		return s.Phase == state.PhaseReady && (req.GetSourceVolumeId() == "" || s.SourceVolumeID == req.GetSourceVolumeId())
	}
	snaps, next, err := d.store.ListSnapshots(token, int(req.GetMaxEntries()), keep)
	if err != nil {
		return nil, stateError(err)
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range snaps {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return resp, nil
}

func (d *hostpathDriver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	snap, err := d.readySnapshot(req.GetSnapshotId())
	if err != nil {
		return nil, err
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

func (d *hostpathDriver) readySnapshot(id string) (*state.Snapshot, error) {
	if err := snapshotIDOrNotFound(id); err != nil {
		return nil, err
	}
	snap, err := d.store.GetSnapshot(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil, notFound("snapshot %s not found", id)
	}
	if err != nil {
		return nil, stateError(err)
	}
	if snap.Phase == state.PhaseDeleting {
		// Never ready again: its delete (or start-up) finishes it.
		return nil, notFound("snapshot %s is being deleted", id)
	}
	if snap.Phase != state.PhaseReady {
		return nil, status.Errorf(codes.Aborted, "snapshot %s is %s; retry", id, snap.Phase)
	}
	return snap, nil
}
