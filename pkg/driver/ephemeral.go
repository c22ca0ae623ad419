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

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/internal/size"
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

// inlineVolume is what a new inline volume is to be: from its pod's
// attributes, capability and namespace, within the administrator's bounds.
type inlineVolume struct {
	params    volumeParams
	capacity  int64
	attrs     map[string]string // the parameters to record
	fsType    string
	namespace string
}

// ephemeralAttributes checks a new inline volume's attributes against what
// the administrator lets a pod set (--ephemeral-allowed-attributes), and
// its capability's fsType (ext4 or xfs; "" is --image-fstype), and returns
// what the volume is to be. What a pod may not set comes from the
// administrator's flags; a pod that asks for what it would get anyway, or
// for less than it gets (a mode the node's grants, layout: directory of pod
// templates from before inline volumes were always images), is not refused.
func (d *hostpathDriver) ephemeralAttributes(attrs map[string]string, fsType string) (*inlineVolume, error) {
	pol := &d.cfg.Ephemeral
	params := map[string]string{ParamMountPermissions: pol.MountPermissions}
	capacity := pol.DefaultSize
	var unknown, forbidden []string
	for k, v := range attrs {
		switch {
		case podInfoAttributes[k]:
		case k == AttrSize:
			n, err := size.Parse(v)
			if err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "inline volume attribute %s: %v", AttrSize, err)
			}
			if n <= 0 {
				return nil, status.Errorf(codes.InvalidArgument, "inline volume attribute %s=%.64q: must be positive (such as 256Mi); omit it for the node's %d bytes (--ephemeral-default-size)", AttrSize, v, pol.DefaultSize)
			}
			if !pol.allows(k) && n != pol.DefaultSize {
				forbidden = append(forbidden, k)
			}
			capacity = n
		case k == ParamMountPermissions:
			switch {
			case pol.allows(k):
				params[k] = v
			case grantsAll(pol.MountPermissions, v):
				// A template from when pods set the mode: the node's
				// mode lets the pod do all it asked.
				klog.InfoS("Warning: inline volume asks for mountPermissions, which pods may not set on this node; its root gets the node's mode, which grants all it asks",
					"asked", v, "given", pol.MountPermissions, "flag", pol.allowedFlag(), "pod", podRef(attrs))
			default:
				if _, err := parseParameters(map[string]string{k: v}); err != nil {
					return nil, err
				}
				forbidden = append(forbidden, k)
			}
		case k == ParamLayout:
			switch v {
			case LayoutImage:
			case LayoutDirectory:
				// Pod templates of releases that made inline
				// directories: an image is the same to the pod, and held.
				klog.InfoS("Warning: inline volume asks for layout directory; serving an image, the only layout of an inline volume (nothing else holds a directory to its size against the pod inside it)",
					"pod", podRef(attrs))
			default:
				return nil, status.Errorf(codes.InvalidArgument, "inline volume attribute %s=%.64q: an inline volume is always an image on this driver; omit %s or set it to %s",
					ParamLayout, v, ParamLayout, LayoutImage)
			}
		default:
			unknown = append(unknown, fmt.Sprintf("%.64q", k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, status.Errorf(codes.InvalidArgument, "unknown inline volume attribute %s; this driver accepts: %s",
			strings.Join(unknown[:min(len(unknown), 5)], ", "), strings.Join(ephemeralAttributeNames, ", "))
	}
	if len(forbidden) > 0 {
		sort.Strings(forbidden)
		return nil, status.Errorf(codes.InvalidArgument, "inline volume attribute %s is not one a pod may set on this node (%s); remove it from the pod's volumeAttributes (the node gives size %d bytes, mountPermissions %s: a mode it grants is accepted), or ask the administrator",
			strings.Join(forbidden, ", "), pol.allowedFlag(), pol.DefaultSize, pol.MountPermissions)
	}
	if capacity > pol.MaxSize {
		return nil, status.Errorf(codes.InvalidArgument, "inline volume attribute %s=%s: %d bytes is more than this node allows for one inline volume, %d bytes (--ephemeral-max-size); ask for less, or use a PersistentVolumeClaim",
			AttrSize, attrs[AttrSize], capacity, pol.MaxSize)
	}
	switch fsType {
	case "":
		fsType = d.cfg.ImageFSType
	case hostpath.ImageExt4, hostpath.ImageXFS:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "inline volume fsType %.64q: an inline volume is an image of %s or %s; set the csi volume's fsType to one of them, or omit it for the node's %s (--image-fstype)",
			fsType, hostpath.ImageExt4, hostpath.ImageXFS, d.cfg.ImageFSType)
	}
	p, err := parseParameters(params)
	if err != nil {
		return nil, err
	}
	// Always an image: a loop-mounted filesystem of its own, which no
	// move of the pod inside it can grow.
	p.layout = LayoutImage
	if capacity, err = sizeForKind(capacity, volumeKind{layout: LayoutImage, fsType: fsType}, nil); err != nil {
		return nil, err
	}
	if capacity > pol.MaxSize { // the least image of the pod's fsType
		return nil, status.Errorf(codes.InvalidArgument, "inline volume fsType %s: the least %s image, %d bytes, is more than this node allows for one inline volume, %d bytes (--ephemeral-max-size); omit fsType for the node's %s",
			fsType, fsType, capacity, pol.MaxSize, d.cfg.ImageFSType)
	}
	return &inlineVolume{params: p, capacity: capacity, attrs: params, fsType: fsType}, nil
}

