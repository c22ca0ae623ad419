package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

func (d *nfsDriver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		klog.V(2).InfoS("DeleteVolume of an NFS ID this driver never made; nothing to do", "volumeID", id, "err", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	unlock, err := d.lockForDelete(ctx, "vol", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	x, err := d.useExport(ctx, v.Server, v.Share)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	rec, err := x.GetVolume(ctx, v.Key)
	if errors.Is(err, nfs.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, nfsError("read volume record", err)
	}
	if rec.ID != id {
		return nil, status.Errorf(codes.Internal, "record %s on %s is of volume %s, not %s", v.Key, x.Name(), rec.ID, id)
	}
	if err := d.nfsRemoveVolume(ctx, x, rec, v.Key, rec.OnDelete); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// nfsRemoveVolume applies onDelete to a volume's subdirectory and forgets
// the volume: intent (phase deleting) first, so that a kill half way is
// finished by the CO's retry. A tree that holds another share's records
// (.hostpath-csi) is neither archived nor deleted: FAILED_PRECONDITION,
// and the volume is left as it was.
func (d *nfsDriver) nfsRemoveVolume(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, key, onDelete string) error {
	owner, err := x.SubDirOwner(ctx, rec.SubDir)
	if err != nil && !errors.Is(err, nfs.ErrNotFound) {
		return nfsError("read subdirectory index", err)
	}
	mine := owner == "" || owner == rec.ID
	if mine && onDelete != OnDeleteRetain {
		if err := d.nfsCheckNoClaimBelow(ctx, x, rec); err != nil {
			return err
		}
		if err := d.nfsCheckNoShareInside(ctx, x, rec, nfsDeleteWhat(rec)); err != nil {
			return err
		}
	}
	if rec.Phase != nfs.PhaseDeleting {
		rec.Phase = nfs.PhaseDeleting
		if err := x.PutVolume(ctx, rec, key); err != nil {
			return nfsError("record the delete", err)
		}
	}
	if err := x.RemovePartial(ctx, key); err != nil {
		return nfsError("remove a partial copy", err)
	}
	switch {
	case !mine:
		klog.InfoS("NFS volume's subdirectory belongs to another volume now; leaving it", "volumeID", rec.ID, "subDir", rec.SubDir, "owner", owner)
	case onDelete == OnDeleteRetain:
		klog.InfoS("NFS volume deleted; its data is retained (onDelete: retain)", "volumeID", rec.ID, "export", x.Name(), "subDir", rec.SubDir,
			"retainedFor", claimRefOf(rec.Name, rec.Parameters).String())
	case onDelete == OnDeleteArchive:
		to, err := x.ArchiveDir(ctx, rec.SubDir, time.Now())
		if err != nil {
			return nfsError("archive the volume's subdirectory", err)
		}
		klog.InfoS("NFS volume deleted; its data is archived (onDelete: archive)", "volumeID", rec.ID, "export", x.Name(), "archivedAs", to)
	default:
		if err := x.RemoveDir(ctx, rec.SubDir, "v-"+key); err != nil {
			return nfsError("remove the volume's subdirectory", err)
		}
	}
	if mine && onDelete == OnDeleteRetain {
		err = x.RetainVolume(ctx, rec, key, claimRefOf(rec.Name, rec.Parameters))
	} else {
		err = x.DeleteVolume(ctx, rec, key)
	}
	if err != nil {
		return nfsError("remove the volume's record", err)
	}
	klog.V(2).InfoS("NFS volume deleted", "volumeID", rec.ID, "name", rec.Name, "onDelete", onDelete)
	return nil
}

// nfsCheckNoClaimBelow refuses to delete or archive rec's subdirectory
// while it holds another volume's subdirectory, live or retained: a
// record never holds one (creates refuse nested subDirs both ways), unless
// it was not written by the driver (a tenant's, planted in its own data
// and found by a sweep).
func (d *nfsDriver) nfsCheckNoClaimBelow(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord) error {
	claims, err := x.SubDirClaims(ctx, rec.SubDir)
	if err != nil {
		return nfsError("read subdirectory index", err)
	}
	for _, c := range claims {
		if c.ID == rec.ID || !strings.HasPrefix(c.SubDir, rec.SubDir+"/") {
			continue
		}
		held := false
		if c.Retained {
			exists, err := x.DirExists(ctx, c.SubDir)
			if err != nil {
				return nfsError("look up retained data", err)
			}
			held = exists
		} else if ov, err := ids.ParseNFSVolumeID(c.ID); err == nil {
			orec, err := x.GetVolume(ctx, ov.Key)
			if err != nil && !errors.Is(err, nfs.ErrNotFound) {
				return nfsError("read volume record", err)
			}
			held = err == nil && orec.ID == c.ID
		}
		if held {
			klog.ErrorS(nil, "Refusing to remove an NFS volume's subdirectory: it holds another volume's", "volumeID", rec.ID, "subDir", rec.SubDir,
				"export", x.Name(), "holds", c.SubDir, "of", c.ID, "retained", c.Retained)
			return status.Errorf(codes.FailedPrecondition, "delete volume %s: its subDir %q on %s holds the subdirectory of another volume (or data retained from one), which the driver never makes: the record was not written by the driver; it is left as it is (details in the controller's log); an administrator removes the record %s.json from %s/volumes on the server",
				rec.ID, rec.SubDir, x.Name(), mustKey(rec.ID), ids.HiddenDir)
		}
	}
	return nil
}

func mustKey(id string) string {
	v, _ := ids.ParseNFSVolumeID(id)
	return v.Key
}

// nfsDeleteWhat names a delete in the look before it.
func nfsDeleteWhat(rec *nfs.VolumeRecord) string { return "delete volume " + rec.ID }

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
	for _, c := range req.GetVolumeCapabilities() {
		if err := nfsCapability(c); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
		}
	}
	if p := req.GetParameters(); len(p) > 0 && !sameClassParameters(p, rec.Parameters) {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "the volume was created with other parameters"}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
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
