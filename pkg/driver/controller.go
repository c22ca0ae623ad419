package driver

import (
	"context"
	"errors"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
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
	if _, err := parseHostpathMutable(req.GetMutableParameters(), kind); err != nil {
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
	return validated(req, v.Parameters, func(c *csi.VolumeCapability) error { return servesKind(kindOf(v), c) }), nil
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
