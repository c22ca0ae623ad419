package driver

import (
	"context"
	"errors"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// The SnapshotMetadata service (changed block tracking, KEP-3314): the data
// ranges of a snapshot of a block or image volume, and those that changed
// between two snapshots of one, read from the snapshots' extent maps (see
// internal/extents). Directory and NFS volumes have no blocks to speak of:
// their snapshots are refused as the wrong kind of argument.

// defaultMaxResults is how many ranges a response carries when the caller
// leaves max_results 0.
const defaultMaxResults = 256

// maxPageResults bounds the ranges of one response, whatever max_results
// asks: 4096 ranges are about 100 KiB on the wire.
const maxPageResults = 4096

// metadataType is the style of every answer: ranges of any length (runs of
// whole 4 KiB blocks), the same for every volume and every message.
const metadataType = csi.BlockMetadataType_VARIABLE_LENGTH

// servesSnapshotMetadata: the service answers where snapshots of hostpath
// volumes are made, a controller that serves hostpath classes.
func (d *Driver) servesSnapshotMetadata() bool { return d.cfg.Controller && !d.cfg.NFSOnly }

// checkMetadataPaging checks what the spec's tables name: a negative
// starting_offset is OUT_OF_RANGE (as is one past the capacity, which the
// snapshot says), a negative max_results an invalid argument.
func checkMetadataPaging(offset int64, maxResults int32) error {
	if offset < 0 {
		return status.Errorf(codes.OutOfRange, "starting_offset %d is negative", offset)
	}
	if maxResults < 0 {
		return status.Errorf(codes.InvalidArgument, "max_results %d is negative (0 lets the driver choose)", maxResults)
	}
	return nil
}

func notBlockSnapshot(id, what string) error {
	return status.Errorf(codes.InvalidArgument, "snapshot %.64s is %s: snapshot metadata (allocated and changed blocks) is served for snapshots of block volumes and image volumes only; back it up whole", id, what)
}

func (d *hostpathDriver) getMetadataAllocated(ctx context.Context, req *csi.GetMetadataAllocatedRequest, send func(*csi.GetMetadataAllocatedResponse) error) error {
	start := time.Now()
	snaps, unlock, err := d.blockSnapshots(ctx, req.GetSnapshotId())
	if err != nil {
		return err
	}
	defer unlock()
	img, err := d.openSnapshotImage(snaps[0])
	if err != nil {
		return err
	}
	defer img.Close()
	size := img.Size()
	if err := offsetWithin(req.GetStartingOffset(), size); err != nil {
		return err
	}
	p := newPager(req.GetMaxResults(), func(b []*csi.BlockMetadata) error {
		return send(&csi.GetMetadataAllocatedResponse{BlockMetadataType: metadataType, VolumeCapacityBytes: size, BlockMetadata: b})
	})
	if err := img.Allocated(ctx, req.GetStartingOffset(), p.add); err != nil {
		return metadataError(p, "read the allocated blocks of snapshot "+req.GetSnapshotId(), err)
	}
	if err := p.finish(); err != nil {
		return err
	}
	klog.V(2).InfoS("Snapshot metadata: allocated blocks sent", "snapshotID", req.GetSnapshotId(), "from", req.GetStartingOffset(),
		"ranges", p.ranges, "bytes", p.bytes, "messages", p.messages, "duration", time.Since(start))
	return nil
}

func (d *hostpathDriver) getMetadataDelta(ctx context.Context, req *csi.GetMetadataDeltaRequest, send func(*csi.GetMetadataDeltaResponse) error) error {
	start := time.Now()
	baseID, targetID := req.GetBaseSnapshotId(), req.GetTargetSnapshotId()
	snaps, unlock, err := d.blockSnapshots(ctx, baseID, targetID)
	if err != nil {
		return err
	}
	defer unlock()
	base, target := snaps[0], snaps[1]
	if base.SourceVolumeID != target.SourceVolumeID {
		// The volumes are not named: the sidecar checks the caller's
		// access to the target only, and the base may be another tenant's.
		return status.Errorf(codes.InvalidArgument, "snapshots %.64s and %.64s are not of the same volume: a delta is between two snapshots of one volume",
			baseID, targetID)
	}
	if target.CreatedAt.Before(base.CreatedAt) {
		return status.Errorf(codes.InvalidArgument, "target snapshot %s (%s) was taken before base snapshot %s (%s): the base is the earlier one; swap them",
			targetID, target.CreatedAt.Format(time.RFC3339Nano), baseID, base.CreatedAt.Format(time.RFC3339Nano))
	}
	baseImg, err := d.openSnapshotImage(base)
	if err != nil {
		return err
	}
	defer baseImg.Close()
	targetImg, err := d.openSnapshotImage(target)
	if err != nil {
		return err
	}
	defer targetImg.Close()
	size := targetImg.Size()
	if err := offsetWithin(req.GetStartingOffset(), size); err != nil {
		return err
	}
	p := newPager(req.GetMaxResults(), func(b []*csi.BlockMetadata) error {
		return send(&csi.GetMetadataDeltaResponse{BlockMetadataType: metadataType, VolumeCapacityBytes: size, BlockMetadata: b})
	})
	st, err := targetImg.DeltaFrom(ctx, baseImg, req.GetStartingOffset(), p.add)
	if err != nil {
		return metadataError(p, "compare snapshots "+baseID+" and "+targetID, err)
	}
	if err := p.finish(); err != nil {
		return err
	}
	klog.V(2).InfoS("Snapshot metadata: changed blocks sent", "base", baseID, "target", targetID, "from", req.GetStartingOffset(),
		"ranges", p.ranges, "bytes", p.bytes, "messages", p.messages, "sharedBytes", st.SharedBytes, "bytesRead", st.BytesRead, "duration", time.Since(start))
	return nil
}

// blockSnapshots reads the ready snapshots ids of block or image volumes,
// held shared (a delete waits for the walk) until unlock.
func (d *hostpathDriver) blockSnapshots(ctx context.Context, ids ...string) ([]*state.Snapshot, func(), error) {
	var unlocks []func()
	unlock := func() {
		for _, u := range unlocks {
			u()
		}
	}
	seen := map[string]bool{}
	snaps := make([]*state.Snapshot, 0, len(ids))
	for _, id := range ids {
		snap, err := d.readySnapshot(id)
		if err != nil {
			unlock()
			return nil, nil, err
		}
		if k := kindOfSnapshot(snap); k.layout == LayoutDirectory {
			unlock()
			return nil, nil, notBlockSnapshot(id, "of a directory volume")
		}
		if !seen[id] {
			seen[id] = true
			u, err := d.rlock(ctx, "snap", id)
			if err != nil {
				unlock()
				return nil, nil, err
			}
			unlocks = append(unlocks, u)
			// Read again under the lock: a delete may have come first.
			if snap, err = d.readySnapshot(id); err != nil {
				unlock()
				return nil, nil, err
			}
		}
		snaps = append(snaps, snap)
	}
	return snaps, unlock, nil
}

func (d *hostpathDriver) openSnapshotImage(s *state.Snapshot) (*hostpath.SnapshotImage, error) {
	img, err := d.vols.OpenSnapshotImage(s.ID)
	if err != nil {
		return nil, diskError("open the data of snapshot "+s.ID, err)
	}
	return img, nil
}

// offsetWithin: a starting_offset past the capacity is OUT_OF_RANGE; one at
// the capacity (a resume after the last range) has nothing left to send.
func offsetWithin(offset, capacity int64) error {
	if offset > capacity {
		return status.Errorf(codes.OutOfRange, "starting_offset %d is past the snapshot's capacity of %d bytes", offset, capacity)
	}
	return nil
}

// metadataError is the status of a walk that failed: the caller's own
// cancellation or deadline as such, an error sending as it came (the
// stream is gone), anything else as a disk error.
func metadataError(p *pager, what string, err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case p.sendErr != nil && errors.Is(err, p.sendErr):
		return err
	}
	return diskError(what, err)
}

