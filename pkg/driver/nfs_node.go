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

// nfsMounted reports whether path is a mount point, from the mount table:
// a stat of a dead server's mount would hang.
func nfsMounted(path string) (bool, error) { return nfs.IsMounted(path) }

// nfsMounts are the mounts of NFS volume v on this node, for the journal
// (journal.go). Every mount, unmount and stat runs under the NFS timeout.
type nfsMounts struct {
	d *nfsDriver
	v ids.NFSVolume
}

func (d *nfsDriver) mounts(v ids.NFSVolume) nfsMounts { return nfsMounts{d: d, v: v} }

func (nfsMounts) mountPoint(path string) (bool, error) { return nfsMounted(path) }

// present is whether rec's path is mounted, from the mount table; a staged
// mount whose server restarted may have a stale file handle, which pods
// would get ESTALE from until it is mounted again: it is not in place.
func (m nfsMounts) present(ctx context.Context, rec *state.Publication) (bool, error) {
	mounted, err := nfsMounted(rec.Path)
	if err != nil {
		return false, status.Errorf(codes.Internal, "check mount point %s: %v", rec.Path, err)
	}
	if rec.Phase == state.PhaseMounted && mounted && rec.Kind == state.KindStage {
		if _, err := m.d.exports.NodeStats(ctx, m.v.Export(), rec.Path); errors.Is(err, unix.ESTALE) {
			klog.InfoS("NFS mount has a stale file handle; mounting it again", "volumeID", rec.VolumeID, "path", rec.Path)
			mounted = false
		}
	}
	return mounted, nil
}

func (m nfsMounts) clear(ctx context.Context, rec *state.Publication) error {
	if err := m.d.exports.Unmount(ctx, m.v.Export(), rec.Path); err != nil {
		return nfsError(fmt.Sprintf("clear previous %s at %s", rec.Kind, rec.Path), err)
	}
	return nil
}

// unmount unmounts (forced and lazy for a dead server or a stale handle) and
// removes a publish target.
func (m nfsMounts) unmount(ctx context.Context, pub *state.Publication) error {
	if err := m.d.exports.Unmount(ctx, m.v.Export(), pub.Path); err != nil {
		return nfsError(fmt.Sprintf("unmount NFS volume %s at %s", pub.VolumeID, pub.Path), err)
	}
	if pub.Kind == state.KindPublish {
		if err := os.Remove(pub.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return status.Errorf(codes.Internal, "remove target path %s: %v", pub.Path, err)
		}
	}
	return nil
}

func (nfsMounts) mountFailed(pub *state.Publication, err error) error {
	return nfsError(fmt.Sprintf("mount NFS volume %s at %s", pub.VolumeID, pub.Path), err)
}

// lockNode is the lock of an NFS volume's node calls (there is no volume
// record on the node to hold).
func (d *nfsDriver) lockNode(ctx context.Context, id string) (func(), error) {
	return d.lock(ctx, "node", id)
}

func (d *nfsDriver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	path := req.GetStagingTargetPath()
	if err := requirePath(path, "staging_target_path"); err != nil {
		return nil, err
	}
	if err := nodeCapability(req.GetVolumeCapability(), nfsCapability); err != nil {
		return nil, err
	}
	v, err := nfsVolumeID(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	id := req.GetVolumeId()
	unlock, err := d.lockNode(ctx, id)
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
	done, err := d.prepareMountPoint(ctx, d.mounts(v), pub, same)
	if err != nil || done {
		return &csi.NodeStageVolumeResponse{}, err
	}
	if err := os.MkdirAll(path, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create staging path: %v", err)
	}
	err = d.mountRecorded(d.mounts(v), pub, func() error {
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

func (d *nfsDriver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	v, err := nfsVolumeID(id)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lockNode(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	pub, err := d.store.GetPublication(id, state.KindStage, path)
	if errors.Is(err, state.ErrNotFound) {
		return &csi.NodeUnstageVolumeResponse{}, refuseForeignMount(path, id, nfsMounted)
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
	if err := d.unmountRecorded(ctx, d.mounts(v), pub); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("NFS volume unstaged", "volumeID", id, "stagingPath", path)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (d *nfsDriver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, staging := req.GetTargetPath(), req.GetStagingTargetPath()
	if err := nodeCapability(req.GetVolumeCapability(), nfsCapability); err != nil {
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
	unlock, err := d.lockNode(ctx, id)
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
	done, err := d.prepareMountPoint(ctx, d.mounts(v), pub, same)
	if err != nil || done {
		return &csi.NodePublishVolumeResponse{}, err
	}
	if err := d.checkSingleWriter(id, pub); err != nil {
		return nil, err
	}
	err = d.mountRecorded(d.mounts(v), pub, func() error {
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
	unlock, err := d.lockNode(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	pub, err := d.store.GetPublication(id, state.KindPublish, target)
	if errors.Is(err, state.ErrNotFound) {
		if err := removeTarget(target, id, nfsMounted); err != nil {
			return nil, err
		}
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, stateError(err)
	}
	if err := d.unmountRecorded(ctx, d.mounts(v), pub); err != nil {
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
