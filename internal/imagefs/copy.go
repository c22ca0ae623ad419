package imagefs

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
)

// Method names how an image was copied.
type Method string

const (
	// Reflink shares the image's blocks with the copy (FICLONE on xfs
	// with reflink=1 and btrfs): one metadata operation, no data written.
	Reflink Method = "reflink"
	// SparseCopy copies only the image's data extents (SEEK_DATA /
	// SEEK_HOLE with copy_file_range), so holes stay holes.
	SparseCopy Method = "sparse-copy"
)

// Snapshot copies the image img to dst (which must not exist) as one point
// in time. When the image is mounted at mountPath, its filesystem is frozen
// for the copy, so the copy is a clean filesystem even while a pod writes;
// with a reflink the freeze lasts milliseconds, with a sparse copy as long
// as the copy takes (writers wait, they do not fail). Pass "" as mountPath
// for an image that is not mounted.
func Snapshot(img, mountPath, dst string) (Method, error) {
	if mountPath == "" {
		return CopyImage(img, dst)
	}
	var m Method
	err := WithFrozen("", []string{mountPath}, func() error {
		var err error
		m, err = CopyImage(img, dst)
		return err
	})
	return m, err
}

// CopyImage copies the file src to dst, which must not exist, by reflink
// where the backing filesystem shares blocks and by a sparse copy elsewhere,
// and says which. The copy is fsync'd. On failure dst is removed.
func CopyImage(src, dst string) (m Method, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("open image: %w", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("stat image %s: %w", src, err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return "", fmt.Errorf("create image copy: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", dst, cerr)
		}
		if err != nil {
			_ = os.Remove(dst)
		}
	}()
	// A NOCOW image (see Allocate) gets a NOCOW copy: btrfs refuses a
	// reflink between a NOCOW file and a plain one.
	if nocow, _, err := btrfs.IsNoCOW(int(in.Fd())); err != nil {
		return "", fmt.Errorf("image %s: %w", src, err)
	} else if nocow {
		if err := btrfs.SetNoCOW(int(out.Fd())); err != nil {
			return "", fmt.Errorf("image copy %s: %w", dst, err)
		}
	}
	m = Reflink
	if cerr := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); cerr != nil {
		if !errors.Is(cerr, unix.EOPNOTSUPP) && !errors.Is(cerr, unix.EXDEV) && !errors.Is(cerr, unix.EINVAL) && !errors.Is(cerr, unix.ENOTTY) {
			return "", fmt.Errorf("reflink %s to %s: %w", src, dst, cerr)
		}
		m = SparseCopy
		if err := sparseCopy(in, out, fi.Size()); err != nil {
			return "", fmt.Errorf("copy %s to %s: %w", src, dst, err)
		}
	}
	if err := out.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", dst, err)
	}
	klog.V(2).InfoS("Copied image", "src", src, "dst", dst, "method", m, "bytes", fi.Size())
	return m, nil
}

// sparseCopy copies the data extents of in to the same offsets of out and
// sets out's size, leaving holes unallocated.
func sparseCopy(in, out *os.File, size int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		for roff, woff := data, data; roff < hole; {
			n, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(min(hole-roff, 1<<30)), 0)
			if err != nil {
				return fmt.Errorf("copy_file_range: %w", err)
			}
			if n == 0 {
				return io.ErrUnexpectedEOF // the source shrank under us
			}
		}
		off = hole
	}
	return out.Truncate(size)
}
