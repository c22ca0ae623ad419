// Package beneath reads and writes a directory tree that someone else
// controls (a volume a pod writes to while the driver, as root, copies,
// measures or removes it) through directory file descriptors only.
//
// A path string is resolved again at every call, so whoever can rename
// entries in the tree can swap a directory for a symlink between two calls
// and steer the next one anywhere on the node; O_NOFOLLOW guards only the
// last component. Here every directory is opened relative to its parent's
// descriptor with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV),
// and every other call names one entry relative to an open directory, never
// following a symlink in the last component either. A tree can only be left
// through its root, which the caller opens from a path it trusts.
//
// Errors keep the errno (errors.Is(err, fs.ErrNotExist) works) and add:
// ErrChanged when an entry is no longer what its stat said (a directory or
// file swapped for a symlink, say), ErrMountInside when reaching it would
// cross into another mount, ErrTooDeep past MaxDepth.
package beneath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	// ErrMountInside: the entry is a mount point, or reaching it crosses
	// one (even a bind mount of the same filesystem).
	ErrMountInside = errors.New("a filesystem is mounted inside the tree")
	// ErrChanged: the entry changed type since it was looked at; for a
	// tree in use it means the same as a vanished entry.
	ErrChanged = errors.New("entry changed while it was read")
	// ErrTooDeep: directories are nested deeper than MaxDepth.
	ErrTooDeep = fmt.Errorf("directories nested more than %d levels deep", MaxDepth)
)

// MaxDepth bounds how deep Walk descends. A walk holds one descriptor per
// level, so without a bound a tree made of nothing but nested directories
// could exhaust the process's descriptors. 2048 is what a path of PATH_MAX
// (4096) bytes can nest, the limit of any path-based tool.
const MaxDepth = 2048

// Gone reports whether err means the entry is gone or is no longer what it
// was when it was listed: in a tree in use, such an entry is left out.
func Gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrChanged)
}

// Dir is an open directory of the tree. Its methods resolve names inside it
// only. A Dir may be used from several goroutines, except Names, which reads
// the directory's one offset.
type Dir struct {
	fd   int
	path string // for messages only; "" for one opened by OpenChild
	// up and name make the path of a directory opened by OpenChild, when
	// a message asks for it: a walk holding one directory per level then
	// holds one name per level, not one path.
	up   *Dir
	name string
	mnt  uint64  // mount ID (statx), 0 where the kernel does not say
	opts Options // its root's, for every directory opened below it
	refs atomic.Int32
}

// Options say how the tree below a root behaves; the zero value is
// OpenRoot's: as the kernel says.
type Options struct {
	// RefuseRenameFlags makes every RenameNoReplace of the tree behave as
	// on a filesystem whose rename refuses every renameat2 flag, as the
	// kernel's NFS client does. It is the seam for tests whose NFS exports
	// are stood in by local directories (this kernel has no NFS client):
	// with it they take the path every rename takes on real NFS.
	RefuseRenameFlags bool
}

// resolve is how every entry below a root is reached.
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV

// OpenRoot opens the top directory of a tree from a path the caller trusts
// (built from validated IDs); a symlink in its last component is refused.
func OpenRoot(path string) (*Dir, error) { return OpenRootWith(path, Options{}) }

// OpenRootWith is OpenRoot of a tree that behaves as opts say.
func OpenRootWith(path string, opts Options) (*Dir, error) {
	fd, err := ignoringEINTR(func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	d := newDir(fd, path, 0, opts)
	var st unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st) == nil && st.Mask&unix.STATX_MNT_ID != 0 {
		d.mnt = st.Mnt_id
	}
	return d, nil
}

func newDir(fd int, path string, mnt uint64, opts Options) *Dir {
	d := &Dir{fd: fd, path: path, mnt: mnt, opts: opts}
	d.refs.Store(1)
	return d
}

