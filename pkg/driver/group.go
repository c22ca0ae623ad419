package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

const maxGroupMembers = 64

// CreateVolumeGroupSnapshot snapshots several volumes together. The spec
// says a group snapshot MUST be write-order consistent or fail: members
// copied one after the other while pods write to them are neither, so a
// group is refused while any member is published writable, and while it is
// taken no member can be published writable (NodePublishVolume answers
// ABORTED until it ends). Members are ordinary snapshots for restore; they
// are deleted with their group. The copy runs detached, as for CreateSnapshot.
func (d *Driver) CreateVolumeGroupSnapshot(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	name, sources := req.GetName(), req.GetSourceVolumeIds()
	if err := requireName(name); err != nil {
		return nil, err
	}
	if len(sources) == 0 {
		return nil, status.Error(codes.InvalidArgument, "source volume IDs are required")
	}
	if len(sources) > maxGroupMembers {
		return nil, status.Errorf(codes.InvalidArgument, "%d source volumes; a group snapshot takes at most %d", len(sources), maxGroupMembers)
	}
	sorted := slices.Sorted(slices.Values(sources))
	if len(slices.Compact(slices.Clone(sorted))) != len(sorted) {
		return nil, status.Error(codes.InvalidArgument, "source volume IDs repeat a volume")
	}
	if err := groupSnapshotParameters.check(req.GetParameters()); err != nil {
		return nil, err
	}
	if err := hostpathMembers(sorted); err != nil {
		return nil, err
	}
	return createByName(ctx, d.core, "groupname", "group", name, func(key string) (*job, *csi.CreateVolumeGroupSnapshotResponse, error) {
		return d.hostpath.createGroup(ctx, req, sorted, key)
	}, func(j *job) (*csi.CreateVolumeGroupSnapshotResponse, error) {
		g, err := d.store.GetGroup(j.id)
		if err != nil {
			return nil, stateError(err)
		}
		return d.hostpath.groupResponse(g)
	})
}

// createGroup is the part of CreateVolumeGroupSnapshot under the name's
// lock (see createByName): it answers from the record, or starts the copies
// as a job under key.
func (d *hostpathDriver) createGroup(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest, sorted []string, key string) (*job, *csi.CreateVolumeGroupSnapshotResponse, error) {
	name, sources := req.GetName(), req.GetSourceVolumeIds()
	existing, err := d.store.GetGroupByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
	case err != nil:
		return nil, nil, stateError(err)
	case !slices.Equal(slices.Sorted(slices.Values(existing.SourceVolumeIDs)), sorted):
		return nil, nil, status.Errorf(codes.AlreadyExists, "group snapshot %q already exists for other volumes", name)
	case existing.Phase == state.PhaseReady:
		resp, err := d.groupResponse(existing)
		return nil, resp, err
	case existing.Phase == state.PhaseCreating:
		// No job makes it any more: undo it and take it anew.
		if err := d.undoGroup(existing); err != nil {
			return nil, nil, diskError("remove an unfinished group snapshot", err)
		}
	default:
		return nil, nil, status.Errorf(codes.Aborted, "group snapshot %q is %s; retry", name, existing.Phase)
	}

	// Every member's volume held shared (it cannot be deleted), in ID
	// order so two groups never wait on each other in a cycle; and, while
	// its publications are checked and the job is registered, its node
	// lock, so no writable publish slips in between.
	var unlocks []func()
	release := func() {
		for _, u := range slices.Backward(unlocks) {
			u()
		}
	}
	started := false
	defer func() {
		if !started {
			release()
		}
	}()
	vols := make(map[string]*state.Volume, len(sources))
	var reads []string
	for _, id := range sorted {
		if err := volumeIDOrNotFound(id); err != nil {
			return nil, nil, err
		}
		unlockVol, err := d.rlock(ctx, "vol", id)
		if err != nil {
			return nil, nil, err
		}
		unlocks = append(unlocks, unlockVol)
		unlockNode, err := d.lock(ctx, "node", id)
		if err != nil {
			return nil, nil, err
		}
		defer unlockNode()
		if vols[id], err = d.readyVolume(id); err != nil {
			return nil, nil, err
		}
		if kindOf(vols[id]).layout == LayoutImage {
			// Frozen, all members at once, for the copies: one point
			// in time across the group even while pods write.
			reads = append(reads, "vol/"+id)
			continue
		}
		if p, err := d.writablePublication(vols[id]); err != nil {
			return nil, nil, err
		} else if p != nil {
			return nil, nil, status.Errorf(codes.FailedPrecondition,
				"volume %s (%s) is published writable at %s on node %s: its members would be copied one after the other while it is written, "+
					"which is not write-order consistent; stop the writers (scale the workload down), use image volumes (layout: image, frozen together), "+
					"or snapshot the volumes one by one",
				id, kindOf(vols[id]), p.Path, p.NodeID)
		}
		reads = append(reads, "vol/"+id, "nowrite/"+id)
	}
	g := &state.GroupSnapshot{ID: ids.NewGroupSnapshotID(), Name: name, SourceVolumeIDs: sources,
		Parameters: req.GetParameters(), Phase: state.PhaseCreating, CreatedAt: time.Now().UTC()}
	for range sources {
		g.SnapshotIDs = append(g.SnapshotIDs, ids.NewSnapshotID())
	}
	if err := d.store.PutGroup(g); err != nil { // intent: members and all
		return nil, nil, stateError(err)
	}
	started = true
	what := fmt.Sprintf("group snapshot %s of %d volumes", g.ID, len(sources))
	j := d.jobs.start(key, g.ID, what, reads, func(jctx context.Context) error {
		defer release()
		return d.withCopyLocks(jctx, sorted, func(vols map[string]*state.Volume, freeze []string) error {
			return d.takeGroup(jctx, g, vols, freeze)
		})
	}, d.abandonGroup)
	return j, nil, nil
}

