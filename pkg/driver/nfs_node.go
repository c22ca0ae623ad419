package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// The node side of NFS volumes. Everything the node needs is in the ID
// (server, share, subDir); its mounts are recorded in the node's state like
// a hostpath volume's, marked Backend "nfs" (there is no volume record on
// the node), so that a restart reconciles them.
//
//	stage (staging path)               publish (pod's target)
//	mount -t nfs server:/share/subDir  bind mount of the staging path
//
// Every mount, unmount and stat runs under the NFS timeout; a dead server's
// mount is removed with a forced, lazy unmount.

const backendNFS = "nfs"

// nfsNodeCapability checks a node call's capability: INVALID_ARGUMENT when
// missing, FAILED_PRECONDITION when an NFS volume cannot serve it.
func nfsNodeCapability(c *csi.VolumeCapability) error {
	if c == nil || c.GetAccessMode() == nil || c.GetAccessType() == nil {
		return status.Error(codes.InvalidArgument, "volume capability with an access mode and an access type is required")
	}
	if err := nfsCapability(c); err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return nil
}

// nfsMounted reports whether path is a mount point, from the mount table:
// a stat of a dead server's mount would hang.
func nfsMounted(path string) (bool, error) { return nfs.IsMounted(path) }

func (d *nfsDriver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	path := req.GetStagingTargetPath()
	if err := requirePath(path, "staging_target_path"); err != nil {
		return nil, err
	}
	if err := nfsNodeCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	v, err := nfsVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	id := req.GetVolumeId()
	unlock, err := d.lock(ctx, "node", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	c := req.GetVolumeCapability()
	pub := &state.Publication{VolumeID: id, NodeID: d.cfg.NodeID, Kind: state.KindStage, Path: path, Backend: backendNFS,
		AccessMode: c.GetAccessMode().GetMode().String(), MountFlags: c.GetMount().GetMountFlags()}
	same := func(r *state.Publication) bool {
		return r.AccessMode == pub.AccessMode && slices.Equal(r.MountFlags, pub.MountFlags)
	}
	done, err := d.nfsPrepareMountPoint(ctx, v, pub, same)
	if err != nil || done {
		return &csi.NodeStageVolumeResponse{}, err
	}
	if err := os.MkdirAll(path, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path: %v", err)
	}
	err = d.nfsMountRecorded(pub, func() error {
		// nosuid,nodev on the stage too: whoever can write the export
		// (another client, a tenant with no_root_squash) must not plant
		// a setuid binary or a device node that takes effect on this node.
		return d.exports.MountVolume(ctx, v.Export(), v.Source(), path, nfsFSType(c), withTenantFlags(c.GetMount().GetMountFlags()))
	})
	if err != nil {
		return nil, err
	}
	klog.V(2).InfoS("NFS volume staged", "volumeID", id, "source", v.Source(), "stagingPath", path)
	return &csi.NodeStageVolumeResponse{}, nil
}

// nfsPrepareMountPoint is prepareMountPoint for NFS: done when the same
// mount is in place; a half-made one is cleared; a foreign one refused.
func (d *nfsDriver) nfsPrepareMountPoint(ctx context.Context, v ids.NFSVolume, pub *state.Publication, same func(*state.Publication) bool) (bool, error) {
	rec, err := d.store.GetPublication(pub.VolumeID, pub.Kind, pub.Path)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return false, stateError(err)
	}
	mounted, merr := nfsMounted(pub.Path)
	if merr != nil {
		return false, status.Errorf(codes.Internal, "check mount point %s: %v", pub.Path, merr)
	}
	if rec == nil {
		if mounted {
			return false, status.Errorf(codes.FailedPrecondition, "%s is mounted, but not by this driver for volume %s; not touching it", pub.Path, pub.VolumeID)
		}
		return false, nil
	}
	if rec.Phase == state.PhaseMounted && mounted && pub.Kind == state.KindStage {
		// A server that restarted may have left the mount with a stale
		// handle: pods would get ESTALE until it is mounted again.
		if _, err := d.exports.NodeStats(ctx, v.Export(), pub.Path); errors.Is(err, unix.ESTALE) {
			klog.InfoS("NFS mount has a stale file handle; mounting it again", "volumeID", pub.VolumeID, "path", pub.Path)
			mounted = false
		}
	}
	if rec.Phase == state.PhaseMounted && mounted {
		if !same(rec) {
			return false, status.Errorf(codes.AlreadyExists, "volume %s is already %sd at %s with another capability (access mode %s, read-only %v, flags %v)",
				pub.VolumeID, pub.Kind, pub.Path, rec.AccessMode, rec.ReadOnly, rec.MountFlags)
		}
		return true, nil
	}
	if err := d.exports.Unmount(ctx, v.Export(), pub.Path); err != nil {
		return false, nfsError(fmt.Sprintf("clear previous %s at %s", pub.Kind, pub.Path), err)
	}
	if err := d.store.DeletePublication(pub.VolumeID, pub.Kind, pub.Path); err != nil {
		return false, stateError(err)
	}
	return false, nil
}

// nfsMountRecorded records the intent, mounts, records the result; a failed
// mount leaves neither mount nor record.
func (d *nfsDriver) nfsMountRecorded(pub *state.Publication, mount func() error) error {
	pub.Phase = state.PhaseMounting
	if err := d.store.PutPublication(pub); err != nil {
		return stateError(err)
	}
	if err := mount(); err != nil {
		if derr := d.store.DeletePublication(pub.VolumeID, pub.Kind, pub.Path); derr != nil {
			klog.ErrorS(derr, "Cannot remove the record of a failed mount; start-up will", "path", pub.Path)
		}
		return nfsError(fmt.Sprintf("mount NFS volume %s at %s", pub.VolumeID, pub.Path), err)
	}
	pub.Phase = state.PhaseMounted
	if err := d.store.PutPublication(pub); err != nil {
		return stateError(err)
	}
	return nil
}

