package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Health reasons this driver reports (CamelCase, as the spec asks).
const (
	ReasonDataMissing = "DataDirectoryMissing"
	ReasonDataInvalid = "DataDirectoryInvalid"
	ReasonNotMounted  = "NotMounted"
)

// dataHealth says what is wrong with a volume's data on disk, if anything. A
// record whose data vanished is never dropped: it is reported here, so the
// CO (and an operator) sees DATA_LOSS instead of a silently missing volume.
func (d *hostpathDriver) dataHealth(v *state.Volume) []*csi.VolumeHealth_VolumeHealthEntry {
	ok, err := d.vols.Exists(v.ID)
	switch {
	case err != nil:
		return []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_DATA_LOSS, Reason: ReasonDataInvalid,
			Message: fmt.Sprintf("volume data at %s is unusable: %v", d.vols.Path(v.ID), err),
		}}
	case !ok:
		return []*csi.VolumeHealth_VolumeHealthEntry{{
			Status: csi.VolumeHealthErrorType_DATA_LOSS, Reason: ReasonDataMissing,
			Message: fmt.Sprintf("volume data directory %s is missing on node %s", d.vols.Path(v.ID), v.NodeID),
		}}
	}
	if kindOf(v).layout != LayoutDirectory {
		if _, err := d.vols.ImageSize(v.ID); err != nil {
			return []*csi.VolumeHealth_VolumeHealthEntry{{
				Status: csi.VolumeHealthErrorType_DATA_LOSS, Reason: ReasonDataMissing,
				Message: fmt.Sprintf("volume file %s is unusable on node %s: %v", d.vols.ImagePath(v.ID), v.NodeID, err),
			}}
		}
	}
	return nil
}

func (d *hostpathDriver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	v, err := d.readyVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{
		VolumeId: v.ID, HealthStatuses: d.dataHealth(v)}}, nil
}

// ControllerListVolumeHealth lists the volumes that have a health problem.
func (d *hostpathDriver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	if err := pageToken(req.GetMaxEntries(), req.GetStartingToken()); err != nil {
		return nil, err
	}
	unhealthy := func(v *state.Volume) bool { return controllerListed(v) && len(d.dataHealth(v)) > 0 }
	vols, next, err := d.store.ListVolumes(req.GetStartingToken(), int(req.GetMaxEntries()), unhealthy)
	if err != nil {
		return nil, stateError(err)
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, v := range vols {
		resp.Entries = append(resp.Entries, &csi.VolumeHealth{VolumeId: v.ID, HealthStatuses: d.dataHealth(v)})
	}
	return resp, nil
}

// NodeGetVolumeHealth adds what the node sees: a path the volume should be
// mounted at that is not a mount point any more.
func (d *hostpathDriver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	v, err := d.readyVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	entries := d.dataHealth(v)
	var unmounted []string
	for _, p := range []string{req.GetVolumePublishPath(), req.GetStagingTargetPath()} {
		if p == "" {
			continue
		}
		if err := requirePath(p, "path"); err != nil {
			return nil, err
		}
		mounted, err := d.inPlaceAt(v, p)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.Internal, "check mount point %s: %v", p, err)
		}
		if !mounted {
			unmounted = append(unmounted, p)
		}
	}
	if len(unmounted) > 0 {
		entries = append(entries, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: ReasonNotMounted,
			Message: fmt.Sprintf("not mounted at %s", strings.Join(unmounted, " and ")),
		})
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: v.ID, HealthStatuses: entries}}, nil
}

// inPlaceAt says whether the volume is in place at path: as its record of
// that path says (a block volume's stage is a device, not a mount), or, with
// no record, whether something is mounted there.
func (d *hostpathDriver) inPlaceAt(v *state.Volume, path string) (bool, error) {
	pubs, err := d.store.PublicationsOf(v.ID)
	if err != nil {
		return false, err
	}
	for _, p := range pubs {
		if p.Path == path {
			return d.inPlace(v, p)
		}
	}
	return hostpathMountPoint(path)
}

// lowSpacePercent is the free-space share under which the node reports its
// storage as degraded: new volumes and growing ones are about to fail.
const lowSpacePercent = 5

// NodeGetStorageHealth reports the data directory: unreachable when it takes
// no writes, degraded when it is nearly full.
func (d *Driver) NodeGetStorageHealth(ctx context.Context, req *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	var entries []*csi.NodeGetStorageHealthResponse_StorageBackendHealth
	if err := d.hostpath.vols.CheckWritable(); err != nil {
		entries = append(entries, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "DataDirectoryNotWritable", Message: err.Error()})
	} else if st, err := d.hostpath.vols.Stats(); err != nil {
		entries = append(entries, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "DataDirectoryUnreadable", Message: err.Error()})
	} else {
		if st.TotalBytes > 0 && st.AvailableBytes*100 < st.TotalBytes*lowSpacePercent {
			entries = append(entries, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: csi.StorageHealthErrorType_STORAGE_DEGRADED, Reason: "LowSpace",
				Message: fmt.Sprintf("data directory %s has %d of %d bytes available (under %d%%)", d.hostpath.vols.Root(), st.AvailableBytes, st.TotalBytes, lowSpacePercent)})
		}
		if st.TotalInodes > 0 && st.FreeInodes*100 < st.TotalInodes*lowSpacePercent {
			entries = append(entries, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: csi.StorageHealthErrorType_STORAGE_DEGRADED, Reason: "LowInodes",
				Message: fmt.Sprintf("data directory %s has %d of %d inodes free (under %d%%)", d.hostpath.vols.Root(), st.FreeInodes, st.TotalInodes, lowSpacePercent)})
		}
	}
	if left := d.pending.list(); len(left) > 0 {
		var what []string
		for _, p := range left[:min(len(left), 5)] {
			what = append(what, fmt.Sprintf("%s: %v", p.what, p.err))
		}
		entries = append(entries, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
			Status: csi.StorageHealthErrorType_STORAGE_DEGRADED, Reason: "ReconcilePending",
			Message: fmt.Sprintf("%d thing(s) start-up could not reconcile, retried in the background (see the log): %s", len(left), strings.Join(what, "; "))})
	}
	return &csi.NodeGetStorageHealthResponse{BackendHealth: entries}, nil
}
