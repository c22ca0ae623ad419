package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/peers"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Content sources of a new hostpath volume: a snapshot (a restore) or a
// volume (a clone), held shared while the copy runs as a job.

// contentSource is what a new volume is made from.
type contentSource struct {
	snapshotID, volumeID string
	capacity             int64 // the smallest volume the content fits in
	// least is the smallest required_bytes accepted: capacity, or the
	// source's own request where the driver made it larger than asked (the
	// new volume is still made at least capacity).
	least     int64
	kind      volumeKind
	formatted bool   // an image source holds a filesystem
	lockKey   string // "" for a remote source
	unlock    func()
	// remote is the peer that holds the source, when this node does not.
	remote *peers.Peer
	// export is where a snapshot kept off the node is (an NFS snapshot of
	// a hostpath volume: offnode.go); nil for a source on this node.
	export *ids.NFSSnapshot
}

// reads is the lock key the copy job reads, for deletes to see.
func (cs *contentSource) reads() []string {
	if cs.lockKey == "" {
		return nil
	}
	return []string{cs.lockKey}
}

func (cs *contentSource) describe(newID string) string {
	from := ""
	if cs.remote != nil {
		from = " on node " + cs.remote.Node
	}
	if cs.snapshotID != "" {
		return fmt.Sprintf("restore of volume %s from snapshot %s%s", newID, cs.snapshotID, from)
	}
	return fmt.Sprintf("clone of volume %s%s into volume %s", cs.volumeID, from, newID)
}

// lockContentSource checks a CreateVolume content source and holds it
// shared (snapshot or volume), so it cannot be deleted while it is copied;
// other copies and mounts of it go on meanwhile.
func (d *hostpathDriver) lockContentSource(ctx context.Context, cs *csi.VolumeContentSource) (*contentSource, error) {
	switch {
	case cs.GetSnapshot() != nil && ids.IsNFSSnapshotID(cs.GetSnapshot().GetSnapshotId()):
		return d.lockOffNodeSnapshot(ctx, cs.GetSnapshot().GetSnapshotId())
	case cs.GetSnapshot() != nil:
		id := cs.GetSnapshot().GetSnapshotId()
		if err := snapshotIDOrNotFound(id); err != nil {
			return nil, err
		}
		unlock, err := d.rlock(ctx, "snap", id)
		if err != nil {
			return nil, err
		}
		snap, err := d.readySnapshot(id)
		if err != nil {
			unlock()
			if d.notHere(err) {
				return d.remoteContentSource(ctx, xferSnapshot, id)
			}
			return nil, err
		}
		return &contentSource{snapshotID: id, capacity: snap.SourceCapacity, least: snap.RestoreRequest(), kind: kindOfSnapshot(snap), formatted: snap.SourceFormatted,
			lockKey: "snap/" + id, unlock: unlock}, nil
	case cs.GetVolume() != nil:
		id := cs.GetVolume().GetVolumeId()
		if err := volumeIDOrNotFound(id); err != nil {
			return nil, err
		}
		unlock, err := d.rlock(ctx, "vol", id)
		if err != nil {
			return nil, err
		}
		v, err := d.readyVolume(id)
		if err != nil {
			unlock()
			if d.notHere(err) {
				return d.remoteContentSource(ctx, xferVolume, id)
			}
			return nil, err
		}
		if _, err := d.copyPlan(v); err != nil { // refuse at once what cannot be copied
			unlock()
			return nil, err
		}
		held := d.heldSize(v)
		least := held
		if r := requestOf(v, held); r > 0 {
			least = r
		}
		return &contentSource{volumeID: id, capacity: held, least: least, kind: kindOf(v), formatted: v.Formatted,
			lockKey: "vol/" + id, unlock: unlock}, nil
	}
	return nil, status.Error(codes.InvalidArgument, "volume content source has neither a snapshot nor a volume")
}

// sizeFor picks the capacity of a volume made from a source of capacity bytes: what was asked,
// never less than the source's capacity; the source's size when nothing was
// asked. A request below the source's capacity is accepted down to
// least, the source's own request where the driver made the source
// larger than asked (a filesystem image's minimum): a claim of the source
// claim's size restores it, into a volume larger than required, as CSI lets
// it be. Below that, or with a limit under the source's capacity, it is
// OUT_OF_RANGE.
func sizeFor(cr *csi.CapacityRange, asked, capacity, least int64) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	if lim > 0 && lim < capacity {
		return 0, status.Errorf(codes.OutOfRange, "limit of %d bytes is smaller than the source (%d bytes)", lim, capacity)
	}
	if req == 0 {
		return capacity, nil
	}
	if least = max(1, least); asked < least {
		return 0, status.Errorf(codes.OutOfRange, "requested %d bytes, smaller than the source (%d bytes); ask for at least the source's size", asked, least)
	}
	return max(asked, capacity), nil
}