// grantsAll reports whether mode given (octal) has every bit of mode asked:
// a pod asking for asked can do all it meant to under given.
func grantsAll(given, asked string) bool {
	pg, errg := parseParameters(map[string]string{ParamMountPermissions: given})
	pa, erra := parseParameters(map[string]string{ParamMountPermissions: asked})
	return errg == nil && erra == nil && pa.mode&^pg.mode == 0
}

func podRef(attrs map[string]string) klog.ObjectRef {
	return klog.KRef(attrs[podNamespaceKey], attrs["csi.storage.k8s.io/pod.name"])
}

// podNamespaceKey is the attribute in which the kubelet names the pod's
// namespace (with podInfoOnMount in the CSIDriver object). The kubelet
// merges its pod attributes over the pod's own volumeAttributes
// (getPodInfoAttrs in its pkg/volume/csi), so a pod cannot name another
// namespace.
const podNamespaceKey = "csi.storage.k8s.io/pod.namespace"

// podNamespace is the namespace a new inline volume is counted in. Without
// one, bounds per namespace could not hold: the publish is refused.
func (d *hostpathDriver) podNamespace(attrs map[string]string) (string, error) {
	ns := attrs[podNamespaceKey]
	if len(ns) > 63 {
		return "", status.Errorf(codes.InvalidArgument, "volume attribute %s=%.64q... is longer than a namespace name (63 characters)", podNamespaceKey, ns)
	}
	if ns == "" && d.cfg.Ephemeral.perNamespace() {
		return "", status.Errorf(codes.FailedPrecondition, "the publish of this inline volume names no pod namespace (volume attribute %s), which the kubelet sends when the CSIDriver object sets podInfoOnMount: true; this node bounds inline volumes per namespace (--ephemeral-max-count-per-namespace, --ephemeral-max-share-per-namespace): set podInfoOnMount: true in the CSIDriver (deploy/kubernetes/base/csidriver.yaml does)", podNamespaceKey)
	}
	return ns, nil
}

// publishEphemeral makes (or finds, on a retry) the pod's inline volume and
// binds it at the target. Each step is recorded before it is made, so a
// crash at any point is undone at start-up or finished by the retry.
func (d *hostpathDriver) publishEphemeral(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	handle, target := req.GetVolumeId(), req.GetTargetPath()
	if err := requireName(handle); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume ID: %v", status.Convert(err).Message())
	}
	name := ephemeralName(handle)
	unlock, err := d.lock(ctx, "name", name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	d.ephemeralSeen(name)
	// The bounds are checked for a new volume; one on record was admitted
	// and is served as it was made, whatever the flags say since.
	v, err := d.store.GetVolumeByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
		if d.cfg.Ephemeral.Disabled {
			return nil, status.Error(codes.FailedPrecondition, "inline (CSI ephemeral) volumes are turned off on this node (--ephemeral=false); use a PersistentVolumeClaim or a generic ephemeral volume")
		}
		iv, err := d.ephemeralAttributes(req.GetVolumeContext(), req.GetVolumeCapability().GetMount().GetFsType())
		if err != nil {
			return nil, err
		}
		if iv.namespace, err = d.podNamespace(req.GetVolumeContext()); err != nil {
			return nil, err
		}
		if v, err = d.makeEphemeral(name, iv); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, stateError(err)
	case v.Phase == state.PhaseCreating: // an earlier attempt failed half way
		params, _ := parseParameters(v.Parameters)
		if err := d.makeEmpty(v, params.mode); err != nil {
			d.undoFailedEphemeral(ctx, v, err)
			return nil, err
		}
		if err := d.markVolumeReady(v); err != nil {
			return nil, err
		}
	case v.Phase != state.PhaseReady:
		return nil, status.Errorf(codes.Aborted, "inline volume %s is %s; retry", handle, v.Phase)
	}
	if err := d.publishEphemeralAt(ctx, v, req); err != nil {
		d.undoFailedEphemeral(ctx, v, err)
		return nil, err
	}
	klog.V(2).InfoS("Inline volume published", "handle", handle, "volumeID", v.ID, "targetPath", target, "capacity", v.CapacityBytes,
		"pod", klog.KRef(req.GetVolumeContext()[podNamespaceKey], req.GetVolumeContext()["csi.storage.k8s.io/pod.name"]))
	return &csi.NodePublishVolumeResponse{}, nil
}

