package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// The controller's questions about NFS volumes (capabilities, the volume,
// its health) and the export's capacity.

// nfsReadyVolume returns the record of a ready NFS volume, or NotFound; the
// caller releases the export.
func (d *nfsDriver) nfsReadyVolume(ctx context.Context, id string) (*nfs.VolumeRecord, *nfs.Export, error) {
	v, err := nfsVolumeID(id)
	if err != nil {
		return nil, nil, err
	}
	x, err := d.useExport(ctx, v.Server, v.Share)
	if err != nil {
		return nil, nil, err
	}
	rec, err := x.GetVolume(ctx, v.Key)
	if errors.Is(err, nfs.ErrNotFound) || (err == nil && rec.ID != id) {
		x.Release()
		return nil, nil, notFound("volume %s not found on %s", id, v.Export())
	}
	if err != nil {
		x.Release()
		return nil, nil, nfsError("read volume record", err)
	}
	if rec.Phase != nfs.PhaseReady {
		x.Release()
		return nil, nil, status.Errorf(codes.Aborted, "volume %s is %s; retry", id, rec.Phase)
	}
	return rec, x, nil
}

func nfsCSIVolume(rec *nfs.VolumeRecord) *csi.Volume {
	v, _ := ids.ParseNFSVolumeID(rec.ID)
	vol := &csi.Volume{
		VolumeId:      rec.ID,
		CapacityBytes: rec.CapacityBytes,
		VolumeContext: map[string]string{ContextServer: v.Server, ContextShare: v.Share, ContextSubDir: v.SubDir},
	}
	switch {
	case rec.SourceSnapshotID != "":
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: rec.SourceSnapshotID}}}
	case rec.SourceVolumeID != "":
		vol.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: rec.SourceVolumeID}}}
	}
	return vol
}

func (d *nfsDriver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	rec, x, err := d.nfsReadyVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	x.Release()
	return validated(req, rec.Parameters, nfsCapability), nil
}

func (d *nfsDriver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	rec, x, err := d.nfsReadyVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	x.Release()
	// Which nodes mount an NFS volume is known to those nodes only.
	return &csi.ControllerGetVolumeResponse{Volume: nfsCSIVolume(rec), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{}}, nil
}

func (d *nfsDriver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	rec, x, err := d.nfsReadyVolume(ctx, id)
	if status.Code(err) == codes.DataLoss {
		// A corrupt record: left out of listings; here its condition
		// says why.
		return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: id, HealthStatuses: []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: ReasonNFSRecordCorrupt,
			Message: fmt.Sprintf("the driver's record of this volume on its export is unreadable (%s); its data is untouched: restore the record from a backup, or delete the PV and recreate it over the retained data", status.Convert(err).Message())}}}}, nil
	}
	if err != nil {
		return nil, err
	}
	defer x.Release()
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: id, HealthStatuses: d.nfsHealth(ctx, x, rec)}}, nil
}

// nfsHealth says whether a volume's subdirectory is there.
func (d *nfsDriver) nfsHealth(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord) []*csi.VolumeHealth_VolumeHealthEntry {
	ok, err := x.DirExists(ctx, rec.SubDir)
	switch {
	case err != nil:
		return []*csi.VolumeHealth_VolumeHealthEntry{{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: ReasonNFSUnreachable,
			Message: fmt.Sprintf("cannot reach %s on %s: %v", rec.SubDir, x.Name(), err)}}
	case !ok:
		return []*csi.VolumeHealth_VolumeHealthEntry{{Status: csi.VolumeHealthErrorType_DATA_LOSS, Reason: ReasonDataMissing,
			Message: fmt.Sprintf("subdirectory %s is missing on %s", rec.SubDir, x.Name())}}
	}
	return nil
}

// ReasonNFSUnreachable: the volume's NFS server did not answer.
const ReasonNFSUnreachable = "NFSServerUnreachable"

// ReasonNFSRecordCorrupt: the driver's record of the volume on its export
// cannot be read.
const ReasonNFSRecordCorrupt = "NFSRecordCorrupt"

// GetCapacity reports the export's free space: what volumes of the class
// can still hold (NFS volumes share the export; nothing is reserved).
func (d *nfsDriver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	p, err := parseNFSParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	if p.server == "" {
		return nil, status.Error(codes.InvalidArgument, "parameter server is empty")
	}
	for _, c := range req.GetVolumeCapabilities() {
		if nfsCapability(c) != nil {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	x, err := d.useExport(ctx, p.server, p.share, classMountOptions(req.GetVolumeCapabilities())...)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	st, err := x.Statfs(ctx)
	if err != nil {
		return nil, nfsError("statfs of "+x.Name(), err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(st.Bavail) * st.Bsize}, nil
}
