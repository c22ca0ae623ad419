// Package extents answers, from a file's extent map, which byte ranges of a
// block or image volume's file hold data (Allocated) and which differ
// between two snapshots of it (Delta): the changed block tracking of the CSI
// SnapshotMetadata service. It works on open file descriptors only (the
// caller opens the snapshots' files through internal/beneath) and knows
// nothing of gRPC.
//
// Ranges are reported in whole blocks of BlockSize bytes (the sector size of
// a block volume's loop device; the last one ends at the file's size where
// that is not a whole block), in increasing order, never overlapping, and
// adjacent blocks merged into one range: the same answer whichever offset a
// walk starts from, so a caller that resumes at the end of what it received
// gets the rest of one answer.
package extents

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockSize is the granularity of every range: a block volume's loop device
// has 4096-byte sectors, and xfs, btrfs and ext4 data filesystems map their
// files in blocks of at most that.
const BlockSize = 4096

// Range is a byte range of a volume: [Offset, Offset+Length).
type Range struct {
	Offset, Length int64
}

// End is the first byte after the range.
func (r Range) End() int64 { return r.Offset + r.Length }

// Stats says what a Delta cost.
type Stats struct {
	// BytesRead is what was read from both files to compare ranges the
	// extent maps could not decide.
	BytesRead int64
	// SharedBytes is what the extent maps showed to be the same blocks on
	// disk in both files (decided without reading).
	SharedBytes int64
}

// From linux/fiemap.h and linux/fs.h.
const (
	fsIocFiemap = 0xc020660b // _IOWR('f', 11, struct fiemap)
	fiemapSync  = 0x1        // FIEMAP_FLAG_SYNC: write dirty pages back first

	extentLast      = 0x1
	extentUnknown   = 0x2 // data location unknown
	extentDelalloc  = 0x4 // location still pending (UNKNOWN is set too)
	extentEncoded   = 0x8 // compressed or otherwise encoded: physical is no byte address
	extentEncrypted = 0x80
	extentUnaligned = 0x100 // NOT_ALIGNED
	extentInline    = 0x200 // DATA_INLINE: in the metadata
	extentTail      = 0x400 // DATA_TAIL: packed with other files' tails
	extentUnwritten = 0x800 // allocated, reads as zeros

	// unsure: flags under which the physical address says nothing about
	// whether two files hold the same bytes.
	unsure = extentUnknown | extentDelalloc | extentEncoded | extentEncrypted | extentUnaligned | extentInline | extentTail

	fiemapBatch = 256
)

type fiemapHeader struct {
	start, length                        uint64
	flags, mapped, extentCount, reserved uint32
}

type fiemapExtent struct {
	logical, physical, length uint64
	_                         [2]uint64
	flags                     uint32
	_                         [3]uint32
}

type fiemapBuf struct {
	h       fiemapHeader
	extents [fiemapBatch]fiemapExtent
}

// ErrNoExtentMap is what the extent reader says of a filesystem without
// FIEMAP; Allocated then walks SEEK_DATA/SEEK_HOLE, and Delta compares the
// data ranges byte by byte.
var ErrNoExtentMap = errors.New("the filesystem keeps no extent map (FIEMAP)")

// extent is a piece of a file's map: data at physical (when !zero), or a
// range that reads as zeros (a hole, or an unwritten extent).
type extent struct {
	logical, length int64
	physical        int64
	zero            bool
	// unsure: the physical address cannot tell whether another file's
	// extent holds the same bytes (see the flags in unsure).
	unsure bool
}

func (e extent) end() int64 { return e.logical + e.length }

// mapReader yields a file's extents in order from an offset, holes filled
// in, up to size; it reads the kernel's map a batch at a time.
type mapReader struct {
	fd      int
	size    int64
	next    int64 // where the next kernel call starts
	batch   Batch
	pending []extent
	pos     int64 // the end of what was yielded
	done    bool  // the kernel has no extent past next
	calls   int
}

func newMapReader(fd int, size, from int64) *mapReader {
	return &mapReader{fd: fd, size: size, next: from, pos: from}
}