// publishEphemeralAt mounts the inline volume v at the request's target,
// under the volume's node lock.
func (d *hostpathDriver) publishEphemeralAt(ctx context.Context, v *state.Volume, req *csi.NodePublishVolumeRequest) error {
	handle, target := req.GetVolumeId(), req.GetTargetPath()
	unlockNode, err := d.lockForNode(ctx, v.ID)
	if err != nil {
		return err
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
	done, err := d.prepareMountPoint(ctx, d.mounts(v), pub, same)
	if err != nil || done {
		return err
	}
	if others, err := d.store.PublicationsOf(v.ID); err != nil {
		return stateError(err)
	} else if len(others) > 0 {
		return status.Errorf(codes.FailedPrecondition, "inline volume %s is already published at %s; it belongs to one pod", handle, others[0].Path)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return status.Errorf(codes.Internal, "create target path: %v", err)
	}
	return d.mountRecorded(d.mounts(v), pub, func() error { return d.mountEphemeral(v, pub) })
}

// finalForKubelet reports whether the kubelet takes a NodePublishVolume
// error as final (isFinalError in its pkg/volume/csi): it then neither
// marks the mount uncertain nor ever calls NodeUnpublishVolume for it. It
// retries the others, and unpublishes on its own if the pod goes.
func finalForKubelet(err error) bool {
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return false
	}
	return true
}

// undoFailedEphemeral removes inline volume v after its publish failed with
// err, if the kubelet will not unpublish it and no mount holds it: its slot,
// its share and its image would otherwise stay until a restart. The
// caller holds the name lock. What cannot be removed now the sweep of
// unpublished inline volumes removes later.
func (d *hostpathDriver) undoFailedEphemeral(ctx context.Context, v *state.Volume, err error) {
	if !finalForKubelet(err) {
		return
	}
	ctx = context.WithoutCancel(ctx)
	if pubs, perr := d.store.PublicationsOf(v.ID); perr != nil || len(pubs) > 0 {
		return // a pod's mount (or no way to know): the unpublish removes it
	}
	if rerr := d.removeEphemeral(ctx, v, ""); rerr != nil {
		klog.ErrorS(rerr, "Cannot remove an inline volume whose publish failed; the sweep of unpublished inline volumes will", "volumeID", v.ID, "name", v.Name)
		return
	}
	d.ephemeralForget(v.Name)
	klog.V(2).InfoS("Removed an inline volume whose publish failed, as the kubelet will not unpublish it", "volumeID", v.ID, "name", v.Name, "err", err)
}

// mountEphemeral makes an inline volume's publication: there is no
// staging, so a directory is bound and an image mounted at the target.
func (d *hostpathDriver) mountEphemeral(v *state.Volume, pub *state.Publication) error {
	if kindOf(v).layout != LayoutImage {
		// An inline directory of a release that made them.
		return mountutil.Bind(d.vols.Path(v.ID), pub.Path, pub.ReadOnly, withTenantFlags(pub.MountFlags))
	}
	return d.mountImage(v, pub.Path, pub.MountFlags, pub.ReadOnly)
}

// makeEphemeral makes a new, empty inline volume: intent, data, result.
func (d *hostpathDriver) makeEphemeral(name string, iv *inlineVolume) (*state.Volume, error) {
	if iv.params.layout != LayoutImage {
		// What holds a directory (a qgroup, a project quota) is escaped
		// by its own tenant: never served to a pod inline.
		return nil, status.Errorf(codes.Internal, "inline volume %s: layout %q is not held against its pod; inline volumes are images", name, iv.params.layout)
	}
	v := &state.Volume{Name: name, PodNamespace: iv.namespace, Parameters: iv.attrs, Ephemeral: true,
		Layout: LayoutImage, FSType: iv.fsType, Limit: hostpath.EnforceImage}
	v, err := d.admitEphemeral(v, iv.capacity)
	if err != nil {
		return nil, err
	}
	if err := d.makeEmpty(v, iv.params.mode); err != nil {
		d.rollbackCreate(v)
		return nil, err
	}
	if err := d.markVolumeReady(v); err != nil {
		return nil, err
	}
	return v, nil
}

// ephemeralVolume finds the inline volume of a kubelet handle, or nil.
func (d *hostpathDriver) ephemeralVolume(handle string) (*state.Volume, error) {
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
func (d *hostpathDriver) unpublishEphemeral(ctx context.Context, handle, target string) error {
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
func (d *hostpathDriver) removeEphemeral(ctx context.Context, v *state.Volume, target string) error {
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
			if err = d.unmountVolume(ctx, p); err != nil {
				break
			}
		}
	}
	unlockNode()
	if err != nil {
		return err
	}
	if target != "" {
		if err := removeTarget(target, v.ID, hostpathMountPoint); err != nil { // a target a crash left
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
