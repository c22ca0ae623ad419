package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// The router. The Driver answers some calls itself (Identity, the
// capabilities, group snapshots, the storage health of the node) and hands
// every other one, as it came, to the family of volumes it is about, chosen
// here and nowhere else: CreateVolume and GetCapacity by the class's
// parameters (an NFS class names a server), every other call by the prefix
// of the volume or snapshot ID it names (nfs1: and nfss1: are NFS; any other
// ID is the hostpath family's, whose checks answer for an ID that neither
// family made). A CreateSnapshot whose class names an NFS export is of a
// hostpath volume, kept on that export (offnode.go). ListVolumes and ListSnapshots list both families, hostpath
// first, and their page tokens say in which family a page starts.
//
// Before it chooses, the router checks what a call must carry whichever
// family answers it (an ID, a path): a family's method is called with those
// present.

// family is one kind of storage: the spec's controller and node services for
// the volumes and snapshots of one backend.
type family interface {
	csi.ControllerServer
	csi.NodeServer
}

// byClass is the family of a StorageClass's volumes.
func (d *Driver) byClass(params map[string]string) family {
	if isNFSClass(params) {
		return d.nfs
	}
	return d.hostpath
}

// byVolume is the family of a volume ID.
func (d *Driver) byVolume(id string) family {
	if ids.IsNFSVolumeID(id) {
		return d.nfs
	}
	return d.hostpath
}

// bySnapshot is the family of a snapshot ID.
func (d *Driver) bySnapshot(id string) family {
	if ids.IsNFSSnapshotID(id) {
		return d.nfs
	}
	return d.hostpath
}

// CreateVolume goes by the class. A hostpath volume is made from a hostpath
// source only, and not at all by a controller that serves NFS classes only.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if d.cfg.NoModifyVolume && len(req.GetMutableParameters()) > 0 {
		// The spec: only a plugin with MODIFY_VOLUME takes them.
		return nil, status.Errorf(codes.InvalidArgument, "mutable parameters (a VolumeAttributesClass) are off in this driver (--modify-volume=false): nothing could change them later")
	}
	f := d.byClass(req.GetParameters())
	if f == family(d.hostpath) {
		// An NFS snapshot may be of a hostpath volume, kept on the export
		// (offnode.go): the hostpath family restores it, or refuses one of
		// an NFS volume.
		if cs := req.GetVolumeContentSource(); ids.IsNFSVolumeID(cs.GetVolume().GetVolumeId()) {
			return nil, status.Error(codes.InvalidArgument, "the content source is an NFS volume; a hostpath volume is cloned from a hostpath volume only")
		}
		if d.cfg.NFSOnly {
			// A class without a server pointed at an NFS-only controller would
			// otherwise get a directory in the controller pod, which no node has.
			return nil, status.Errorf(codes.InvalidArgument, "driver %s serves NFS classes only (--nfs-only): the class needs the parameter %s (and %s)", d.cfg.DriverName, ParamServer, ParamShare)
		}
	}
	return f.CreateVolume(ctx, req)
}

func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	return d.byClass(req.GetParameters()).GetCapacity(ctx, req)
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	return d.byVolume(req.GetVolumeId()).DeleteVolume(ctx, req)
}

func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	return d.byVolume(req.GetVolumeId()).ValidateVolumeCapabilities(ctx, req)
}

func (d *Driver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	return d.byVolume(req.GetVolumeId()).ControllerGetVolume(ctx, req)
}

func (d *Driver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	return d.byVolume(req.GetVolumeId()).ControllerGetVolumeHealth(ctx, req)
}

func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := requireName(req.GetName()); err != nil {
		return nil, err
	}
	if req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume ID is required")
	}
	exp, err := snapshotParameters.parse(req.GetParameters())
	if err != nil {
		return nil, err
	}
	if exp != nil {
		// A snapshot kept on an NFS export (offnode.go) is of a hostpath
		// volume; an NFS volume's snapshots are on its own export.
		if ids.IsNFSVolumeID(req.GetSourceVolumeId()) {
			return nil, status.Errorf(codes.InvalidArgument, "volume %.64s is an NFS volume, whose snapshots are kept on its own export: the %s parameters %s and %s are for snapshots of hostpath volumes", req.GetSourceVolumeId(), snapshotParameters.class, ParamServer, ParamShare)
		}
		return d.hostpath.createOffNodeSnapshot(ctx, req, exp)
	}
	return d.byVolume(req.GetSourceVolumeId()).CreateSnapshot(ctx, req)
}

func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot ID is required")
	}
	return d.bySnapshot(req.GetSnapshotId()).DeleteSnapshot(ctx, req)
}

func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	return d.bySnapshot(req.GetSnapshotId()).GetSnapshot(ctx, req)
}

func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	return d.byVolume(req.GetVolumeId()).NodeStageVolume(ctx, req)
}

func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := requirePath(req.GetStagingTargetPath(), "staging_target_path"); err != nil {
		return nil, err
	}
	return d.byVolume(req.GetVolumeId()).NodeUnstageVolume(ctx, req)
}

