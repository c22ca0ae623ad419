package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/pkg/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

var controllerCaps = []csi.ControllerServiceCapability_RPC_Type{
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csi.ControllerServiceCapability_RPC_GET_VOLUME,
	csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
}

func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	caps := make([]*csi.ControllerServiceCapability, 0, len(controllerCaps))
	for _, c := range controllerCaps {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := requireName(name); err != nil {
		return nil, err
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	params, err := parseParameters(req.GetParameters())
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

	unlock, err := d.lock(ctx, "name", name)
	if err != nil {
		return nil, err
	}
	defer unlock()

	existing, err := d.store.GetVolumeByName(name)
	switch {
	case errors.Is(err, state.ErrNotFound):
	case err != nil:
		return nil, stateError(err)
	default:
		return d.existingVolume(existing, req, params)
	}

	var src *contentSource
	if cs := req.GetVolumeContentSource(); cs != nil {
		if src, err = d.lockContentSource(ctx, cs); err != nil {
			return nil, err
		}
		defer src.unlock()
		if size, err = sizeFor(req.GetCapacityRange(), size, src.capacity); err != nil {
			return nil, err
		}
		if size > d.cfg.MaxVolumeSize {
			return nil, status.Errorf(codes.OutOfRange, "the source needs %d bytes; the largest volume this driver makes is %d bytes (--max-volume-size)", size, d.cfg.MaxVolumeSize)
		}
	}

	if fs, err := d.vols.Stats(); err != nil {
		return nil, diskError("read free space", err)
	} else if size > fs.AvailableBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "requested %d bytes but the node's data directory has %d bytes available", size, fs.AvailableBytes)
	}

	v := &state.Volume{
		ID:            ids.NewVolumeID(),
		Name:          name,
		CapacityBytes: size,
		Parameters:    req.GetParameters(),
		AccessType:    "mount",
		NodeID:        d.cfg.NodeID,
		Phase:         state.PhaseCreating,
		CreatedAt:     time.Now().UTC(),
	}
	if src != nil {
		v.SourceSnapshotID, v.SourceVolumeID = src.snapshotID, src.volumeID
	}
	// Intent first: a crash after this point is rolled back at start-up.
	if err := d.store.PutVolume(v); err != nil {
		return nil, stateError(err)
	}
	if err := d.makeVolumeData(ctx, v, src, params); err != nil {
		d.rollbackCreate(v)
		return nil, err
	}
	v.Phase = state.PhaseReady
	if err := d.store.PutVolume(v); err != nil {
		d.rollbackCreate(v)
		return nil, stateError(err)
	}
	klog.V(2).InfoS("Volume created", "volumeID", v.ID, "name", name, "capacity", size,
		"pvc", klog.KRef(v.Parameters[ParamPVCNamespace], v.Parameters[ParamPVCName]))
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// makeVolumeData makes an empty directory, or copies the content source into
// the new volume (fastest mechanism first; a copy lands in place only once
// complete).
func (d *Driver) makeVolumeData(ctx context.Context, v *state.Volume, src *contentSource, params volumeParams) error {
	if src == nil {
		if err := d.vols.Create(v.ID, params.mode); err != nil {
			return diskError("create volume directory", err)
		}
		return nil
	}
	start := time.Now()
	var st hostpath.CopyResult
	var err error
	if src.snapshotID != "" {
		st, err = d.vols.Restore(ctx, src.snapshotID, v.ID)
	} else {
		st, err = d.vols.Clone(ctx, src.volumeID, v.ID)
	}
	if err != nil {
		return diskError("copy content source into the new volume", err)
	}
	klog.InfoS("Volume made from a content source", "volumeID", v.ID, "snapshot", src.snapshotID, "volume", src.volumeID,
		"mechanism", st.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

// existingVolume answers a CreateVolume for a name already on record: the
// same volume if the request is compatible with it, AlreadyExists if not.
func (d *Driver) existingVolume(v *state.Volume, req *csi.CreateVolumeRequest, params volumeParams) (*csi.CreateVolumeResponse, error) {
	if v.Phase == state.PhaseDeleting {
		return nil, status.Errorf(codes.Aborted, "volume %s with name %q is being deleted; retry", v.ID, v.Name)
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
	if v.Phase == state.PhaseCreating && (v.SourceSnapshotID != "" || v.SourceVolumeID != "") {
		return nil, status.Errorf(codes.Aborted, "volume %q is still being copied from its source; retry", v.Name)
	}
	if v.Phase == state.PhaseCreating {
		// An earlier attempt of this call failed half way in this process:
		// finish it instead of making a second volume.
		if err := d.vols.Create(v.ID, params.mode); err != nil {
			return nil, diskError("create volume directory", err)
		}
		v.Phase = state.PhaseReady
		if err := d.store.PutVolume(v); err != nil {
			return nil, stateError(err)
		}
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

func (d *Driver) rollbackCreate(v *state.Volume) {
	if err := d.vols.Delete(v.ID); err != nil {
		klog.ErrorS(err, "Rolling back a failed create: cannot remove the volume directory; start-up will retry", "volumeID", v.ID)
		return
	}
	if err := d.store.DeleteVolume(v.ID); err != nil {
		klog.ErrorS(err, "Rolling back a failed create: cannot remove the record; start-up will retry", "volumeID", v.ID)
	}
}

func (d *Driver) csiVolume(v *state.Volume) *csi.Volume {
	vol := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.CapacityBytes,
		AccessibleTopology: []*csi.Topology{d.topology()},
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

func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKeyNode: d.cfg.NodeID}}
}

// checkRequisiteTopology refuses a request that may only be placed on other
// nodes: the data would live here, where the pod cannot reach it.
func (d *Driver) checkRequisiteTopology(tr *csi.TopologyRequirement) error {
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

func (d *Driver) topologyMatches(t *csi.Topology) bool {
	for k, v := range t.GetSegments() {
		if k != TopologyKeyNode || v != d.cfg.NodeID {
			return false
		}
	}
	return true
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if err := ids.ValidateVolumeID(id); err != nil {
		// No volume can have this ID, so it is already gone.
		klog.V(2).InfoS("DeleteVolume of an ID this driver never made; nothing to do", "volumeID", id)
		return &csi.DeleteVolumeResponse{}, nil
	}
	unlock, err := d.lock(ctx, "vol", id)
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
	if err := d.vols.Delete(id); err != nil {
		if perr := d.store.SetVolumePhase(id, v.Phase); perr != nil {
			klog.ErrorS(perr, "Cannot restore the phase of a volume whose delete failed", "volumeID", id)
		}
		return nil, diskError("delete volume data", err)
	}
	if err := d.store.DeleteVolume(id); err != nil {
		return nil, stateError(err)
	}
	klog.V(2).InfoS("Volume deleted", "volumeID", id, "name", v.Name)
	return &csi.DeleteVolumeResponse{}, nil
}

// readyVolume returns a volume that exists and is ready, or NotFound.
func (d *Driver) readyVolume(id string) (*state.Volume, error) {
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

func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	v, err := d.readyVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := checkCapability(c); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
		}
	}
	if p := req.GetParameters(); len(p) > 0 && !maps.Equal(p, v.Parameters) {
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

func isReady(v *state.Volume) bool { return v.Phase == state.PhaseReady }

func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if err := pageToken(req.GetMaxEntries(), req.GetStartingToken()); err != nil {
		return nil, err
	}
	vols, next, err := d.store.ListVolumes(req.GetStartingToken(), int(req.GetMaxEntries()), isReady)
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
func (d *Driver) publishedNodes(id string) ([]string, error) {
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

func (d *Driver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
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

func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if _, err := parseParameters(req.GetParameters()); err != nil {
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
	fs, err := d.vols.Stats()
	if err != nil {
		return nil, diskError("read free space", err)
	}
	avail := max(fs.AvailableBytes, 0)
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(min(avail, d.cfg.MaxVolumeSize)),
	}, nil
}

func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability(c); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	if err := volumeIDOrNotFound(req.GetVolumeId()); err != nil {
		return nil, err
	}
	size, err := capacityFor(req.GetCapacityRange(), d.cfg.MaxVolumeSize)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock(ctx, "vol", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.readyVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if size <= v.CapacityBytes {
		// Already that large (a retry, or a shrink, which volumes never do).
		return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.CapacityBytes}, nil
	}
	fs, err := d.vols.Stats()
	if err != nil {
		return nil, diskError("read free space", err)
	}
	if grow := size - v.CapacityBytes; grow > fs.AvailableBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "growing volume %s by %d bytes, but the node's data directory has %d bytes available", v.ID, grow, fs.AvailableBytes)
	}
	if err := d.store.SetVolumeCapacity(v.ID, size); err != nil {
		return nil, stateError(err)
	}
	klog.V(2).InfoS("Volume expanded", "volumeID", v.ID, "from", v.CapacityBytes, "to", size)
	// A directory has no filesystem of its own to grow on the node.
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: false}, nil
}
