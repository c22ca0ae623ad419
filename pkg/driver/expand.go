package driver

import (
	"context"
	"errors"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Expansion happens on the node that holds the volume, with no controller
// call: the driver advertises the node's EXPAND_VOLUME (and online
// expansion) but not the controller's, so csi-resizer only updates the PV
// and the kubelet calls NodeExpandVolume here, on the right node, in a
// one-node or a many-node cluster alike.

// NodeExpandVolume grows a staged or published volume: a directory's quota
// limit, an image and its filesystem (online where the kernel allows), or a
// block volume's file and device. The new size is recorded once it holds.
func (d *hostpathDriver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if err := volumeIDOrNotFound(req.GetVolumeId()); err != nil {
		return nil, err
	}
	unlock, err := d.lockForNode(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.mountedAt(req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, err
	}
	// No size asked: finish growing to the recorded one (an image whose
	// filesystem could not grow yet), which the spec allows.
	required, lim := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if required < 0 || lim < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "capacity range: required bytes %d and limit bytes %d must not be negative", required, lim)
	}
	k := kindOf(v)
	if c := req.GetVolumeCapability(); c != nil {
		if err := servesKind(k, c); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	// A size at or below the current one is already there: the spec's
	// answer is OK with the volume's size (volumes never shrink). A block
	// volume grows in whole sectors, so the size checked is the rounded one.
	want := max(required, v.CapacityBytes)
	if k.block() && want%blockSector != 0 {
		want = (want/blockSector + 1) * blockSector
	}
	// NodeExpandVolume's error table has one code for a range the plugin
	// cannot meet: OUT_OF_RANGE, for a limit below the volume's size (a
	// shrink) as for one below what was required.
	switch {
	case lim > 0 && lim < v.CapacityBytes:
		return nil, status.Errorf(codes.OutOfRange, "capacity range: limit bytes %d is below the volume's size of %d bytes; volumes never shrink", lim, v.CapacityBytes)
	case lim > 0 && want > lim:
		return nil, status.Errorf(codes.OutOfRange, "capacity range: %d bytes (required %d, in whole %d-byte sectors for a block volume) exceed limit bytes %d", want, required, blockSector, lim)
	case want > d.cfg.MaxVolumeSize:
		return nil, status.Errorf(codes.OutOfRange, "requested %d bytes; the largest volume this driver makes is %d bytes (--max-volume-size)", want, d.cfg.MaxVolumeSize)
	}
	if err := d.copyInProgress(v, "expand it"); err != nil {
		return nil, err
	}
	charged, err := d.setAsideGrowth(v, want)
	if err != nil {
		return nil, err
	}
	switch k.layout {
	case LayoutImage:
		// Every call, even at the recorded size: a grow the filesystem
		// could not take at once is finished here or at the next stage.
		_, err = d.vols.ExpandImage(v.ID, want)
		if errors.Is(err, hostpath.ErrGrowAtNextMount) {
			if rerr := d.recordCapacity(v, want, required); rerr != nil {
				return nil, rerr
			}
			// The spec's code for a filesystem that cannot grow while
			// staged: the kubelet marks the claim as waiting for the
			// volume to be staged again, and the next stage (a pod
			// restart) grows it offline.
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s: the image grew to %d bytes, but its %s filesystem cannot grow while mounted on this node (online ext4 growth needs CAP_SYS_RESOURCE); it grows at the next stage: restart the pod",
				v.ID, want, k.fsType)
		}
	case layoutBlock:
		err = d.vols.ExpandBlock(v.ID, want)
	default:
		err = d.vols.SetDirectoryLimit(v.ID, v.Limit, want, v.ProjectID)
	}
	if err != nil {
		if charged {
			d.growthFailed(v)
		}
		if errors.Is(err, hostpath.ErrShrink) {
			return nil, status.Errorf(codes.OutOfRange, "volume %s: %v", v.ID, err)
		}
		return nil, diskError("grow volume", err)
	}
	if err := d.recordCapacity(v, want, required); err != nil {
		return nil, err
	}
	if charged && k.layout != LayoutDirectory {
		d.reserved.invalidate() // the grown part is allocated now: on disk, no longer set aside
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: want}, nil
}

// blockSector is the unit a block volume's size is rounded up to.
const blockSector = 4096

// recordCapacity records a volume's new size, after it holds (a retry of an
// expansion cut short finds the volume already grown and records it then),
// and what was required when that is less (a block volume's whole sectors):
// a snapshot of it restores at the claim's new size.
func (d *hostpathDriver) recordCapacity(v *state.Volume, size, required int64) error {
	if size == v.CapacityBytes && v.GrowingTo == 0 {
		return nil
	}
	if err := d.store.SetVolumeCapacity(v.ID, size, required); err != nil {
		return stateError(err)
	}

	klog.V(2).InfoS("Volume expanded", "volumeID", v.ID, "from", v.CapacityBytes, "to", size, "limit", v.Limit)
	v.CapacityBytes, v.GrowingTo, v.RequestedBytes = size, 0, 0
	if required > 0 && required < size {
		v.RequestedBytes = required
	}
	return nil
}