// Fd is the directory's descriptor, for calls this package does not wrap;
// it stays valid until the last Close.
func (d *Dir) Fd() int { return d.fd }

// Path is where the directory was when it was opened, for messages.
func (d *Dir) Path() string {
	if d.up != nil {
		return d.up.Path() + "/" + d.name
	}
	return d.path
}

// Retain adds a reference: the descriptor stays open until Close has been
// called once more than Retain. It lets work queued for later (a file to
// copy) keep its directory after the walk has moved on.
func (d *Dir) Retain() *Dir {
	d.refs.Add(1)
	return d
}

// Close drops a reference and closes the descriptor with the last one.
func (d *Dir) Close() error {
	switch n := d.refs.Add(-1); {
	case n == 0:
		return unix.Close(d.fd)
	case n < 0:
		panic("beneath: Dir closed more often than opened and retained: " + d.Path())
	}
	return nil
}

// OpenDir opens the directory rel, a name or a relative path below d, with
// no symlink anywhere on the way and no mount crossed.
func (d *Dir) OpenDir(rel string) (*Dir, error) {
	if err := checkRel(rel); err != nil {
		return nil, d.errAt("open", rel, err)
	}
	// A path longer than PATH_MAX is opened in pieces.
	const chunk = 2048
	from, shown := d.fd, d.Path()
	prev := -1
	defer func() {
		if prev >= 0 {
			unix.Close(prev)
		}
	}()
	for len(rel) > chunk {
		i := strings.LastIndexByte(rel[:chunk], '/')
		if i <= 0 {
			return nil, &os.PathError{Op: "open", Path: d.Path() + "/" + rel, Err: unix.ENAMETOOLONG}
		}
		fd, err := openat2(from, rel[:i], unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return nil, pathErr("open", shown+"/"+rel[:i], err)
		}
		if prev >= 0 {
			unix.Close(prev)
		}
		prev, from, shown, rel = fd, fd, shown+"/"+rel[:i], rel[i+1:]
	}
	fd, err := openat2(from, rel, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, pathErr("open", shown+"/"+rel, err)
	}
	return newDir(fd, shown+"/"+rel, d.mnt, d.opts), nil
}

// OpenChild opens the subdirectory name of d, as OpenDir does, and keeps
// no path string for it: its Path is made from d's when a message asks.
func (d *Dir) OpenChild(name string) (*Dir, error) {
	if err := checkName(name); err != nil {
		return nil, d.errAt("open", name, err)
	}
	fd, err := openat2(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, d.errAt("open", name, err)
	}
	c := newDir(fd, "", d.mnt, d.opts)
	c.up, c.name = d, name
	return c, nil
}

// ReadFrom reads the directory's entries from offset off (0 for the
// start, else a Next an earlier call gave), as many as one read of the
// kernel puts in buf, and calls fn for each (not . and ..) with the offset
// of the entry after it, until fn returns stop. It reports end when there
// was nothing more to read. The kernel's offset is the only cursor: a walk
// that goes down into a subdirectory keeps the subdirectory's Next, not
// the rest of the read, and comes back to it with another ReadFrom.
func (d *Dir) ReadFrom(off int64, buf []byte, fn func(name string, next int64) (stop bool, err error)) (end bool, err error) {
	if _, err := unix.Seek(d.fd, off, 0); err != nil {
		return false, &os.PathError{Op: "seek", Path: d.Path(), Err: err}
	}
	for {
		n, err := ignoringEINTR(func() (int, error) { return unix.Getdents(d.fd, buf) })
		if err != nil {
			return false, &os.PathError{Op: "readdir", Path: d.Path(), Err: err}
		}
		if n <= 0 {
			return true, nil
		}
		seen := false
		for b := buf[:n]; len(b) >= direntHeader; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < direntHeader || reclen > len(b) {
				return false, &os.PathError{Op: "readdir", Path: d.Path(), Err: unix.EIO}
			}
			next := int64(binary.NativeEndian.Uint64(b[8:16]))
			raw := b[direntHeader:reclen]
			if i := bytes.IndexByte(raw, 0); i >= 0 {
				raw = raw[:i]
			}
			b = b[reclen:]
			if string(raw) == "." || string(raw) == ".." {
				continue
			}
			seen = true
			stop, err := fn(string(raw), next)
			if err != nil || stop {
				return false, err
			}
		}
		if seen {
			return false, nil
		}
	}
}