// Extent is one entry of a file's extent map, as FIEMAP gives it.
type Extent struct {
	Logical, Physical, Length uint64
	Flags                     uint32
}

// Flags of an Extent (linux/fiemap.h).
const (
	FlagLast   = extentLast
	FlagShared = 0x2000 // FIEMAP_EXTENT_SHARED: shared with another file
)

// Batch reads a file's extent map one kernel batch at a time, into a
// buffer it keeps for the next call.
type Batch struct{ buf fiemapBuf }

// Read asks the kernel (FS_IOC_FIEMAP) for the extents of fd that overlap
// [start, start+length), at most one batch of them, and says how many it
// read (At gives each, until the next Read). sync writes back dirty pages first, so that delayed
// allocations have addresses. A filesystem without an extent map is
// ErrNoExtentMap.
func (b *Batch) Read(fd int, start, length uint64, sync bool) (int, error) {
	b.buf.h = fiemapHeader{start: start, length: length, extentCount: fiemapBatch}
	if sync {
		b.buf.h.flags = fiemapSync
	}
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFiemap, uintptr(unsafe.Pointer(&b.buf)))
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EOPNOTSUPP || errno == unix.ENOTTY {
			return 0, ErrNoExtentMap
		}
		if errno != 0 {
			return 0, fmt.Errorf("FS_IOC_FIEMAP: %w", errno)
		}
		return int(b.buf.h.mapped), nil
	}
}

// At is the i-th extent of the last Read.
func (b *Batch) At(i int) Extent {
	e := b.buf.extents[i]
	return Extent{Logical: e.logical, Physical: e.physical, Length: e.length, Flags: e.flags}
}

// fill asks the kernel for the next batch of extents.
func (m *mapReader) fill() error {
	if m.done || m.next >= m.size {
		m.done = true
		return nil
	}
	m.calls++
	n, err := m.batch.Read(m.fd, uint64(m.next), uint64(m.size-m.next), true)
	if err != nil {
		return err
	}
	if n == 0 {
		m.done = true
		return nil
	}
	for _, e := range m.batch.buf.extents[:n] {
		x := extent{logical: int64(e.logical), length: int64(e.length), physical: int64(e.physical),
			zero: e.flags&extentUnwritten != 0 && e.flags&unsure == 0, unsure: e.flags&unsure != 0}
		if x.end() > m.next {
			m.next = x.end()
		}
		m.pending = append(m.pending, x)
		if e.flags&extentLast != 0 {
			m.done = true
		}
	}
	return nil
}

// at returns the extent that covers pos (a hole up to the next extent, or to
// size), clipped to start at pos. ok is false at size.
func (m *mapReader) at(pos int64) (extent, bool, error) {
	for {
		if pos >= m.size {
			return extent{}, false, nil
		}
		for len(m.pending) > 0 && m.pending[0].end() <= pos {
			m.pending = m.pending[1:]
		}
		if len(m.pending) == 0 && !m.done {
			if err := m.fill(); err != nil {
				return extent{}, false, err
			}
			continue
		}
		if len(m.pending) == 0 || m.pending[0].logical > pos {
			end := m.size
			if len(m.pending) > 0 {
				end = min(end, m.pending[0].logical)
			}
			return extent{logical: pos, length: end - pos, zero: true}, true, nil
		}
		e := m.pending[0]
		skip := pos - e.logical
		e.logical, e.length = pos, min(e.length-skip, m.size-pos)
		if !e.zero {
			e.physical += skip
		}
		return e, true, nil
	}
}

// merger merges adjacent and overlapping block-aligned ranges before
// handing them on, and drops what ends at or before from.
type merger struct {
	from    int64
	limit   int64 // ranges are clipped to it (the file's size)
	pending Range
	emit    func(Range) error
}

func (g *merger) add(off, end int64) error {
	off, end = alignDown(off), min(alignUp(end), g.limit)
	if end <= g.from || end <= off {
		return nil
	}
	if g.pending.Length > 0 && off <= g.pending.End() {
		if end > g.pending.End() {
			g.pending.Length = end - g.pending.Offset
		}
		return nil
	}
	if err := g.flush(); err != nil {
		return err
	}
	g.pending = Range{Offset: off, Length: end - off}
	return nil
}