// copyIntoVolume is the job behind a restore or a clone: it copies the
// content source into the new volume (fastest mechanism first; the copy
// lands in place only once complete and on disk) and records the volume as
// ready. On failure, or when cancelled, nothing of the volume is left.
//
// limit is the request's limit_bytes (0: none), which a clone of a source
// that grew since the call must still keep.
func (d *hostpathDriver) copyIntoVolume(ctx context.Context, v *state.Volume, src *contentSource, limit int64) error {
	start := time.Now()
	st, err := d.copyStep(ctx, v.ID, func() (hostpath.CopyResult, error) {
		if src.remote != nil {
			n, err := d.fetchInto(ctx, src, v, limit)
			return hostpath.CopyResult{Mechanism: "transfer", Bytes: n}, err
		}
		if src.export != nil {
			return d.restoreOffNode(ctx, v, src)
		}
		if src.snapshotID != "" {
			return d.vols.Restore(ctx, src.snapshotID, v.ID)
		}
		var st hostpath.CopyResult
		err := d.withCopyLocks(ctx, []string{src.volumeID}, func(vols map[string]*state.Volume, freeze []string) (err error) {
			if err := d.growForSource(v, d.heldSize(vols[src.volumeID]), limit); err != nil {
				return err
			}
			st, err = d.vols.Clone(ctx, src.volumeID, v.ID, freeze)
			return err
		})
		return st, err
	})
	if err == nil && kindOf(v).layout != LayoutDirectory && (src.remote != nil || src.export != nil) {
		// Made from what another node, or whoever writes the export,
		// sent: before anything grows, attaches or formats it.
		if err = d.vols.CheckImage(v.ID); err != nil {
			err = status.Errorf(codes.DataLoss, "the %s: %v", src.describe(v.ID), err)
		}
	}
	if err == nil {
		err = d.fitToCapacity(v)
	}
	if err != nil {
		d.rollbackCreate(v)
		if _, ok := status.FromError(err); ok {
			return err // already says what happened, with its code
		}
		return diskError("copy content source into the new volume", err)
	}
	if err := d.markVolumeReady(v); err != nil {
		return err
	}
	// What the copy and the fit allocated is on disk now, no longer set
	// aside (and a copy-on-write copy's shared blocks are counted by what
	// they are shared with): the next sum reads them.
	d.reserved.invalidate()
	op := "clone"
	if src.snapshotID != "" {
		op = "restore"
	}
	d.metrics.copied(op, st.Mechanism, st.Bytes, time.Since(start))
	klog.InfoS("Volume made from a content source", "volumeID", v.ID, "snapshot", src.snapshotID, "volume", src.volumeID, "fromNode", v.SourceNode,
		"mechanism", st.Mechanism, "files", st.Files, "bytes", st.Bytes, "duration", time.Since(start))
	return nil
}

// growForSource makes a clone whose source grew since the call (an
// expansion while the clone waited for a copy slot) as large as the source
// is now, since it holds the source whole: within the request's limit_bytes
// (OUT_OF_RANGE otherwise, the answer the same request gets from now on)
// and the largest volume, and within the node's room, checked and set aside
// in one step as a create's is.
func (d *hostpathDriver) growForSource(v *state.Volume, srcCap, limit int64) error {
	extra := srcCap - v.CapacityBytes
	if extra <= 0 {
		return nil
	}
	if limit > 0 && srcCap > limit {
		return status.Errorf(codes.OutOfRange, "the source volume grew to %d bytes since the request, more than its limit of %d bytes; ask for at least the source's size", srcCap, limit)
	}
	if srcCap > d.cfg.MaxVolumeSize {
		return status.Errorf(codes.OutOfRange, "the source volume grew to %d bytes since the request; the largest volume this driver makes is %d bytes (--max-volume-size)", srcCap, d.cfg.MaxVolumeSize)
	}
	// Held or not: a clone sets aside its whole capacity while it copies
	// (reservedBy, recordNewVolume), and the copy writes up to it.
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	avail, err := d.available()
	if err != nil {
		return err
	}
	if extra > avail {
		return status.Errorf(codes.ResourceExhausted, "the source volume grew to %d bytes since the request; the clone needs %d bytes more, and the node has %d bytes available for volumes (what volumes held to their size and copies in progress may still fill is set aside)", srcCap, extra, avail)
	}
	// The clone's claim asked what it asked: its snapshots restore at that.
	asked := v.RequestedBytes
	if asked == 0 {
		asked = v.CapacityBytes
	}
	if err := d.store.SetVolumeCapacity(v.ID, srcCap, asked); err != nil {
		return stateError(err)
	}
	v.CapacityBytes, v.RequestedBytes = srcCap, asked
	d.reserved.add(extra)
	return nil
}

// fitToCapacity makes a restored or cloned volume hold its capacity, which
// may be larger than its source's: a directory's limit, an image's file
// (its filesystem grows at its first stage) or a block volume's file.
func (d *hostpathDriver) fitToCapacity(v *state.Volume) error {
	switch kindOf(v).layout {
	case LayoutImage:
		if _, err := d.vols.ExpandImage(v.ID, v.CapacityBytes); err != nil && !errors.Is(err, hostpath.ErrGrowAtNextMount) {
			return err
		}
		return nil
	case layoutBlock:
		return d.vols.ExpandBlock(v.ID, v.CapacityBytes)
	}
	return d.vols.SetDirectoryLimit(v.ID, v.Limit, v.CapacityBytes, v.ProjectID)
}

// notHere reports whether err says a source is not on this node (never
// was, or is no longer): then another node may hold it.
func (d *hostpathDriver) notHere(err error) bool {
	return status.Code(err) == codes.NotFound && d.xnode != nil && d.xnode.client != nil
}
