package copytree

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/pkg/beneath"
)

// Order matters in both functions below: chown clears setuid/setgid and
// file capabilities, so the mode and xattrs come after it, and times come
// last.

// setMetaFd gives the open copy fd (a regular file or a directory) the
// owner, mode, extended attributes and times of st.
func setMetaFd(fd int, shown string, st *unix.Statx_t, xattrs []xattr) error {
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", shown, err)
	}
	if err := unix.Fchmod(fd, uint32(st.Mode)&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", shown, err)
	}
	for _, x := range xattrs {
		if err := unix.Fsetxattr(fd, x.name, x.value, 0); err != nil {
			return fmt.Errorf("set xattr %s on %s: %w", x.name, shown, err)
		}
	}
	if err := beneath.Futimens(fd, timespec(st.Atime), timespec(st.Mtime)); err != nil {
		return fmt.Errorf("set times of %s: %w", shown, err)
	}
	return nil
}

// setMetaAt does the same for a symlink or special file, which cannot be
// opened: by name relative to the directories, never following the name.
func setMetaAt(srcDir, dstDir *beneath.Dir, name string, st *unix.Statx_t) error {
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if err := dstDir.Lchown(name, st.Uid, st.Gid); err != nil {
		return err
	}
	if !isLink { // a symlink's own mode is always 0777 on Linux
		if err := dstDir.Chmod(name, uint32(st.Mode)&0o7777); err != nil {
			return err
		}
	}
	from, err := srcDir.XattrPath(name)
	if err != nil {
		return err
	}
	xattrs, err := readXattrs(pathXattrs(from))
	if beneath.Gone(err) {
		xattrs = nil // the source went away after it was copied
	} else if err != nil {
		return fmt.Errorf("read xattrs of %s/%s: %w", srcDir.Path(), name, err)
	}
	if len(xattrs) > 0 {
		to, err := dstDir.XattrPath(name)
		if err != nil {
			return err
		}
		for _, x := range xattrs {
			if err := unix.Lsetxattr(to, x.name, x.value, 0); err != nil {
				if isLink && errors.Is(err, unix.EPERM) {
					continue // user.* xattrs cannot exist on symlinks anyway
				}
				return fmt.Errorf("set xattr %s on %s/%s: %w", x.name, dstDir.Path(), name, err)
			}
		}
	}
	return dstDir.Lutimes(name, timespec(st.Atime), timespec(st.Mtime))
}

func timespec(t unix.StatxTimestamp) unix.Timespec {
	return unix.Timespec{Sec: t.Sec, Nsec: int64(t.Nsec)}
}

type xattr struct {
	name  string
	value []byte
}

// xattrSource reads one entry's extended attributes: by descriptor, or by
// path for what cannot be opened.
type xattrSource struct {
	list func(buf []byte) (int, error)
	get  func(name string, buf []byte) (int, error)
}

func fdXattrs(fd int) xattrSource {
	return xattrSource{
		list: func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) },
	}
}

func pathXattrs(path string) xattrSource {
	return xattrSource{
		list: func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) },
	}
}

// readXattrs returns all extended attributes; none where the filesystem
// has none. Asking the size first costs one call for the usual entry with
// no attributes and allocates nothing for it.
func readXattrs(src xattrSource) ([]xattr, error) {
	var names []byte
	for {
		n, err := src.list(nil)
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, nil
		}
		names = make([]byte, n)
		n, err = src.list(names)
		if errors.Is(err, unix.ERANGE) {
			continue // grew in between
		}
		if err != nil {
			return nil, err
		}
		names = names[:n]
		break
	}
	var out []xattr
	for _, name := range splitNUL(names) {
		val, err := getXattr(src, string(name))
		if errors.Is(err, unix.ENODATA) {
			continue // removed in between
		}
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		out = append(out, xattr{name: string(name), value: val})
	}
	return out, nil
}

func getXattr(src xattrSource, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := src.get(name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func splitNUL(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		i := slices.Index(b, 0)
		if i < 0 {
			i = len(b)
		}
		if i > 0 {
			out = append(out, b[:i])
		}
		b = b[min(i+1, len(b)):]
	}
	return out
}
