package treestream

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/xattrs"
)

// SendOptions tune Send. The zero value sends at the caller's priority.
type SendOptions struct {
	// Nice runs the walk and reads at this nice value (1..19) on a thread
	// of their own that is discarded afterwards.
	Nice int
}

// Send walks the tree at src (opened by the caller with beneath.OpenRoot;
// the caller closes it) and writes it to w. Entries that vanish or change
// type while they are read are left out; a mount inside src fails the send
// (beneath.ErrMountInside). On error the stream has no trailer, so a
// receiver fails too. Cancelling ctx stops Send between records and, where
// w is an io.PipeWriter (closed with the cause) or has SetWriteDeadline (a
// net.Conn), during a blocked write.
func Send(ctx context.Context, src *beneath.Dir, w io.Writer, opts SendOptions) (Stats, error) {
	s := &sender{ctx: ctx, h: sha256.New(), seen: map[inode]uint64{}}
	s.bw = bufio.NewWriterSize(w, 256<<10)
	stop := unblockOnCancel(ctx, w, false)
	defer stop()
	var err error
	niced(opts.Nice, func() { err = s.run(src) })
	if err == nil {
		err = s.bw.Flush()
		if err != nil {
			err = fmt.Errorf("write tree stream: %w", err)
		}
	}
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return s.stats, err
}

type inode struct{ dev, ino uint64 }

type sender struct {
	ctx   context.Context
	bw    *bufio.Writer
	h     hash.Hash
	werr  error
	rec   []byte // scratch for one record
	buf   []byte // data chunk: record header, offset, bytes
	seen  map[inode]uint64
	links uint64 // linkable entries sent so far: the next one's id
	stats Stats
}

func (s *sender) run(src *beneath.Dir) error {
	s.write([]byte(magic))
	s.write(binary.BigEndian.AppendUint16(nil, version))
	if err := beneath.Walk(src, s.visit, beneath.WalkOptions{Leave: s.leave}); err != nil {
		return err
	}
	if err := s.ctx.Err(); err != nil {
		return err
	}
	rec := s.start(recTrailer)
	rec = s.stats.put(rec)
	s.finish(rec)
	if s.werr != nil {
		return s.werr
	}
	// The hash covers every byte before it, the trailer's counts included.
	_, err := s.bw.Write(s.h.Sum(nil))
	if err != nil {
		return fmt.Errorf("write tree stream: %w", err)
	}
	return nil
}

func (s *sender) write(p []byte) {
	if s.werr != nil {
		return
	}
	s.h.Write(p)
	if _, err := s.bw.Write(p); err != nil {
		s.werr = fmt.Errorf("write tree stream: %w", err)
	}
}

// start begins a record in the scratch buffer; finish fills in its length
// and writes it.
func (s *sender) start(typ byte) []byte {
	return append(s.rec[:0], typ, 0, 0, 0, 0)
}

func (s *sender) finish(rec []byte) {
	binary.BigEndian.PutUint32(rec[1:5], uint32(len(rec)-recHdrLen))
	rec = binary.BigEndian.AppendUint32(rec, crc32.Checksum(rec, castagnoli))
	s.write(rec)
	s.rec = rec[:0]
}

func (s *sender) entry(typ byte, name string, m meta) []byte {
	rec := s.start(typ)
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(name)))
	rec = append(rec, name...)
	return m.put(rec)
}

func (s *sender) end() {
	s.finish(s.start(recEnd))
}

func (s *sender) xattrs(src xattrs.Source, keep func(string) bool) error {
	return xattrs.Each(src, keep, func(name string, val []byte) error {
		if len(name) > maxName || len(val) > maxXattr {
			return fmt.Errorf("xattr %q of %d bytes is beyond the stream's bounds", name, len(val))
		}
		rec := s.start(recXattr)
		rec = append(rec, byte(len(name)))
		rec = append(rec, name...)
		rec = append(rec, val...)
		s.finish(rec)
		return s.werr
	})
}

func (s *sender) visit(e *beneath.Entry) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if s.werr != nil {
		return s.werr
	}
	st := &e.Stat
	if e.IsDir() {
		s.finish(s.entry(recDir, e.Name, metaOf(st)))
		if err := s.xattrs(xattrs.Fd(e.Dir.Fd()), func(n string) bool { return n != xattrs.DefaultACL }); err != nil {
			return fmt.Errorf("xattrs of %s: %w", e.Dir.Path(), err)
		}
		s.end()
		s.stats.Dirs++
		return s.werr
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		target, err := e.Parent.Readlink(e.Name)
		if beneath.Gone(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(target) > maxTarget {
			return fmt.Errorf("symlink %s/%s: a target of %d bytes", e.Parent.Path(), e.Name, len(target))
		}
		rec := s.entry(recSymlink, e.Name, metaOf(st))
		rec = binary.BigEndian.AppendUint16(rec, uint16(len(target)))
		rec = append(rec, target...)
		s.finish(rec)
		if err := s.pathXattrs(e); err != nil {
			return err
		}
		s.end()
		s.stats.Symlinks++
		return s.werr
	case unix.S_IFREG:
		return s.file(e)
	}
	// FIFO, socket, character or block device.
	if s.linked(e.Name, st) {
		return s.werr
	}
	rec := s.entry(recSpecial, e.Name, metaOf(st))
	rec = binary.BigEndian.AppendUint64(rec, unix.Mkdev(st.Rdev_major, st.Rdev_minor))
	rec = append(rec, s.linkable(st))
	s.finish(rec)
	if err := s.pathXattrs(e); err != nil {
		return err
	}
	s.end()
	s.stats.Specials++
	return s.werr
}

