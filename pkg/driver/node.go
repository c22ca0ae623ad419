package driver

import (
	"context"
	"errors"
	"io/fs"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// nodeVolume checks the common fields of a node call and returns the locked,
// ready volume. The caller must call the returned unlock.
func (d *hostpathDriver) nodeVolume(ctx context.Context, id string) (*state.Volume, func(), error) {
	if err := volumeIDOrNotFound(id); err != nil {
		return nil, nil, err
	}
	unlock, err := d.lockForNode(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	v, err := d.readyVolume(id)
	if err != nil {
		unlock()
		return nil, nil, err
	}
	if v.NodeID != d.cfg.NodeID {
		unlock()
		return nil, nil, status.Errorf(codes.FailedPrecondition, "volume %s lives on node %s, not on this node %s", id, v.NodeID, d.cfg.NodeID)
	}
	return v, unlock, nil
}

// NodeStageVolume binds the volume's directory at the staging path. Pods get
// bind mounts of the staging path (NodePublishVolume), so one staging serves
// every pod on the node.
func (d *hostpathDriver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	path := req.GetStagingTargetPath()
	if err := requirePath(path, "staging_target_path"); err != nil {
		return nil, err
	}
	if err := nodeCapability(req.GetVolumeCapability(), checkCapability); err != nil {
		return nil, err
	}
	v, unlock, err := d.nodeVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := servesKind(kindOf(v), req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}

	pub := &state.Publication{VolumeID: v.ID, NodeID: d.cfg.NodeID, Kind: state.KindStage, Path: path,
		AccessMode: req.GetVolumeCapability().GetAccessMode().GetMode().String(),
		MountFlags: req.GetVolumeCapability().GetMount().GetMountFlags()}
	// The spec: staged again at the same path with another capability is
	// ALREADY_EXISTS. Records from before the capability was kept have no
	// access mode and match any.
	same := func(r *state.Publication) bool {
		return r.AccessMode == "" || (r.AccessMode == pub.AccessMode && slices.Equal(r.MountFlags, pub.MountFlags))
	}
	done, err := d.prepareMountPoint(ctx, d.mounts(v), pub, same)
	if err != nil || done {
		return &csi.NodeStageVolumeResponse{}, err
	}
	if h := d.dataHealth(v); len(h) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has no usable data (%s); see its volume health", v.ID, h[0].Message)
	}
	if kindOf(v).block() {
		// One loop device per block volume: staged at a second path, its
		// unstage would detach the device under the first one's pods.
		pubs, err := d.store.PublicationsOf(v.ID)
		if err != nil {
			return nil, stateError(err)
		}
		for _, p := range pubs {
			if p.Kind == state.KindStage && p.Path != path {
				return nil, status.Errorf(codes.FailedPrecondition, "block volume %s is already staged at %s; a block volume is staged at one path per node", v.ID, p.Path)
			}
		}
	}
	if err := d.mountRecorded(d.mounts(v), pub, func() error { return d.stage(v, pub) }); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume staged", "volumeID", v.ID, "stagingPath", path)
	return &csi.NodeStageVolumeResponse{}, nil
}

// unmountVolume removes pub, a mount of a hostpath volume, through the
// journal.
func (d *hostpathDriver) unmountVolume(ctx context.Context, pub *state.Publication) error {
	v, err := d.store.GetVolume(pub.VolumeID)
	if err != nil {
		return stateError(err)
	}
	return d.unmountRecorded(ctx, d.mounts(v), pub)
}

func (d *hostpathDriver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	path := req.GetStagingTargetPath()
	pub, unlock, err := d.publicationToRemove(ctx, req.GetVolumeId(), state.KindStage, path)
	if err != nil || pub == nil {
		return &csi.NodeUnstageVolumeResponse{}, err
	}
	defer unlock()
	pubs, err := d.store.PublicationsOf(pub.VolumeID)
	if err != nil {
		return nil, stateError(err)
	}
	for _, p := range pubs {
		if p.Kind == state.KindPublish && p.StagingPath == path {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s from this staging path; unpublish it first", pub.VolumeID, p.Path)
		}
	}
	if v, err := d.store.GetVolume(pub.VolumeID); err != nil {
		return nil, stateError(err)
	} else if err := d.copyInProgress(v, "unstage it"); err != nil {
		return nil, err
	}
	if err := d.unmountVolume(ctx, pub); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume unstaged", "volumeID", pub.VolumeID, "stagingPath", path)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// publicationToRemove finds the record of a mount to remove. It returns a nil
// publication (and no lock) when there is nothing to do: the path is not
// mounted and not on record, so the call already succeeded. A mount at the
// path that this driver did not make is refused rather than removed.
func (d *hostpathDriver) publicationToRemove(ctx context.Context, id string, kind state.PublicationKind, path string) (*state.Publication, func(), error) {
	if err := volumeIDOrNotFound(id); err != nil {
		return nil, nil, err
	}
	unlock, err := d.lockForNode(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if ok, err := d.store.VolumeExists(id); err != nil || !ok {
		unlock()
		if err != nil {
			return nil, nil, stateError(err)
		}
		return nil, nil, notFound("volume %s not found", id)
	}
	pub, err := d.store.GetPublication(id, kind, path)
	if err == nil {
		return pub, unlock, nil
	}
	unlock()
	if !errors.Is(err, state.ErrNotFound) {
		return nil, nil, stateError(err)
	}
	if kind == state.KindPublish {
		return nil, nil, removeTarget(path, id, hostpathMountPoint)
	}
	return nil, nil, refuseForeignMount(path, id, hostpathMountPoint)
}

func (d *hostpathDriver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, staging := req.GetTargetPath(), req.GetStagingTargetPath()
	if err := nodeCapability(req.GetVolumeCapability(), checkCapability); err != nil {
		return nil, err
	}
	if isEphemeral(req.GetVolumeContext()) {
		return d.publishEphemeral(ctx, req)
	}
	if staging == "" {
		// The spec's code when STAGE_UNSTAGE_VOLUME is advertised.
		return nil, status.Error(codes.FailedPrecondition, "staging_target_path is not set; this driver stages volumes (call NodeStageVolume first)")
	}
	if err := requirePath(staging, "staging_target_path"); err != nil {
		return nil, err
	}
	v, unlock, err := d.nodeVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := servesKind(kindOf(v), req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}

	stage, err := d.store.GetPublication(v.ID, state.KindStage, staging)
	if errors.Is(err, state.ErrNotFound) || (err == nil && stage.Phase != state.PhaseMounted) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s; call NodeStageVolume first", v.ID, staging)
	}
	if err != nil {
		return nil, stateError(err)
	}

	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	pub := &state.Publication{
		VolumeID: v.ID, NodeID: d.cfg.NodeID, Kind: state.KindPublish, Path: target, StagingPath: staging,
		ReadOnly:   req.GetReadonly() || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		MountFlags: req.GetVolumeCapability().GetMount().GetMountFlags(),
		AccessMode: mode.String(),
	}
	same := func(r *state.Publication) bool {
		return r.ReadOnly == pub.ReadOnly && slices.Equal(r.MountFlags, pub.MountFlags) && r.StagingPath == pub.StagingPath
	}
	done, err := d.prepareMountPoint(ctx, d.mounts(v), pub, same)
	if err != nil || done {
		return &csi.NodePublishVolumeResponse{}, err
	}
	if err := d.checkSingleWriter(v.ID, pub); err != nil {
		return nil, err
	}
	if kindOf(v).block() {
		if err := d.copyInProgress(v, "publish it"); err != nil {
			return nil, err
		}
	}
	if j := d.jobs.reading("nowrite/" + v.ID); j != nil && (!pub.ReadOnly || kindOf(v).block()) {
		return nil, status.Errorf(codes.Aborted, "volume %s is in a %s, which needs it unwritten; retry once it ends", v.ID, j.what)
	}
	if err := d.mountRecorded(d.mounts(v), pub, func() error { return d.publish(v, pub, stage) }); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume published", "volumeID", v.ID, "targetPath", target, "readOnly", pub.ReadOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *hostpathDriver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if id := req.GetVolumeId(); id != "" && ids.ValidateVolumeID(id) != nil {
		// Not one of our IDs: the kubelet's handle of an inline volume.
		// Once that is gone (a retry), there is nothing left to do.
		if err := d.unpublishEphemeral(ctx, id, target); err != nil {
			return nil, err
		}
		return &csi.NodeUnpublishVolumeResponse{}, removeTarget(target, id, hostpathMountPoint)
	}
	pub, unlock, err := d.publicationToRemove(ctx, req.GetVolumeId(), state.KindPublish, target)
	if err != nil || pub == nil {
		return &csi.NodeUnpublishVolumeResponse{}, err
	}
	defer unlock()
	if err := d.unmountVolume(ctx, pub); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Volume unpublished", "volumeID", pub.VolumeID, "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// mountedAt returns the volume if it is mounted (staged or published) at
// path according to the records, or NotFound.
func (d *hostpathDriver) mountedAt(id, path string) (*state.Volume, error) {
	v, err := d.readyVolume(id)
	if err != nil {
		return nil, err
	}
	pubs, err := d.store.PublicationsOf(id)
	if err != nil {
		return nil, stateError(err)
	}
	for _, p := range pubs {
		if p.Path == path && p.Phase == state.PhaseMounted {
			return v, nil
		}
	}
	return nil, notFound("volume %s is not staged or published at %q on this node", id, path)
}

func (d *hostpathDriver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id := req.GetVolumeId()
	if ids.ValidateVolumeID(id) != nil {
		if v, err := d.ephemeralVolume(id); err != nil {
			return nil, err
		} else if v != nil {
			id = v.ID
		}
	}
	v, err := d.mountedAt(id, req.GetVolumePath())
	if err != nil {
		return nil, err
	}
	return d.volumeStats(v, req.GetVolumePath())
}

// volumeStats reads usage from what holds the volume to its size, at once:
// an image's filesystem (one statfs), a qgroup or project quota's own
// accounting. Only a directory that nothing holds is walked, at most once
// per --usage-interval.
func (d *hostpathDriver) volumeStats(v *state.Volume, path string) (*csi.NodeGetVolumeStatsResponse, error) {
	switch kindOf(v).layout {
	case layoutBlock:
		// A device: its size, nothing a filesystem could tell.
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: v.CapacityBytes}}}, nil
	case LayoutImage:
		u, err := d.vols.MountedImageStats(path)
		if err != nil {
			return nil, diskError("read the image filesystem's usage", err)
		}
		d.usage.set(v.ID, int64(u.UsedBytes))
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(u.TotalBytes), Used: int64(u.UsedBytes), Available: int64(u.AvailableBytes)},
			{Unit: csi.VolumeUsage_INODES, Total: int64(u.Inodes), Used: int64(u.InodesUsed), Available: int64(u.InodesFree)},
		}}, nil
	}
	fsStats, err := d.vols.Stats()
	if err != nil {
		return nil, diskError("read filesystem stats", err)
	}
	var used, inodes int64
	switch v.Limit {
	case hostpath.EnforceQgroup, hostpath.EnforceProject:
		if used, _, err = d.vols.DirectoryUsage(v.ID, v.Limit, v.ProjectID); err != nil {
			return nil, diskError("read the volume's quota usage", err)
		}
		d.usage.set(v.ID, used)
		inodes = -1 // a quota counts bytes; inodes are the filesystem's
	default:
		u, err := d.usage.measure(v.ID, d.cfg.UsageInterval, func() (hostpath.Usage, error) { return d.vols.Usage(v.ID) })
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, status.Errorf(codes.FailedPrecondition, "volume %s: data directory is missing; see its volume health", v.ID)
			}
			return nil, diskError("measure volume usage", err)
		}
		used, inodes = u.Bytes, u.Inodes
	}
	// A directory shares its filesystem: what is left is the smaller of its
	// own capacity and what the filesystem still has.
	avail := max(0, min(v.CapacityBytes-used, fsStats.AvailableBytes))
	usage := []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: v.CapacityBytes, Used: used, Available: avail}}
	if inodes >= 0 {
		usage = append(usage, &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Total: inodes + fsStats.FreeInodes, Used: inodes, Available: fsStats.FreeInodes})
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: usage}, nil
}
