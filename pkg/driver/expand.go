package driver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
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
		if errors.Is(err, imagefs.ErrGrowAtNextMount) {
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
		if errors.Is(err, imagefs.ErrShrink) {
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

// enforced reports whether something holds v to its size, so that it sets
// aside room on the data filesystem.
func enforced(v *state.Volume) bool { return v.Limit != "" && v.Limit != hostpath.EnforceNone }

// setAsideGrowth checks that the node has room for v to grow to want and
// records that intent before the disk grows, under one lock with creates,
// so two calls cannot both take the same free bytes and a kill while the
// disk grows leaves the growth set aside. It charges only what is not set
// aside already: the kubelet's retry of an expansion a kill cut short finds
// its intent on record, or its image file grown, and is not refused the
// room its filesystem already has.
//
// charged says whether this call set room aside (see growthFailed).
func (d *hostpathDriver) setAsideGrowth(v *state.Volume, want int64) (charged bool, err error) {
	if !enforced(v) {
		return false, nil
	}
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	grow := want - d.heldSize(v)
	if grow <= 0 {
		return false, nil
	}
	avail, err := d.available()
	if err != nil {
		return false, err
	}
	if grow > avail {
		return false, status.Errorf(codes.ResourceExhausted, "growing volume %s by %d bytes, but the node has %d bytes available for volumes held to their size", v.ID, grow, avail)
	}
	// The intent on record before the cached sum counts it: a sum taken
	// in between reads the record, so the growth is never dropped.
	if err := d.store.SetVolumeGrowingTo(v.ID, want); err != nil {
		return false, stateError(err)
	}
	v.GrowingTo = want
	d.reserved.add(grow)
	return true, nil
}

// growthFailed gives back the room a failed grow set aside: its intent goes
// and the cached sum is taken again from the records and the disk, which
// still count whatever part of the grow did happen (a grown image file).
func (d *hostpathDriver) growthFailed(v *state.Volume) {
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	if err := d.store.SetVolumeGrowingTo(v.ID, 0); err != nil {
		klog.ErrorS(err, "Cannot drop the intent of a failed expansion; its room stays set aside until the volume grows or goes", "volumeID", v.ID)
		return
	}
	v.GrowingTo = 0
	d.reserved.invalidate()
}

// heldSize is the size v may fill, and what a copy of it holds: its
// recorded capacity, or more while an expansion is in progress or was cut
// short (its intent on record; an image or block file grown before the
// capacity was recorded). A snapshot, restore or clone sizes itself by it,
// never by the record alone: a copy of a grown image file cannot shrink.
func (d *hostpathDriver) heldSize(v *state.Volume) int64 {
	size := max(v.CapacityBytes, v.GrowingTo)
	if v.Limit == hostpath.EnforceImage {
		if n, err := d.vols.ImageSize(v.ID); err == nil {
			size = max(size, n)
		}
	}
	return size
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

// available is what the data directory can still give a new or growing
// volume: the filesystem's available bytes less what enforced volumes may
// still fill (their capacity minus what they use). A directory that nothing
// holds reserves nothing, as it is not held to its size.
//
// The reservation is a sum over every enforced volume (a record and a stat
// or qgroup read each): it is computed at most once per reserveTTL and kept
// up to date meanwhile by the volumes this process makes, so a create costs
// one statfs, not a walk of every record (which made creates 15 times slower
// with a few thousand volumes).
//
// The sum is read before the free space: a create, grow, copy or snapshot
// that allocates moves bytes from set aside to on disk and then drops the
// cached sum, outside roomMu. Read in this order, such a move in between
// counts its bytes twice (too little available, safe); the other order
// counted them nowhere, and the node over-promised.
func (d *hostpathDriver) available() (int64, error) {
	reserved, err := d.reserved.get(d.sumReserved)
	if err != nil {
		return 0, err
	}
	fs, err := d.vols.Stats()
	if err != nil {
		return 0, diskError("read free space", err)
	}
	return max(0, fs.AvailableBytes-reserved), nil
}

// reserveTTL is how long a computed reservation is reused.
const reserveTTL = 2 * time.Second

// sumReserved walks every enforced volume for what it may still fill.
func (d *hostpathDriver) sumReserved() (int64, error) {
	vols, _, err := d.store.ListVolumes("", 0, nil)
	if err != nil {
		return 0, stateError(err)
	}
	var reserved int64
	for _, v := range vols {
		if v.Phase != state.PhaseDeleting {
			reserved += d.reservedBy(v)
		}
	}
	snaps, _, err := d.store.ListSnapshots("", 0, nil)
	if err != nil {
		return 0, stateError(err)
	}
	for _, s := range snaps {
		if s.Phase != state.PhaseDeleting {
			reserved += s.RoomBytes
		}
	}
	return reserved, nil
}

// reservedBy is what volume v may still fill: nothing unless something
// holds it to its size, or while a restore or clone copies into it (up to
// its capacity).
func (d *hostpathDriver) reservedBy(v *state.Volume) int64 {
	if !enforced(v) {
		if v.Phase == state.PhaseCreating && v.HasSource() {
			return v.CapacityBytes
		}
		return 0
	}
	// What the volume may still take on disk is its capacity less what it
	// holds alone: blocks it shares with a snapshot, a clone or its source
	// (a reflink, a btrfs snapshot) take new space when rewritten.
	var used int64
	var err error
	switch v.Limit {
	case hostpath.EnforceImage:
		used, err = d.vols.ImageExclusive(v.ID)
	case hostpath.EnforceQgroup:
		used, err = d.vols.QgroupExclusive(v.ID)
	case hostpath.EnforceProject:
		used, _, err = d.vols.DirectoryUsage(v.ID, v.Limit, v.ProjectID)
	default:
		return 0
	}
	if err != nil {
		used = 0 // missing data (health says so) or a volume being made: reserve it all
	}
	return max(0, d.heldSize(v)-used)
}

// reservation caches sumReserved.
type reservation struct {
	mu    sync.Mutex
	value int64
	at    time.Time
}

func (r *reservation) get(sum func() (int64, error)) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < reserveTTL {
		return r.value, nil
	}
	v, err := sum()
	if err != nil {
		return 0, err
	}
	r.value, r.at = v, time.Now()
	return v, nil
}

// invalidate makes the next get take the sum again.
func (r *reservation) invalidate() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.at = time.Time{}
}

// add counts bytes an enforced volume of this process now may fill (or,
// negative, no longer may), until the next sum sees it.
func (r *reservation) add(bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() {
		r.value = max(0, r.value+bytes)
	}
}