// nfsUnmountRecorded marks the publication as going, unmounts (forced and
// lazy for a dead server or a stale handle), removes a publish target and
// drops the record.
func (d *nfsDriver) nfsUnmountRecorded(ctx context.Context, v ids.NFSVolume, pub *state.Publication) error {
	pub.Phase = state.PhaseUnmounting
	if err := d.store.PutPublication(pub); err != nil {
		return stateError(err)
	}
	if err := d.exports.Unmount(ctx, v.Export(), pub.Path); err != nil {
		return nfsError(fmt.Sprintf("unmount NFS volume %s at %s", pub.VolumeID, pub.Path), err)
	}
	if pub.Kind == state.KindPublish {
		if err := os.Remove(pub.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return status.Errorf(codes.Internal, "remove target path %s: %v", pub.Path, err)
		}
	}
	if err := d.store.DeletePublication(pub.VolumeID, pub.Kind, pub.Path); err != nil {
		return stateError(err)
	}
	return nil
}

func (d *nfsDriver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	v, err := nfsVolumeID(id)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock(ctx, "node", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	pub, err := d.store.GetPublication(id, state.KindStage, path)
	if errors.Is(err, state.ErrNotFound) {
		return &csi.NodeUnstageVolumeResponse{}, d.nfsRefuseForeign(path, id)
	}
	if err != nil {
		return nil, stateError(err)
	}
	pubs, err := d.store.PublicationsOf(id)
	if err != nil {
		return nil, stateError(err)
	}
	for _, p := range pubs {
		if p.Kind == state.KindPublish && p.StagingPath == path {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s from this staging path; unpublish it first", id, p.Path)
		}
	}
	if err := d.nfsUnmountRecorded(ctx, v, pub); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("NFS volume unstaged", "volumeID", id, "stagingPath", path)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (d *nfsDriver) nfsRefuseForeign(path, id string) error {
	mounted, err := nfsMounted(path)
	if err != nil {
		return status.Errorf(codes.Internal, "check mount point %s: %v", path, err)
	}
	if mounted {
		return status.Errorf(codes.FailedPrecondition, "%s is mounted, but not by this driver for volume %s; not touching it", path, id)
	}
	return nil
}

func (d *nfsDriver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, staging := req.GetTargetPath(), req.GetStagingTargetPath()
	if err := nfsNodeCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	if staging == "" {
		return nil, status.Error(codes.FailedPrecondition, "staging_target_path is not set; this driver stages volumes (call NodeStageVolume first)")
	}
	if err := requirePath(staging, "staging_target_path"); err != nil {
		return nil, err
	}
	v, err := nfsVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	id := req.GetVolumeId()
	unlock, err := d.lock(ctx, "node", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	stage, err := d.store.GetPublication(id, state.KindStage, staging)
	if errors.Is(err, state.ErrNotFound) || (err == nil && stage.Phase != state.PhaseMounted) {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s; call NodeStageVolume first", id, staging)
	}
	if err != nil {
		return nil, stateError(err)
	}
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	pub := &state.Publication{VolumeID: id, NodeID: d.cfg.NodeID, Kind: state.KindPublish, Path: target, StagingPath: staging, Backend: backendNFS,
		ReadOnly: req.GetReadonly() || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY ||
			mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		AccessMode: mode.String()}
	same := func(r *state.Publication) bool { return r.ReadOnly == pub.ReadOnly && r.StagingPath == pub.StagingPath }
	done, err := d.nfsPrepareMountPoint(ctx, v, pub, same)
	if err != nil || done {
		return &csi.NodePublishVolumeResponse{}, err
	}
	if err := d.checkSingleWriter(id, pub); err != nil {
		return nil, err
	}
	err = d.nfsMountRecorded(pub, func() error {
		if err := os.MkdirAll(target, 0o750); err != nil {
			return fmt.Errorf("create target path: %w", err)
		}
		// The NFS mount options were applied at the stage; a bind keeps
		// them and adds read-only when asked, and always nosuid and nodev:
		// whoever can write the export (another client, a tenant with
		// no_root_squash) must not plant a setuid binary or a device node
		// that a pod then runs or opens. Under the timeout: it stats the
		// mount.
		return d.exports.Do(ctx, v.Export(), "bind "+target, func() error {
			return mountutil.Bind(staging, target, pub.ReadOnly, tenantFlags)
		})
	})
	if err != nil {
		return nil, err
	}
	klog.V(2).InfoS("NFS volume published", "volumeID", id, "targetPath", target, "readOnly", pub.ReadOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *nfsDriver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	v, err := nfsVolumeID(id)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock(ctx, "node", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	pub, err := d.store.GetPublication(id, state.KindPublish, target)
	if errors.Is(err, state.ErrNotFound) {
		if err := d.nfsRefuseForeign(target, id); err != nil {
			return nil, err
		}
		if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.Internal, "remove target path %s: %v", target, err)
		}
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, stateError(err)
	}
	if err := d.nfsUnmountRecorded(ctx, v, pub); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("NFS volume unpublished", "volumeID", id, "targetPath", target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// nfsMountedAt checks that the volume is staged or published at path.
func (d *nfsDriver) nfsMountedAt(id, path string) (ids.NFSVolume, error) {
	v, err := nfsVolumeID(id)
	if err != nil {
		return v, err
	}
	pubs, err := d.store.PublicationsOf(id)
	if err != nil {
		return v, stateError(err)
	}
	for _, p := range pubs {
		if p.Path == path && p.Phase == state.PhaseMounted {
			return v, nil
		}
	}
	return v, notFound("volume %s is not staged or published at %q on this node", id, path)
}