// abandonGroup removes a group snapshot that finished while no caller
// waited, and that no retry came for (see jobs.start).
func (d *hostpathDriver) abandonGroup(j *job) {
	g, err := d.store.GetGroup(j.id)
	if err != nil {
		return
	}
	unlock, err := d.lock(context.Background(), "groupname", g.Name)
	if err != nil {
		return
	}
	defer unlock()
	if !d.jobs.stillUncollected(j) {
		return
	}
	for _, sid := range g.SnapshotIDs {
		if d.jobs.reading("snap/"+sid) != nil {
			return
		}
	}
	if err := d.undoGroup(g); err != nil {
		klog.ErrorS(err, "Cannot remove a group snapshot whose caller never came back for it", "groupSnapshotID", g.ID)
		return
	}
	klog.InfoS("Removed a group snapshot whose caller never came back for it", "groupSnapshotID", g.ID, "name", g.Name, "after", d.jobs.keep)
}

// takeGroup is the job behind a group snapshot: every member, then the
// group's result; on failure nothing of it is left.
func (d *hostpathDriver) takeGroup(ctx context.Context, g *state.GroupSnapshot, vols map[string]*state.Volume, freeze []string) error {
	start := time.Now()
	snaps := make([]*state.Snapshot, len(g.SourceVolumeIDs))
	for i, src := range g.SourceVolumeIDs {
		snaps[i] = d.newSnapshotOf(vols[src], g.SnapshotIDs[i], fmt.Sprintf("%s/%d", g.ID, i))
		snaps[i].CreatedAt, snaps[i].GroupID = g.CreatedAt, g.ID
	}
	// The whole group's room at once, before anything is frozen.
	err := d.setAsideSnapshots(snaps, vols)
	if err == nil {
		err = d.vols.WithFrozen(freeze, func() error {
			for _, snap := range snaps {
				if err := d.takeSnapshot(ctx, snap, vols[snap.SourceVolumeID], nil); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		d.rollbackGroup(g)
		return err
	}
	g.Phase = state.PhaseReady
	if err := d.store.PutGroup(g); err != nil {
		d.rollbackGroup(g)
		return stateError(err)
	}
	klog.InfoS("Group snapshot created", "groupSnapshotID", g.ID, "name", g.Name, "volumes", len(g.SourceVolumeIDs), "duration", time.Since(start))
	return nil
}

// writablePublication returns a publication of the volume that pods can
// write through, if any. A block volume's every publication counts: a
// read-only bind of a device node does not stop writes through it.
func (d *hostpathDriver) writablePublication(v *state.Volume) (*state.Publication, error) {
	pubs, err := d.store.PublicationsOf(v.ID)
	if err != nil {
		return nil, stateError(err)
	}
	for _, p := range pubs {
		if p.Kind == state.KindPublish && (!p.ReadOnly || kindOf(v).block()) {
			return p, nil
		}
	}
	return nil, nil
}

func (d *hostpathDriver) groupResponse(g *state.GroupSnapshot) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	gs, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
}

func (d *hostpathDriver) csiGroup(g *state.GroupSnapshot) (*csi.VolumeGroupSnapshot, error) {
	gs := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.CreatedAt), ReadyToUse: g.Phase == state.PhaseReady}
	for _, id := range g.SnapshotIDs {
		snap, err := d.store.GetSnapshot(id)
		if err != nil {
			if errors.Is(err, state.ErrNotFound) {
				// A delete of the group removed members and was cut short;
				// its retry (or start-up) removes the rest.
				return nil, status.Errorf(codes.Aborted, "group snapshot %s is being deleted (member %s is gone); retry", g.ID, id)
			}
			return nil, stateError(err)
		}
		gs.Snapshots = append(gs.Snapshots, csiSnapshot(snap))
	}
	return gs, nil
}