func (g *merger) flush() error {
	if g.pending.Length == 0 {
		return nil
	}
	r := g.pending
	g.pending = Range{}
	return g.emit(r)
}

func alignDown(n int64) int64 { return n &^ (BlockSize - 1) }
func alignUp(n int64) int64   { return (n + BlockSize - 1) &^ (BlockSize - 1) }

// Allocated calls emit with the ranges of the file fd (size bytes long) that
// hold data, from the block that holds from on. Preallocated (unwritten)
// extents read as zeros and were never written: they are left out. The
// extent map is read a batch at a time, so the cost grows with the number
// of extents, not with the size; where the filesystem has no extent map the
// walk is SEEK_DATA/SEEK_HOLE, which may count preallocated blocks as data
// (btrfs does), a superset that is never wrong for a backup.
func Allocated(ctx context.Context, fd int, size, from int64, emit func(Range) error) error {
	g := &merger{from: from, limit: size, emit: emit}
	m := newMapReader(fd, size, alignDown(from))
	for pos := alignDown(from); ; {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, ok, err := m.at(pos)
		if errors.Is(err, ErrNoExtentMap) {
			return seekAllocated(ctx, fd, size, pos, g)
		}
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if !e.zero {
			if err := g.add(e.logical, e.end()); err != nil {
				return err
			}
		}
		pos = e.end()
	}
	return g.flush()
}

// seekAllocated walks the data segments with SEEK_DATA/SEEK_HOLE.
func seekAllocated(ctx context.Context, fd int, size, pos int64, g *merger) error {
	for pos < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		hole = min(hole, size)
		if err := g.add(data, hole); err != nil {
			return err
		}
		pos = hole
	}
	return g.flush()
}

// Files are the two snapshots Delta compares: descriptors, sizes, and the
// device each is on (physical addresses compare only on one device).
type File struct {
	Fd   int
	Size int64
	Dev  uint64
}

// Delta calls emit with the ranges of target that differ from base, from
// the block that holds from on, up to target's size (a base shorter than
// target reads as zeros past its end).
//
// It reads both files' extent maps (FIEMAP, after the kernel wrote dirty
// pages back, so no extent is pending) side by side: where both read as
// zeros (holes, unwritten extents) nothing changed; where both map the same
// byte on the same device to the same physical address, the blocks are the
// same blocks (a reflink or btrfs snapshot shares them) and nothing changed.
// A shared-extent flag alone would not say shared with which file, so it is
// never used. Everything else (extents that are not shared, and those whose
// address means nothing: unknown, delayed, encoded, inline or unaligned
// data) is read from both and compared block by block; only the blocks that
// differ are reported. Where a filesystem keeps no extent map, every block
// is compared, the ranges that are holes in both skipped (SEEK_DATA).
func Delta(ctx context.Context, base, target File, from int64, emit func(Range) error) (Stats, error) {
	d := &delta{ctx: ctx, base: base, target: target, g: &merger{from: from, limit: target.Size, emit: emit}}
	start := alignDown(from)
	err := d.byMaps(start)
	if errors.Is(err, ErrNoExtentMap) {
		err = d.bySeek(start)
	}
	if err != nil {
		return d.st, err
	}
	return d.st, d.g.flush()
}

type delta struct {
	ctx          context.Context
	base, target File
	g            *merger
	st           Stats
	bufA, bufB   []byte
}

func (d *delta) byMaps(pos int64) error {
	mb := newMapReader(d.base.Fd, d.base.Size, pos)
	mt := newMapReader(d.target.Fd, d.target.Size, pos)
	sameDev := d.base.Dev == d.target.Dev
	for pos < d.target.Size {
		if err := d.ctx.Err(); err != nil {
			return err
		}
		t, _, err := mt.at(pos)
		if err != nil {
			return err
		}
		b, ok, err := mb.at(pos)
		if err != nil {
			return err
		}
		if !ok { // past base's end: zeros
			b = extent{logical: pos, length: t.length, zero: true}
		}
		end := min(t.end(), b.end())
		switch {
		case t.zero && b.zero:
		case sameDev && !t.zero && !b.zero && !t.unsure && !b.unsure && t.physical == b.physical:
			d.st.SharedBytes += end - pos
		default:
			if err := d.compare(pos, end, b.zero, t.zero); err != nil {
				return err
			}
		}
		pos = end
	}
	return nil
}

