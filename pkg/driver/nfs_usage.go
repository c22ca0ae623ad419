package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NodeGetVolumeStats reports the export's usage (statfs of the mount):
// an NFS volume shares its export's space.
func (d *nfsDriver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	v, err := d.nfsMountedAt(id, path)
	if err != nil {
		return nil, err
	}
	st, err := d.exports.NodeStats(ctx, v.Export(), path)
	if err != nil {
		return nil, nfsError("statfs of NFS volume "+id+" at "+path, err)
	}
	bs := st.Bsize
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Used: int64(st.Blocks-st.Bfree) * bs, Available: int64(st.Bavail) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Used: int64(st.Files - st.Ffree), Available: int64(st.Ffree)},
	}}, nil
}

// NodeGetVolumeHealth: not mounted where it should be, or the server not
// answering a statfs in time, are reported; the subdirectory itself is the
// controller's to check.
func (d *nfsDriver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	id := req.GetVolumeId()
	v, err := nfsVolumeID(id)
	if err != nil {
		return nil, err
	}
	var entries []*csi.VolumeHealth_VolumeHealthEntry
	for _, p := range []string{req.GetVolumePublishPath(), req.GetStagingTargetPath()} {
		if p == "" {
			continue
		}
		if err := requirePath(p, "path"); err != nil {
			return nil, err
		}
		mounted, err := nfsMounted(p)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "check mount point %s: %v", p, err)
		}
		if !mounted {
			entries = append(entries, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: ReasonNotMounted,
				Message: fmt.Sprintf("not mounted at %s", p)})
			continue
		}
		if _, err := d.exports.NodeStats(ctx, v.Export(), p); err != nil {
			entries = append(entries, &csi.VolumeHealth_VolumeHealthEntry{Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: ReasonNFSUnreachable,
				Message: fmt.Sprintf("statfs of %s: %v", p, err)})
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: &csi.VolumeHealth{VolumeId: id, HealthStatuses: entries}}, nil
}

// NodeExpandVolume: an NFS volume has no size of its own to grow: nothing
// holds it to its capacity, it can fill its export. Expanding it is honest
// when the export can hold the size asked: the call succeeds with nothing to
// do; a size larger than the whole export is OUT_OF_RANGE.
func (d *nfsDriver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if c := req.GetVolumeCapability(); c != nil {
		if err := nfsCapability(c); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	v, err := d.nfsMountedAt(id, path)
	if err != nil {
		return nil, err
	}
	want := req.GetCapacityRange().GetRequiredBytes()
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && lim < want {
		return nil, status.Errorf(codes.InvalidArgument, "capacity range: required bytes %d exceed limit bytes %d", want, lim)
	}
	st, err := d.exports.NodeStats(ctx, v.Export(), path)
	if err != nil {
		return nil, nfsError("statfs of NFS volume "+id, err)
	}
	if total := int64(st.Blocks) * st.Bsize; want > total {
		return nil, status.Errorf(codes.OutOfRange, "requested %d bytes; the whole export %s holds %d bytes", want, v.Export(), total)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: want}, nil
}