// direntHeader is the size of linux_dirent64 up to its name: d_ino (8),
// d_off (8), d_reclen (2), d_type (1).
const direntHeader = 19

// Stat describes the directory itself.
func (d *Dir) Stat() (unix.Statx_t, error) {
	var st unix.Statx_t
	if err := unix.Statx(d.fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, statxMask, &st); err != nil {
		return st, &os.PathError{Op: "stat", Path: d.Path(), Err: err}
	}
	return st, nil
}

const statxMask = unix.STATX_BASIC_STATS | unix.STATX_MNT_ID

// Lstat describes the entry name without following it. An entry that is a
// mount point is ErrMountInside.
func (d *Dir) Lstat(name string) (unix.Statx_t, error) {
	var st unix.Statx_t
	if err := checkName(name); err != nil {
		return st, d.errAt("lstat", name, err)
	}
	err := unix.Statx(d.fd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT|unix.AT_STATX_SYNC_AS_STAT, statxMask, &st)
	if err != nil {
		return st, d.errAt("lstat", name, err)
	}
	if d.mnt != 0 && st.Mask&unix.STATX_MNT_ID != 0 && st.Mnt_id != d.mnt {
		return st, d.errAt("lstat", name, unix.EXDEV)
	}
	return st, nil
}

// Names lists all the directory's entries (without . and ..), sorted.
func (d *Dir) Names() ([]string, error) {
	if _, err := unix.Seek(d.fd, 0, 0); err != nil {
		return nil, &os.PathError{Op: "seek", Path: d.Path(), Err: err}
	}
	var names []string
	for {
		more, err := d.readNames(names)
		if err != nil {
			return nil, err
		}
		if len(more) == len(names) {
			break
		}
		names = more
	}
	slices.Sort(names)
	return names, nil
}

// ReadNames returns the next entries of the directory, as many as one read
// of the kernel returns (about a thousand), unsorted; none at the end. It
// bounds memory where the caller does not need them all at once.
func (d *Dir) ReadNames() ([]string, error) { return d.readNames(nil) }

// readNames appends the entries of the next read that has any (a read may
// hold only "." and ".."); it appends none at the end of the directory.
func (d *Dir) readNames(names []string) ([]string, error) {
	buf := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(buf)
	for {
		n, err := ignoringEINTR(func() (int, error) { return unix.Getdents(d.fd, *buf) })
		if err != nil {
			return names, &os.PathError{Op: "readdir", Path: d.Path(), Err: err}
		}
		if n <= 0 {
			return names, nil
		}
		before := len(names)
		_, _, names = unix.ParseDirent((*buf)[:n], -1, names)
		if len(names) > before {
			return names, nil
		}
	}
}

var direntBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// OpenFile opens the regular file name for reading and describes the file
// opened. Whatever else is found there now (a symlink, a FIFO, a device
// node) is ErrChanged and is never opened: the entry is first opened with
// O_PATH, which runs no driver's open and cannot block, checked, and only
// then reopened for reading through /proc/self/fd. The caller closes fd.
func (d *Dir) OpenFile(name string) (fd int, st unix.Statx_t, err error) {
	if err := checkName(name); err != nil {
		return -1, st, d.errAt("open", name, err)
	}
	if err := procOK(); err != nil {
		return -1, st, err
	}
	pfd, err := openat2(d.fd, name, unix.O_PATH)
	if err != nil {
		return -1, st, d.errAt("open", name, err)
	}
	defer unix.Close(pfd)
	if err := unix.Statx(pfd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, statxMask, &st); err != nil {
		return -1, st, d.errAt("stat", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, st, d.errAt("open", name, fmt.Errorf("%w: now of type %o", ErrChanged, st.Mode&unix.S_IFMT))
	}
	fd, err = ignoringEINTR(func() (int, error) {
		return unix.Open(procFD(pfd), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	})
	if err != nil {
		return -1, st, d.errAt("reopen", name, err)
	}
	return fd, st, nil
}

// Readlink returns the target of the symlink name.
func (d *Dir) Readlink(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", d.errAt("readlink", name, err)
	}
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(d.fd, name, buf)
		if errors.Is(err, unix.EINVAL) {
			err = fmt.Errorf("%w: no longer a symlink", ErrChanged)
		}
		if err != nil {
			return "", d.errAt("readlink", name, err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// XattrPath names the entry for the l*xattr calls (Llistxattr, Lgetxattr,
// Lsetxattr), which have no variant relative to a directory descriptor
// before Linux 6.13: the kernel reaches the directory through its
// descriptor, and the l-calls do not follow name if it is a symlink.
func (d *Dir) XattrPath(name string) (string, error) {
	if err := checkName(name); err != nil {
		return "", d.errAt("xattr", name, err)
	}
	if err := procOK(); err != nil {
		return "", err
	}
	return procFD(d.fd) + "/" + name, nil
}

// Mkdir makes the directory name.
func (d *Dir) Mkdir(name string, mode uint32) error {
	return d.nameOp("mkdir", name, func() error { return unix.Mkdirat(d.fd, name, mode) })
}

// Create makes the regular file name, which must not exist, and opens it
// for writing. The caller closes fd.
func (d *Dir) Create(name string, mode uint32) (fd int, err error) {
	if err := checkName(name); err != nil {
		return -1, d.errAt("create", name, err)
	}
	fd, err = ignoringEINTR(func() (int, error) {
		return unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	})
	if err != nil {
		return -1, d.errAt("create", name, err)
	}
	return fd, nil
}

// Symlink makes name a symlink to target.
func (d *Dir) Symlink(target, name string) error {
	return d.nameOp("symlink", name, func() error { return unix.Symlinkat(target, d.fd, name) })
}

// Mknod makes the FIFO, socket or device node name.
func (d *Dir) Mknod(name string, mode uint32, dev uint64) error {
	return d.nameOp("mknod", name, func() error { return unix.Mknodat(d.fd, name, mode, int(dev)) })
}

// Link makes newName in newDir a hard link to the entry name of d.
func (d *Dir) Link(name string, newDir *Dir, newName string) error {
	if err := checkName(newName); err != nil {
		return newDir.errAt("link", newName, err)
	}
	return d.nameOp("link", name, func() error { return unix.Linkat(d.fd, name, newDir.fd, newName, 0) })
}

// Lchown sets the owner of name, a symlink's own if it is one.
func (d *Dir) Lchown(name string, uid, gid uint32) error {
	return d.nameOp("chown", name, func() error {
		return unix.Fchownat(d.fd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW)
	})
}

// Chmod sets the mode of name, which must not be a symlink (a symlink has
// no mode of its own on Linux; fchmodat would follow it).
func (d *Dir) Chmod(name string, mode uint32) error {
	if err := checkName(name); err != nil {
		return d.errAt("chmod", name, err)
	}
	if err := procOK(); err != nil {
		return err
	}
	fd, err := openat2(d.fd, name, unix.O_PATH)
	if err != nil {
		return d.errAt("chmod", name, err)
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_TYPE, &st); err != nil {
		return d.errAt("stat", name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return d.errAt("chmod", name, fmt.Errorf("%w: a symlink", ErrChanged))
	}
	// chmod through the descriptor's /proc link reaches exactly the inode
	// opened, whatever name it has by now (fchmod refuses O_PATH).
	return d.nameOp("chmod", name, func() error { return unix.Chmod(procFD(fd), mode) })
}

// Lutimes sets the access and modification times of name, a symlink's own
// if it is one.
func (d *Dir) Lutimes(name string, atime, mtime unix.Timespec) error {
	return d.nameOp("set times of", name, func() error {
		return unix.UtimesNanoAt(d.fd, name, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// Unlink removes the entry name; flags is 0 or unix.AT_REMOVEDIR.
func (d *Dir) Unlink(name string, flags int) error {
	return d.nameOp("remove", name, func() error { return unix.Unlinkat(d.fd, name, flags) })
}

// Futimens sets the access and modification times of an open file.
func Futimens(fd int, atime, mtime unix.Timespec) error {
	ts := [2]unix.Timespec{atime, mtime}
	// utimensat(fd, NULL, ...) is futimens; x/sys has no wrapper for a nil path.
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func (d *Dir) nameOp(op, name string, f func() error) error {
	if err := checkName(name); err != nil {
		return d.errAt(op, name, err)
	}
	for {
		err := f()
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return d.errAt(op, name, err)
		}
		return nil
	}
}

// checkName refuses anything but one path component: the *at calls other
// than openat2 would follow symlinks in the directories of a longer path.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.IndexByte(name, '/') >= 0 {
		return fmt.Errorf("%q is not a single name: %w", name, unix.EINVAL)
	}
	return nil
}

// checkRel refuses what openat2 would refuse with a less telling error:
// an absolute path or ".." (RESOLVE_BENEATH) and empty components.
func checkRel(rel string) error {
	if rel == "" || rel[0] == '/' {
		return fmt.Errorf("%q is not a relative path: %w", rel, unix.EINVAL)
	}
	if strings.Contains(rel, "..") || strings.Contains(rel, "//") {
		for c := range strings.SplitSeq(rel, "/") {
			if c == ".." || c == "" {
				return fmt.Errorf("%q leads outside or is empty: %w", rel, unix.EINVAL)
			}
		}
	}
	return nil
}

func (d *Dir) errAt(op, name string, err error) error {
	return pathErr(op, d.Path()+"/"+name, err)
}

// pathErr keeps errno and names what it means for a walk of a tree in use.
func pathErr(op, path string, err error) error {
	switch {
	case errors.Is(err, unix.EXDEV):
		err = ErrMountInside
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		// openat2 met a symlink (RESOLVE_NO_SYMLINKS, O_NOFOLLOW) or a
		// non-directory where the entry was a directory when listed.
		err = fmt.Errorf("%w (%w)", ErrChanged, err)
	}
	return &os.PathError{Op: op, Path: path, Err: err}
}

func openat2(dirfd int, name string, flags int) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC), Resolve: resolve}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(dirfd, name, &how)
		// EAGAIN: the kernel saw a concurrent rename and could not prove
		// the lookup stayed beneath; trying again is what it asks for.
		if err == unix.EINTR || err == unix.EAGAIN && i < 64 {
			continue
		}
		if err == unix.ENOSYS {
			return -1, fmt.Errorf("openat2 (Linux 5.6 or later is required): %w", err)
		}
		return fd, err
	}
}

func ignoringEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}

func procFD(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// procOK checks once that /proc is procfs: files are reopened through it,
// and a missing /proc must be an error, never read as "entry vanished".
var procOK = sync.OnceValue(func() error {
	var st unix.Statfs_t
	if err := unix.Statfs("/proc/self/fd", &st); err != nil {
		return fmt.Errorf("/proc/self/fd is needed to open files safely: %v", err) // %v: never "not exist"
	}
	if st.Type != unix.PROC_SUPER_MAGIC {
		return fmt.Errorf("/proc is not procfs (type %#x); it is needed to open files safely", st.Type)
	}
	return nil
})
