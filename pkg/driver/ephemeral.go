package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/pkg/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/mountutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/size"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// CSI inline ephemeral volumes: a pod's `csi:` volume. The kubelet calls
// NodePublishVolume with a volume handle of its own (not one of our IDs) and
// the volume's attributes, without staging, and NodeUnpublishVolume when the
// pod goes. The driver makes a fresh volume at the first publish and
// removes it at the unpublish. The kubelet's handle is only ever a record
// name, never a path: the volume's data lives under an ID of ours.
const (
	// ephemeralContextKey is set by the kubelet (with podInfoOnMount in
	// the CSIDriver object) on the publish of an inline volume.
	ephemeralContextKey = "csi.storage.k8s.io/ephemeral"
	// ephemeralNamePrefix starts the record name of an inline volume;
	// CreateVolume refuses names with it.
	ephemeralNamePrefix = "csi-ephemeral:"
	// AttrSize is the inline volume attribute that sets its capacity.
	AttrSize = "size"
)

// Attributes the kubelet adds to every publish when podInfoOnMount is on.
var podInfoAttributes = map[string]bool{
	ephemeralContextKey:                      true,
	"csi.storage.k8s.io/pod.name":            true,
	"csi.storage.k8s.io/pod.namespace":       true,
	"csi.storage.k8s.io/pod.uid":             true,
	"csi.storage.k8s.io/serviceAccount.name": true,
}

func isEphemeral(volumeContext map[string]string) bool {
	return volumeContext[ephemeralContextKey] == "true"
}

func ephemeralName(handle string) string { return ephemeralNamePrefix + handle }

// ephemeralAttributes checks an inline volume's attributes: size and the
// StorageClass parameters a volume takes, besides the kubelet's pod info.
func (d *Driver) ephemeralAttributes(attrs map[string]string) (volumeParams, int64, map[string]string, error) {
	params := map[string]string{}
	capacity := DefaultVolumeSize
	var unknown []string
	for k, v := range attrs {
		switch {
		case podInfoAttributes[k]:
		case k == AttrSize:
			n, err := size.Parse(v)
			if err != nil || n <= 0 {
				return volumeParams{}, 0, nil, status.Errorf(codes.InvalidArgument, "volume attribute %s: %v", AttrSize, err)
			}
			capacity = n
		case k == ParamMountPermissions, k == ParamLayout:
			params[k] = v
		default:
			unknown = append(unknown, fmt.Sprintf("%.64q", k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return volumeParams{}, 0, nil, status.Errorf(codes.InvalidArgument, "unknown inline volume attribute %s; this driver accepts: %s, %s, %s",
			strings.Join(unknown[:min(len(unknown), 5)], ", "), AttrSize, ParamMountPermissions, ParamLayout)
	}
	if capacity > d.cfg.MaxVolumeSize {
		return volumeParams{}, 0, nil, status.Errorf(codes.OutOfRange, "inline volume of %d bytes; the largest volume this driver makes is %d bytes (--max-volume-size)", capacity, d.cfg.MaxVolumeSize)
	}
	p, err := parseParameters(params)
	if err != nil {
		return p, 0, nil, err
	}
	// Any pod may ask for an inline volume: it must be held to its size,
	// or one pod could fill the node. A directory where nothing holds it
	// is refused; with no layout asked, such a node gives an image.
	limit, why := d.vols.DirectoryLimit()
	switch {
	case p.layout == LayoutDirectory && limit == hostpath.EnforceNone:
		return p, 0, nil, status.Errorf(codes.InvalidArgument, "inline volume attribute %s=%s: nothing holds a directory to its size on this node (%s); omit it or use %s", ParamLayout, LayoutDirectory, why, LayoutImage)
	case p.layout == "" && limit == hostpath.EnforceNone:
		p.layout = LayoutImage
	case p.layout == "":
		p.layout = LayoutDirectory
	}
	if p.layout == LayoutImage {
		capacity, err = sizeForKind(capacity, volumeKind{layout: LayoutImage, fsType: d.cfg.ImageFSType}, nil)
	}
	return p, capacity, params, err
}

// publishEphemeral makes (or finds, on a retry) the pod's inline volume and
// binds it at the target. Each step is recorded before it is made, so a
// crash at any point is undone at start-up or finished by the retry.
func (d *Driver) publishEphemeral(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	handle, target := req.GetVolumeId(), req.GetTargetPath()
	if err := requireName(handle); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume ID: %v", status.Convert(err).Message())
	}
	params, capacity, attrs, err := d.ephemeralAttributes(req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	name := ephemeralName(handle)
	unlock, err := d.lock(ctx, "name", name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.store.GetVolumeByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
		if v, err = d.makeEphemeral(name, capacity, attrs, params); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, stateError(err)
	case v.Phase == state.PhaseCreating: // an earlier attempt failed half way
		if err := d.makeEmpty(v, params.mode); err != nil {
			return nil, err
		}
		if err := d.markVolumeReady(v); err != nil {
			return nil, err
		}
	case v.Phase != state.PhaseReady:
		return nil, status.Errorf(codes.Aborted, "inline volume %s is %s; retry", handle, v.Phase)
	}

	unlockNode, err := d.lockForNode(ctx, v.ID)
	if err != nil {
		return nil, err
	}
	defer unlockNode()
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	pub := &state.Publication{
		VolumeID: v.ID, NodeID: d.cfg.NodeID, Kind: state.KindPublish, Path: target,
		ReadOnly:   req.GetReadonly() || mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		MountFlags: req.GetVolumeCapability().GetMount().GetMountFlags(),
		AccessMode: mode.String(),
	}
	same := func(r *state.Publication) bool {
		return r.ReadOnly == pub.ReadOnly && slices.Equal(r.MountFlags, pub.MountFlags)
	}
	done, err := d.prepareMountPoint(v, state.KindPublish, target, same)
	if err != nil || done {
		return &csi.NodePublishVolumeResponse{}, err
	}
	if others, err := d.store.PublicationsOf(v.ID); err != nil {
		return nil, stateError(err)
	} else if len(others) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "inline volume %s is already published at %s; it belongs to one pod", handle, others[0].Path)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "create target path: %v", err)
	}
	if err := d.mountRecorded(pub, func() error { return d.mountEphemeral(v, pub) }); err != nil {
		return nil, err
	}
	klog.V(2).InfoS("Inline volume published", "handle", handle, "volumeID", v.ID, "targetPath", target, "capacity", v.CapacityBytes,
		"pod", klog.KRef(req.GetVolumeContext()["csi.storage.k8s.io/pod.namespace"], req.GetVolumeContext()["csi.storage.k8s.io/pod.name"]))
	return &csi.NodePublishVolumeResponse{}, nil
}