// bySeek compares every range that is data in either file.
func (d *delta) bySeek(pos int64) error {
	for pos < d.target.Size {
		next, err := nextData(d.target.Fd, pos, d.target.Size)
		if err != nil {
			return err
		}
		if pos < d.base.Size {
			nb, err := nextData(d.base.Fd, pos, d.base.Size)
			if err != nil {
				return err
			}
			next = min(next, nb)
		}
		if next >= d.target.Size {
			return nil
		}
		// Compare from there to the end of the data in either file.
		end, err := dataEnd(d.target.Fd, next, d.target.Size)
		if err != nil {
			return err
		}
		if next < d.base.Size {
			eb, err := dataEnd(d.base.Fd, next, d.base.Size)
			if err != nil {
				return err
			}
			end = max(end, min(eb, d.target.Size))
		}
		if err := d.compare(next, end, false, false); err != nil {
			return err
		}
		pos = end
	}
	return nil
}

// nextData is where the next data at or after pos starts (size for none).
func nextData(fd int, pos, size int64) (int64, error) {
	n, err := unix.Seek(fd, pos, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return size, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seek data: %w", err)
	}
	return min(n, size), nil
}

// dataEnd is where the data that holds pos ends (pos itself in a hole).
func dataEnd(fd int, pos, size int64) (int64, error) {
	n, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
	if errors.Is(err, unix.ENXIO) {
		return pos, nil
	}
	if err != nil {
		return 0, fmt.Errorf("seek hole: %w", err)
	}
	return min(n, size), nil
}

// compareChunk is what one read of each file takes.
const compareChunk = 1 << 20

// compare reads [off, end) of both files (whole blocks; a side known to read
// as zeros is not read) and reports the blocks that differ.
func (d *delta) compare(off, end int64, baseZero, targetZero bool) error {
	if alignDown(off) != off || alignUp(end) != end {
		// The whole blocks reach past [off, end), where what a side holds
		// is not what its flag says (a file's end inside a block, before
		// the file grew): read both.
		baseZero, targetZero = false, false
	}
	off, end = alignDown(off), min(alignUp(end), alignUp(d.target.Size))
	if d.bufA == nil {
		d.bufA, d.bufB = make([]byte, compareChunk), make([]byte, compareChunk)
	}
	for off < end {
		if err := d.ctx.Err(); err != nil {
			return err
		}
		n := min(int64(compareChunk), end-off)
		a, b := d.bufA[:n], d.bufB[:n]
		if err := d.read(d.base, baseZero, a, off); err != nil {
			return fmt.Errorf("read base snapshot at %d: %w", off, err)
		}
		if err := d.read(d.target, targetZero, b, off); err != nil {
			return fmt.Errorf("read target snapshot at %d: %w", off, err)
		}
		for i := int64(0); i < n; i += BlockSize {
			j := min(i+BlockSize, n)
			if !bytes.Equal(a[i:j], b[i:j]) {
				if err := d.g.add(off+i, off+j); err != nil {
					return err
				}
			}
		}
		off += n
	}
	return nil
}

// read fills buf from f at off: zeros past f's end, or for a side known to
// read as zeros.
func (d *delta) read(f File, zero bool, buf []byte, off int64) error {
	clear(buf)
	if zero || off >= f.Size {
		return nil
	}
	want := buf[:min(int64(len(buf)), f.Size-off)]
	for done := 0; done < len(want); {
		n, err := unix.Pread(f.Fd, want[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("file ends at %d, before its size %d", off+int64(done), f.Size)
		}
		d.st.BytesRead += int64(n)
		done += n
	}
	return nil
}