// pager sends ranges in messages of at most max tuples. The walks merge
// adjacent blocks before the pager sees them, so where a page ends never
// changes the ranges: pages concatenated are one unpaged answer.
type pager struct {
	max     int
	buf     []*csi.BlockMetadata
	send    func([]*csi.BlockMetadata) error
	sendErr error

	ranges, bytes, messages int64
}

func newPager(maxResults int32, send func([]*csi.BlockMetadata) error) *pager {
	n := int(maxResults)
	if n <= 0 {
		n = defaultMaxResults
	}
	// The spec lets a plugin send fewer than asked: a caller's huge
	// max_results would otherwise hold the whole answer in memory and send
	// it in one message larger than any client takes.
	n = min(n, maxPageResults)
	return &pager{max: n, send: send}
}

func (p *pager) add(r hostpath.Range) error {
	p.buf = append(p.buf, &csi.BlockMetadata{ByteOffset: r.Offset, SizeBytes: r.Length})
	p.ranges++
	p.bytes += r.Length
	if len(p.buf) < p.max {
		return nil
	}
	return p.flush()
}

func (p *pager) flush() error {
	p.messages++
	err := p.send(p.buf)
	p.buf = nil
	if err != nil {
		p.sendErr = err
	}
	return err
}

// finish sends what is left; a stream with no range at all still carries
// one message, which tells the caller the capacity and the style.
func (p *pager) finish() error {
	if len(p.buf) == 0 && p.messages > 0 {
		return nil
	}
	return p.flush()
}
