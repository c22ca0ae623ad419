package copytree

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/xattrs"
)

// copyFile copies one regular file: data by reflink or in-kernel copy, then
// owner, mode, xattrs and times on the open copy. The source is opened
// relative to its directory and only if it is still a regular file: a file
// swapped for a symlink, FIFO or device node since the walk saw it is left
// out like a removed one.
func (c *copier) copyFile(j fileJob) error {
	defer j.release()
	in, st, err := j.src.OpenFile(j.name)
	if beneath.Gone(err) {
		return nil // removed or replaced since the walk saw it
	}
	if err != nil {
		return err
	}
	defer unix.Close(in)
	out, err := j.dst.Create(j.name, 0o600)
	if err != nil {
		return err
	}
	shown := j.dst.Path() + "/" + j.name
	err = c.fillFile(in, out, &st, j.src.Path()+"/"+j.name, shown)
	if cerr := unix.Close(out); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", shown, cerr)
	}
	return err
}

func (c *copier) fillFile(in, out int, st *unix.Statx_t, from, to string) error {
	size := int64(st.Size)
	// A NOCOW file (a btrfs image or block volume's file, or a tenant's
	// database) stays NOCOW: btrfs keeps the flag only on an empty file, so
	// it is set before the data, and a reflink between a NOCOW file and a
	// plain one is refused.
	if nocow, _, err := btrfs.IsNoCOW(in); err != nil {
		return fmt.Errorf("%s: %w", from, err)
	} else if nocow {
		if err := btrfs.SetNoCOW(out); err != nil {
			return fmt.Errorf("%s: %w", to, err)
		}
	}
	cloned := false
	if !c.opts.NoReflink && size > 0 {
		cloned = unix.IoctlFileClone(out, in) == nil
	}
	if !cloned {
		if err := copyData(in, out, size); err != nil {
			return fmt.Errorf("copy %s: %w", from, err)
		}
	}
	if size > 0 {
		if cloned {
			atomic.AddInt64(&c.stats.Reflinked, 1)
		} else {
			atomic.AddInt64(&c.stats.Copied, 1)
		}
	}
	return setMetaFd(out, to, st, func(fd int) error { return copyXattrs(xattrs.Fd(in), setOnFd(fd), nil) })
}

// copyData copies only the data segments of in (SEEK_DATA/SEEK_HOLE) with
// copy_file_range, so holes stay holes, and sets the size for a trailing hole.
func copyData(ifd, ofd int, size int64) error {
	for off := int64(0); off < size; {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if errors.Is(err, unix.ENXIO) {
			return unix.Ftruncate(ofd, data) // truncated below data meanwhile
		}
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		for data < hole {
			roff, woff := data, data
			n, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(min(hole-data, 1<<30)), 0)
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
				// Some filesystem pairs refuse an in-kernel copy.
				n, err = copyRange(ifd, ofd, data, hole-data)
			}
			if err != nil {
				return fmt.Errorf("copy_file_range: %w", err)
			}
			if n == 0 {
				// Truncated while it is copied (logrotate's copytruncate,
				// a database resetting its log): the copy is the file as
				// it was cut, as a copy taken a moment later would be.
				return unix.Ftruncate(ofd, data)
			}
			data += int64(n)
		}
		off = hole
	}
	return unix.Ftruncate(ofd, size)
}

// copyRange copies [off, off+n) with pread/pwrite, for when the kernel
// cannot copy between the two files.
func copyRange(ifd, ofd int, off, n int64) (int, error) {
	buf := make([]byte, min(n, 1<<20))
	done := 0
	for int64(done) < n {
		r, err := unix.Pread(ifd, buf[:min(int64(len(buf)), n-int64(done))], off+int64(done))
		if err != nil {
			return done, err
		}
		if r == 0 {
			break
		}
		if _, err := unix.Pwrite(ofd, buf[:r], off+int64(done)); err != nil {
			return done, err
		}
		done += r
	}
	return done, nil
}