// linked sends name as a hard link if its inode was sent already.
func (s *sender) linked(name string, st *unix.Statx_t) bool {
	if st.Nlink < 2 {
		return false
	}
	id, ok := s.seen[inode{unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino}]
	if !ok {
		return false
	}
	rec := s.start(recLink)
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(name)))
	rec = append(rec, name...)
	rec = binary.BigEndian.AppendUint64(rec, id)
	s.finish(rec)
	s.stats.HardLinks++
	return true
}

// linkable gives the entry being sent the next link id if other names may
// link to it, and says so in its header.
func (s *sender) linkable(st *unix.Statx_t) byte {
	if st.Nlink < 2 {
		return 0
	}
	s.seen[inode{unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino}] = s.links
	s.links++
	return 1
}

// pathXattrs sends the xattrs of a symlink or special file, read by name
// relative to its directory; one gone since it was listed has none.
func (s *sender) pathXattrs(e *beneath.Entry) error {
	p, err := e.Parent.XattrPath(e.Name)
	if err != nil {
		return err
	}
	err = s.xattrs(xattrs.Path(p), nil)
	if beneath.Gone(err) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("xattrs of %s/%s: %w", e.Parent.Path(), e.Name, err)
	}
	return nil
}

// leave closes the directory's records with its default ACL.
func (s *sender) leave(e *beneath.Entry) error {
	acl, err := xattrs.Get(xattrs.Fd(e.Dir.Fd()), xattrs.DefaultACL)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		acl, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("default ACL of %s: %w", e.Dir.Path(), err)
	}
	rec := s.start(recLeave)
	s.finish(append(rec, acl...))
	return s.werr
}

// file sends a regular file: opened only if it still is one, its metadata
// as opened, its data segments up to the size it had then (or less, if it
// shrinks meanwhile), its final size, its xattrs.
func (s *sender) file(e *beneath.Entry) error {
	fd, st, err := e.Parent.OpenFile(e.Name)
	if beneath.Gone(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if s.linked(e.Name, &st) {
		return s.werr
	}
	rec := s.entry(recFile, e.Name, metaOf(&st))
	rec = append(rec, s.linkable(&st))
	s.finish(rec)
	size, err := s.data(fd, int64(st.Size))
	if err != nil {
		return fmt.Errorf("read %s/%s: %w", e.Parent.Path(), e.Name, err)
	}
	rec = s.start(recSize)
	s.finish(binary.BigEndian.AppendUint64(rec, uint64(size)))
	if err := s.xattrs(xattrs.Fd(fd), nil); err != nil {
		return fmt.Errorf("xattrs of %s/%s: %w", e.Parent.Path(), e.Name, err)
	}
	s.end()
	s.stats.Files++
	s.stats.Bytes += size
	return s.werr
}

// data sends the data segments of fd below size and returns the size the
// copy is to have.
func (s *sender) data(fd int, size int64) (int64, error) {
	const hdr = recHdrLen + 8
	if s.buf == nil {
		s.buf = make([]byte, hdr+ChunkSize+crcLen)
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left, or it shrank to off
		}
		if err != nil {
			return 0, fmt.Errorf("seek data: %w", err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if errors.Is(err, unix.ENXIO) {
			return data, nil // truncated below data meanwhile
		}
		if err != nil {
			return 0, fmt.Errorf("seek hole: %w", err)
		}
		hole = min(hole, size)
		for data < hole {
			if err := s.ctx.Err(); err != nil {
				return 0, err
			}
			n, err := unix.Pread(fd, s.buf[hdr:hdr+int(min(hole-data, ChunkSize))], data)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("pread: %w", err)
			}
			if n == 0 {
				// Truncated while it is read: the copy is the file as it
				// was cut, as one read a moment later would be.
				return data, nil
			}
			b := s.buf[:hdr+n]
			b[0] = recData
			binary.BigEndian.PutUint32(b[1:5], uint32(8+n))
			binary.BigEndian.PutUint64(b[5:13], uint64(data))
			s.write(binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)))
			if s.werr != nil {
				return 0, s.werr
			}
			s.stats.DataBytes += int64(n)
			data += int64(n)
		}
		off = hole
	}
	return size, nil
}
