package hostpath

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/extents"
)

// Range is a byte range of a volume (see internal/extents).
type Range = extents.Range

// DeltaStats says what a comparison of two snapshots cost.
type DeltaStats = extents.Stats

// MetadataBlockSize is the granularity of the ranges OpenSnapshotImage's
// walks report: the sector size of a block volume's loop device.
const MetadataBlockSize = extents.BlockSize

// SnapshotImage is the open file of a snapshot of an image or block volume
// (snapshots/<id>/disk.img), for the changed block tracking walks.
type SnapshotImage struct {
	fd   int
	file extents.File
}

// OpenSnapshotImage opens the image file of snapshot id (validated by the
// caller) read-only, through the snapshot's directory and only if it is a
// regular file (see beneath.OpenFile). The caller closes it.
func (b *Backend) OpenSnapshotImage(id string) (*SnapshotImage, error) {
	dir, err := beneath.OpenRoot(b.SnapshotPath(id))
	if err != nil {
		return nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	defer dir.Close()
	fd, st, err := dir.OpenFile(imageName)
	if err != nil {
		return nil, fmt.Errorf("open the image of snapshot %s: %w", id, err)
	}
	dev := unix.Mkdev(st.Dev_major, st.Dev_minor)
	return &SnapshotImage{fd: fd, file: extents.File{Fd: fd, Size: int64(st.Size), Dev: dev}}, nil
}

// Size is the snapshot's size: its volume's capacity when it was taken.
func (s *SnapshotImage) Size() int64 { return s.file.Size }

// Close closes the file.
func (s *SnapshotImage) Close() error { return unix.Close(s.fd) }

// Allocated calls emit with the ranges of the snapshot that hold data, from
// the block holding from on (see extents.Allocated).
func (s *SnapshotImage) Allocated(ctx context.Context, from int64, emit func(Range) error) error {
	return extents.Allocated(ctx, s.fd, s.file.Size, from, emit)
}

// DeltaFrom calls emit with the ranges of s that differ from base, an
// earlier snapshot of the same volume (see extents.Delta).
func (s *SnapshotImage) DeltaFrom(ctx context.Context, base *SnapshotImage, from int64, emit func(Range) error) (DeltaStats, error) {
	return extents.Delta(ctx, base.file, s.file, from, emit)
}
