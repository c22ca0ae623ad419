package driver

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Capacity and reservation of the hostpath family: what the data directory
// can still give a new or growing volume (available), what volumes held to
// their size and copies in progress set aside (the reservation), and the
// steps that set room aside together with their intent: a grow, a snapshot
// (a create's is recordNewVolume's).

func (d *hostpathDriver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	// csi-provisioner passes a class's parameters here as written, with
	// the keys it keeps for itself (csi.storage.k8s.io/fstype, secrets'
	// names), which it takes out before CreateVolume.
	params := maps.Clone(req.GetParameters())
	maps.DeleteFunc(params, func(k, _ string) bool { return strings.HasPrefix(k, "csi.storage.k8s.io/") })
	if _, err := parseParameters(params); err != nil {
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
	avail, err := d.available()
	if err != nil {
		return nil, err
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(min(avail, d.cfg.MaxVolumeSize)),
	}, nil
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

// enforced reports whether something holds v to its size, so that it sets
// aside room on the data filesystem.
func enforced(v *state.Volume) bool { return v.Limit != "" && v.Limit != hostpath.EnforceNone }

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

// setAsideSnapshots checks that the node has room for every snapshot in
// snaps (each of a volume in srcs, by ID) and records their intent with
// that room set aside, under one lock with creates and expansions, so that
// no two calls take the same free bytes and a kill after this point leaves
// the room counted until start-up rolls the snapshot back. All or none: a
// group's members together.
//
// A snapshot's room is its source's size (heldSize). A full copy (a data
// filesystem without reflinks) writes up to that much: an image's or block
// volume's allocated file whole, a directory's files. A copy-on-write copy
// (reflink, btrfs snapshot) writes nearly nothing, but the blocks it shares
// take new room when the source rewrites them, up to the source's size.
func (d *hostpathDriver) setAsideSnapshots(snaps []*state.Snapshot, srcs map[string]*state.Volume) error {
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	var room int64
	for _, s := range snaps {
		s.RoomBytes = d.heldSize(srcs[s.SourceVolumeID])
		room += s.RoomBytes
	}
	avail, err := d.available()
	if err != nil {
		return err
	}
	if room > avail {
		what := fmt.Sprintf("snapshot %s of volume %s", snaps[0].ID, snaps[0].SourceVolumeID)
		if len(snaps) > 1 {
			what = fmt.Sprintf("a group snapshot of %d volumes", len(snaps))
		}
		return status.Errorf(codes.ResourceExhausted,
			"%s needs room for %d bytes (a snapshot sets aside its source's size: a copy, or what the source may rewrite of blocks it shares), and the node has %d bytes available; delete snapshots or volumes, or free the data filesystem",
			what, room, avail)
	}
	for _, s := range snaps {
		if err := d.store.PutSnapshot(s); err != nil {
			return stateError(err)
		}
	}
	d.reserved.add(room)
	return nil
}

// roomAfterCopy is what a ready snapshot keeps set aside: nothing for a
// full copy, whose bytes are on disk (in the free space the node reports),
// nor for a copy whose source's own count sees the blocks it shares (an
// image's extent map, a btrfs qgroup's exclusive bytes: the source then sets
// aside what it may rewrite). A directory held by a project quota counts
// shared blocks as its own, so for its reflinked files the snapshot keeps
// their bytes set aside: a rewrite of the source takes them anew.
func roomAfterCopy(src *state.Volume, mechanism string, bytes int64) int64 {
	if src.Limit == hostpath.EnforceProject && (mechanism == "reflink" || mechanism == "mixed") {
		return bytes
	}
	return 0
}
