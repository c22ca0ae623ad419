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

	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

const maxGroupMembers = 64

func (d *Driver) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT}}}}}, nil
}

// CreateVolumeGroupSnapshot snapshots several volumes together. It holds
// every source volume's lock (taken in ID order, so two groups never wait on
// each other in a cycle) while the members are taken one after the other:
// no CSI call changes any member's volume in between. Members are ordinary
// snapshots for restore; they are deleted with their group.
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
	if err := checkSnapshotParameters(req.GetParameters()); err != nil {
		return nil, err
	}
	unlock, err := d.lock(ctx, "groupname", name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	existing, err := d.store.GetGroupByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
	case err != nil:
		return nil, stateError(err)
	case !slices.Equal(slices.Sorted(slices.Values(existing.SourceVolumeIDs)), sorted):
		return nil, status.Errorf(codes.AlreadyExists, "group snapshot %q already exists for other volumes", name)
	case existing.Phase == state.PhaseReady:
		return d.groupResponse(existing)
	default:
		return nil, status.Errorf(codes.Aborted, "group snapshot %q is %s; retry", name, existing.Phase)
	}

	vols := make(map[string]*state.Volume, len(sources))
	for _, id := range sorted {
		if err := volumeIDOrNotFound(id); err != nil {
			return nil, err
		}
		unlockVol, err := d.lock(ctx, "vol", id)
		if err != nil {
			return nil, err
		}
		defer unlockVol()
		if vols[id], err = d.readyVolume(id); err != nil {
			return nil, err
		}
	}
	g := &state.GroupSnapshot{ID: ids.NewGroupSnapshotID(), Name: name, SourceVolumeIDs: sources,
		Parameters: req.GetParameters(), Phase: state.PhaseCreating, CreatedAt: time.Now().UTC()}
	for range sources {
		g.SnapshotIDs = append(g.SnapshotIDs, ids.NewSnapshotID())
	}
	if err := d.store.PutGroup(g); err != nil { // intent: members and all
		return nil, stateError(err)
	}
	start := time.Now()
	for i, src := range sources {
		snap := &state.Snapshot{ID: g.SnapshotIDs[i], Name: fmt.Sprintf("%s/%d", g.ID, i), SourceVolumeID: src,
			SourceCapacity: vols[src].CapacityBytes, Phase: state.PhaseCreating, CreatedAt: g.CreatedAt, GroupID: g.ID}
		if err := d.takeSnapshot(ctx, snap); err != nil {
			d.rollbackGroup(g)
			return nil, err
		}
	}
	g.Phase = state.PhaseReady
	if err := d.store.PutGroup(g); err != nil {
		d.rollbackGroup(g)
		return nil, stateError(err)
	}
	klog.InfoS("Group snapshot created", "groupSnapshotID", g.ID, "name", name, "volumes", len(sources), "duration", time.Since(start))
	return d.groupResponse(g)
}

func (d *Driver) groupResponse(g *state.GroupSnapshot) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	gs, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
}

func (d *Driver) csiGroup(g *state.GroupSnapshot) (*csi.VolumeGroupSnapshot, error) {
	gs := &csi.VolumeGroupSnapshot{GroupSnapshotId: g.ID, CreationTime: timestamppb.New(g.CreatedAt), ReadyToUse: g.Phase == state.PhaseReady}
	for _, id := range g.SnapshotIDs {
		snap, err := d.store.GetSnapshot(id)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "group snapshot %s: member %s: %v", g.ID, id, err)
		}
		gs.Snapshots = append(gs.Snapshots, csiSnapshot(snap))
	}
	return gs, nil
}

// rollbackGroup removes whatever members were made and the group record;
// what it cannot remove, start-up removes (the group is still "creating").
func (d *Driver) rollbackGroup(g *state.GroupSnapshot) {
	if err := d.removeGroupMembers(g); err != nil {
		klog.ErrorS(err, "Rolling back a failed group snapshot; start-up will finish it", "groupSnapshotID", g.ID)
		return
	}
	if err := d.store.DeleteGroup(g.ID); err != nil {
		klog.ErrorS(err, "Rolling back a failed group snapshot: cannot remove its record", "groupSnapshotID", g.ID)
	}
}

func (d *Driver) removeGroupMembers(g *state.GroupSnapshot) error {
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
		// A restore from a member holds the member's lock; wait for it.
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
	if err := d.removeGroupMembers(g); err != nil {
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
	gs, err := d.csiGroup(g)
	if err != nil {
		return nil, err
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: gs}, nil
}