func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := requirePath(req.GetTargetPath(), "target_path"); err != nil {
		return nil, err
	}
	return d.byVolume(req.GetVolumeId()).NodePublishVolume(ctx, req)
}

func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := requirePath(req.GetTargetPath(), "target_path"); err != nil {
		return nil, err
	}
	return d.byVolume(req.GetVolumeId()).NodeUnpublishVolume(ctx, req)
}

func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	return d.byVolume(req.GetVolumeId()).NodeGetVolumeStats(ctx, req)
}

func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	return d.byVolume(req.GetVolumeId()).NodeExpandVolume(ctx, req)
}

func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	return d.byVolume(req.GetVolumeId()).NodeGetVolumeHealth(ctx, req)
}

// ListVolumes lists the hostpath volumes, then the NFS volumes (see
// nfs_list.go); a page token is the first ID of the next page, of either
// family.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if ids.IsNFSVolumeID(req.GetStartingToken()) && req.GetMaxEntries() >= 0 {
		return d.nfs.ListVolumes(ctx, req)
	}
	resp, err := d.hostpath.ListVolumes(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.NextToken == "" {
		d.nfs.nfsVolumesAfter(ctx, resp, int(req.GetMaxEntries()))
	}
	return resp, nil
}

// ListSnapshots lists the hostpath snapshots, then the NFS ones, as
// ListVolumes does; a snapshot ID, a source volume or a page token of NFS
// makes it a listing of NFS snapshots alone. A hostpath source volume's
// listing ends with its snapshots kept on NFS exports.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "max_entries is negative (%d)", req.GetMaxEntries())
	}
	id, src, token := req.GetSnapshotId(), req.GetSourceVolumeId(), req.GetStartingToken()
	if ids.IsNFSSnapshotID(id) || id == "" && (ids.IsNFSVolumeID(src) || ids.IsNFSSnapshotID(token)) {
		return d.nfs.ListSnapshots(ctx, req)
	}
	resp, err := d.hostpath.ListSnapshots(ctx, req)
	if err != nil {
		return nil, err
	}
	if id == "" && resp.NextToken == "" {
		// With a hostpath source: its snapshots kept on NFS exports
		// (offnode.go), of the exports this process knows; the next
		// page's NFS token comes back to the NFS family, which filters
		// by the source as well.
		d.nfs.nfsSnapshotsAfter(ctx, resp, int(req.GetMaxEntries()), src)
	}
	return resp, nil
}

// ControllerListVolumeHealth lists the hostpath volumes that have a health
// problem (it lists no NFS volume: their health is ControllerGetVolumeHealth's).
func (d *Driver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	return d.hostpath.ControllerListVolumeHealth(ctx, req)
}

// GetMetadataAllocated and GetMetadataDelta (the SnapshotMetadata service,
// snapshotmetadata.go) are the hostpath family's: an NFS snapshot is a copy of
// a directory, which has no blocks to report.
func (d *Driver) GetMetadataAllocated(req *csi.GetMetadataAllocatedRequest, stream csi.SnapshotMetadata_GetMetadataAllocatedServer) error {
	id := req.GetSnapshotId()
	if id == "" {
		return status.Error(codes.InvalidArgument, "snapshot_id is required")
	}
	if err := checkMetadataPaging(req.GetStartingOffset(), req.GetMaxResults()); err != nil {
		return err
	}
	if ids.IsNFSSnapshotID(id) {
		return notBlockSnapshot(id, "of an NFS volume, a directory")
	}
	return d.hostpath.getMetadataAllocated(stream.Context(), req, stream.Send)
}

func (d *Driver) GetMetadataDelta(req *csi.GetMetadataDeltaRequest, stream csi.SnapshotMetadata_GetMetadataDeltaServer) error {
	base, target := req.GetBaseSnapshotId(), req.GetTargetSnapshotId()
	if base == "" {
		return status.Error(codes.InvalidArgument, "base_snapshot_id is required")
	}
	if target == "" {
		return status.Error(codes.InvalidArgument, "target_snapshot_id is required")
	}
	if err := checkMetadataPaging(req.GetStartingOffset(), req.GetMaxResults()); err != nil {
		return err
	}
	for _, id := range []string{base, target} {
		if ids.IsNFSSnapshotID(id) {
			return notBlockSnapshot(id, "of an NFS volume, a directory")
		}
	}
	return d.hostpath.getMetadataDelta(stream.Context(), req, stream.Send)
}

// hostpathMembers refuses a group snapshot of NFS volumes: group snapshots
// are the hostpath family's, which freezes and copies the members together.
func hostpathMembers(sorted []string) error {
	for _, id := range sorted {
		if ids.IsNFSVolumeID(id) {
			return status.Errorf(codes.InvalidArgument, "volume %.64s is an NFS volume; group snapshots are of hostpath volumes only (take one VolumeSnapshot per NFS volume)", id)
		}
	}
	return nil
}