// mountEphemeral makes an inline volume's publication: there is no
// staging, so a directory is bound and an image mounted at the target.
func (d *Driver) mountEphemeral(v *state.Volume, pub *state.Publication) error {
	if kindOf(v).layout != LayoutImage {
		// An inline directory of a release that made them.
		return mountutil.Bind(d.vols.Path(v.ID), pub.Path, pub.ReadOnly, withTenantFlags(pub.MountFlags))
	}
	return d.mountImage(v, pub.Path, pub.MountFlags, pub.ReadOnly)
}

// makeEphemeral makes a new, empty inline volume: intent, data, result.
func (d *Driver) makeEphemeral(name string, capacity int64, attrs map[string]string, params volumeParams) (*state.Volume, error) {
	v := &state.Volume{Name: name, Parameters: attrs, Ephemeral: true, Layout: params.layout}
	if params.layout == LayoutImage {
		v.FSType, v.Limit = d.cfg.ImageFSType, hostpath.EnforceImage
	} else {
		v.Limit, _ = d.vols.DirectoryLimit()
	}
	v, err := d.recordNewVolume(v, capacity, nil)
	if err != nil {
		return nil, err
	}
	if err := d.makeEmpty(v, params.mode); err != nil {
		d.rollbackCreate(v)
		return nil, err
	}
	if err := d.markVolumeReady(v); err != nil {
		return nil, err
	}
	return v, nil
}

// ephemeralVolume finds the inline volume of a kubelet handle, or nil.
func (d *Driver) ephemeralVolume(handle string) (*state.Volume, error) {
	if requireName(handle) != nil {
		return nil, nil
	}
	v, err := d.store.GetVolumeByName(ephemeralName(handle))
	if errors.Is(err, state.ErrNotFound) || (err == nil && !v.Ephemeral) {
		return nil, nil
	}
	if err != nil {
		return nil, stateError(err)
	}
	return v, nil
}

// unpublishEphemeral unmounts the pod's inline volume and removes it. The
// volume goes even when its mount was already gone (a crash, a reboot): the
// kubelet calls unpublish only when the pod is done with it.
func (d *Driver) unpublishEphemeral(ctx context.Context, handle, target string) error {
	unlock, err := d.lock(ctx, "name", ephemeralName(handle))
	if err != nil {
		return err
	}
	defer unlock()
	v, err := d.ephemeralVolume(handle)
	if err != nil || v == nil {
		return err
	}
	if err := d.removeEphemeral(ctx, v, target); err != nil {
		return err
	}
	klog.V(2).InfoS("Inline volume unpublished and removed", "handle", handle, "volumeID", v.ID, "targetPath", target)
	return nil
}

// removeEphemeral undoes the publications of an inline volume at target (all
// of them when target is empty) and removes the volume.
func (d *Driver) removeEphemeral(ctx context.Context, v *state.Volume, target string) error {
	unlockNode, err := d.lockForNode(ctx, v.ID)
	if err != nil {
		return err
	}
	pubs, err := d.store.PublicationsOf(v.ID)
	if err == nil {
		for _, p := range pubs {
			if target != "" && p.Path != target {
				unlockNode()
				return status.Errorf(codes.FailedPrecondition, "inline volume %s is published at %s, not at %s", v.Name, p.Path, target)
			}
			if err = d.unmountRecorded(p); err != nil {
				break
			}
		}
	}
	unlockNode()
	if err != nil {
		return err
	}
	if target != "" {
		if err := removeTarget(target, v.ID); err != nil { // a target a crash left
			return err
		}
	}
	unlockVol, err := d.lock(ctx, "vol", v.ID)
	if err != nil {
		return err
	}
	defer unlockVol()
	if err := d.store.SetVolumePhase(v.ID, state.PhaseDeleting); err != nil {
		return stateError(err)
	}
	if err := d.removeVolumeData(v); err != nil {
		return diskError("delete inline volume data", err)
	}
	if err := d.store.DeleteVolume(v.ID); err != nil {
		return stateError(err)
	}
	d.usage.forget(v.ID)
	return nil
}