// rollbackGroup removes whatever members were made and the group record;
// what it cannot remove stays "creating", which a retry of the name or the
// next start-up removes.
func (d *hostpathDriver) rollbackGroup(g *state.GroupSnapshot) {
	if err := d.undoGroup(g); err != nil {
		klog.ErrorS(err, "Rolling back a failed group snapshot; a retry of the name or the next start-up will finish it", "groupSnapshotID", g.ID)
	}
}

// undoGroup removes a group and its members: members first, then the record.
func (d *hostpathDriver) undoGroup(g *state.GroupSnapshot) error {
	if err := d.removeGroupMembers(g); err != nil {
		return err
	}
	return d.store.DeleteGroup(g.ID)
}

func (d *hostpathDriver) removeGroupMembers(g *state.GroupSnapshot) error {
	for _, id := range g.SnapshotIDs {
		snap, err := d.store.GetSnapshot(id)
		if errors.Is(err, state.ErrNotFound) {
			if err := d.vols.DeleteSnapshot(id); err != nil { // data without a record
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		if err := d.removeSnapshot(snap); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) DeleteVolumeGroupSnapshot(ctx context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot ID is required")
	}
	if ids.ValidateGroupSnapshotID(id) != nil {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil // no group can have this ID
	}
	if j := d.jobs.making(id); j != nil {
		if err := d.jobs.cancelAndWait(ctx, j); err != nil {
			return nil, err
		}
	}
	unlock, err := d.lock(ctx, "group", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	g, err := d.store.GetGroup(id)
	if errors.Is(err, state.ErrNotFound) {
		return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
	}
	if err != nil {
		return nil, stateError(err)
	}
	if err := checkMembers(g, req.GetSnapshotIds()); err != nil {
		return nil, err
	}
	for _, sid := range g.SnapshotIDs {
		if j := d.jobs.reading("snap/" + sid); j != nil {
			return nil, status.Errorf(codes.Aborted, "member %s of group snapshot %s is the source of a %s; retry once it ends", sid, id, j.what)
		}
		unlockSnap, err := d.lock(ctx, "snap", sid)
		if err != nil {
			return nil, err
		}
		defer unlockSnap()
	}
	g.Phase = state.PhaseDeleting
	if err := d.store.PutGroup(g); err != nil {
		return nil, stateError(err)
	}
	if err := d.hostpath.removeGroupMembers(g); err != nil {
		return nil, diskError("delete group snapshot members", err)
	}
	if err := d.store.DeleteGroup(id); err != nil {
		return nil, stateError(err)
	}
	klog.V(2).InfoS("Group snapshot deleted", "groupSnapshotID", id, "name", g.Name)
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// checkMembers refuses a request whose snapshot IDs are not the group's.
func checkMembers(g *state.GroupSnapshot, given []string) error {
	if len(given) == 0 {
		return nil
	}
	if !slices.Equal(slices.Sorted(slices.Values(given)), slices.Sorted(slices.Values(g.SnapshotIDs))) {
		return status.Errorf(codes.InvalidArgument, "snapshot IDs %v are not the members of group snapshot %s (%v)", given, g.ID, g.SnapshotIDs)
	}
	return nil
}

func (d *Driver) GetVolumeGroupSnapshot(ctx context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	id := req.GetGroupSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "group snapshot ID is required")
	}
	if err := ids.ValidateGroupSnapshotID(id); err != nil {
		return nil, status.Errorf(codes.NotFound, "group snapshot not found: %v", err)
	}
	g, err := d.store.GetGroup(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil, notFound("group snapshot %s not found", id)
	}
	if err != nil {
		return nil, stateError(err)
	}
	if err := checkMembers(g, req.GetSnapshotIds()); err != nil {
		return nil, err
	}
	gs, err := d.hostpath.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
}
