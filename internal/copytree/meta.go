package copytree

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/xattrs"
)

// Order matters in both functions below: chown clears setuid/setgid and
// file capabilities, so the mode and xattrs come after it, and times come
// last.

// setMetaFd gives the open copy fd (a regular file or a directory) the
// owner, mode, extended attributes (what setXattrs sets) and times of st.
func setMetaFd(fd int, shown string, st *unix.Statx_t, setXattrs func(fd int) error) error {
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", shown, err)
	}
	if err := unix.Fchmod(fd, uint32(st.Mode)&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", shown, err)
	}
	if err := setXattrs(fd); err != nil {
		return fmt.Errorf("copy xattrs to %s: %w", shown, err)
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
	to, err := dstDir.XattrPath(name)
	if err != nil {
		return err
	}
	err = copyXattrs(xattrs.Path(from), func(n string, v []byte) error {
		err := unix.Lsetxattr(to, n, v, 0)
		if isLink && errors.Is(err, unix.EPERM) {
			return nil // user.* xattrs cannot exist on symlinks anyway
		}
		return err
	}, nil)
	if beneath.Gone(err) {
		err = nil // the source went away after it was copied
	}
	if err != nil {
		return fmt.Errorf("copy xattrs of %s/%s: %w", srcDir.Path(), name, err)
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

// copyXattrs hands set each extended attribute of src that keep accepts
// (all with a nil keep), one at a time: a value lives only while it is
// copied, so a tenant's thousands of 64 KiB attributes never sit in memory
// together. set must not keep the value.
func copyXattrs(src xattrs.Source, set func(name string, value []byte) error, keep func(string) bool) error {
	return xattrs.Each(src, keep, func(name string, val []byte) error {
		if err := set(name, val); err != nil {
			if name == nfs4ACL && errors.Is(err, unix.EOPNOTSUPP) {
				return nil // see nfs4ACL
			}
			return fmt.Errorf("set xattr %s: %w", name, err)
		}
		return nil
	})
}

// nfs4ACL is the attribute through which an NFSv4 client shows every
// file's ACL, the mode's bits when nobody set one. A copy from an NFS
// export to a filesystem that cannot hold it (a snapshot kept off the node
// restored onto the node's disk) leaves it out: the mode, copied anyway,
// carries the permissions, and an NFSv4 ACL has no local form. A copy to
// another NFS export keeps it.
const nfs4ACL = "system.nfs4_acl"

// setOnFd is the set of copyXattrs for an open copy.
func setOnFd(fd int) func(string, []byte) error {
	return func(n string, v []byte) error { return unix.Fsetxattr(fd, n, v, 0) }
}
