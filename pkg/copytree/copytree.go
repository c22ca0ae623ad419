// Package copytree copies a directory tree with everything a volume's user
// can see: contents (keeping holes), modes with setuid/setgid/sticky,
// ownership, timestamps, symlinks, hard links, extended attributes, FIFOs,
// sockets and device nodes. It picks the fastest correct mechanism per file:
// a reflink (FICLONE) where the filesystem shares blocks (xfs with reflink,
// btrfs), otherwise an in-kernel copy (copy_file_range) of the data segments
// only. Regular files are copied by a pool of workers; nothing is buffered
// in user space and nothing is archived.
package copytree

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Mechanism names how file data was copied.
type Mechanism string

const (
	// Reflink: every regular file shares its blocks with the source.
	Reflink Mechanism = "reflink"
	// Copy: every regular file's data was copied by the kernel.
	Copy Mechanism = "copy"
	// Mixed: some files were reflinked, others copied.
	Mixed Mechanism = "mixed"
	// NoData: the tree had no regular file with data.
	NoData Mechanism = "none"
)

// Options tune a copy. The zero value copies with reflinks where possible
// and one worker per CPU (at least two).
type Options struct {
	// Workers copying regular files in parallel.
	Workers int
	// NoReflink forces an in-kernel copy even where a reflink would work.
	NoReflink bool
	// Nice runs the copy's threads at this nice value (1..19, Linux), so a
	// long copy yields the CPU to the rest of the process (calls on other
	// volumes). Each copying goroutine locks its OS thread and the thread
	// is discarded when the goroutine ends, so the priority never leaks.
	Nice int
}

// Stats says what a copy did.
type Stats struct {
	Files, Dirs, Symlinks, HardLinks, Specials int64
	// Bytes is the logical size of the regular files copied.
	Bytes int64
	// Reflinked and Copied count regular files by mechanism.
	Reflinked, Copied int64
}

// Mechanism summarises how the data was copied.
func (s Stats) Mechanism() Mechanism {
	switch {
	case s.Reflinked > 0 && s.Copied > 0:
		return Mixed
	case s.Reflinked > 0:
		return Reflink
	case s.Copied > 0:
		return Copy
	}
	return NoData
}

// ErrMountInside is returned when something is mounted below src: a copy
// would silently include (or miss) another filesystem.
var ErrMountInside = errors.New("a filesystem is mounted inside the source")

type dirMeta struct {
	path string
	st   unix.Stat_t
	src  string
}

type fileJob struct {
	src, dst string
	st       unix.Stat_t
}

type copier struct {
	opts  Options
	stats Stats
	mu    sync.Mutex
	first error
}

// Tree copies the tree at src to dst, which must not exist. src may be in
// use: entries that vanish while it is copied are left out. On error dst is
// left partial; the caller owns removing it.
func Tree(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	if opts.Workers <= 0 {
		opts.Workers = max(2, runtime.NumCPU())
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(src))
	if err != nil {
		return Stats{}, fmt.Errorf("read mount table: %w", err)
	}
	for _, m := range mounts {
		if m.Mountpoint != src {
			return Stats{}, fmt.Errorf("%w: %s", ErrMountInside, m.Mountpoint)
		}
	}
	c := &copier{opts: opts}
	jobs := make(chan fileJob, 4*opts.Workers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < opts.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lowerPriority(opts.Nice)
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				if err := c.copyFile(j); err != nil {
					c.fail(err)
					cancel()
				}
			}
		}()
	}
	var dirs []dirMeta
	var links [][2]string
	var walkErr error
	walked := make(chan struct{})
	go func() { // the walk too, so that it can run at lower priority
		defer close(walked)
		lowerPriority(opts.Nice)
		dirs, links, walkErr = c.walk(ctx, src, dst, jobs)
		close(jobs)
	}()
	<-walked
	wg.Wait()
	if err := c.err(walkErr, ctx); err != nil {
		return c.stats, err
	}
	// Hard links once every first name has its data.
	for _, l := range links {
		if err := os.Link(l[0], l[1]); err != nil {
			return c.stats, fmt.Errorf("hard link %s: %w", l[1], err)
		}
		c.stats.HardLinks++
	}
	// Directories last, deepest first: writing inside a directory changes
	// its mtime, and a read-only mode would stop the writes.
	for _, d := range slices.Backward(dirs) {
		if err := applyMeta(d.src, d.path, &d.st); err != nil {
			return c.stats, err
		}
	}
	return c.stats, nil
}

// vanished reports an error that means the source entry is gone: a volume
// in use changes while it is copied, and a file removed or renamed during
// the copy is simply not in it (file-by-file consistency).
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOENT)
}

// lowerPriority pins the calling goroutine to its thread and renices the
// thread. The goroutine must end without unlocking: the runtime then
// discards the thread instead of reusing it at the lower priority.
func lowerPriority(nice int) {
	if nice <= 0 {
		return
	}
	runtime.LockOSThread()
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), min(nice, 19))
}

func (c *copier) fail(err error) {
	c.mu.Lock()
	if c.first == nil {
		c.first = err
	}
	c.mu.Unlock()
}

func (c *copier) err(walkErr error, ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.first != nil {
		return c.first
	}
	if walkErr != nil {
		return walkErr
	}
	return ctx.Err()
}

// walk creates directories, symlinks and special files, queues regular
// files, and returns the directories (for metadata at the end) and the hard
// links to make once the data is there.
func (c *copier) walk(ctx context.Context, src, dst string, jobs chan<- fileJob) ([]dirMeta, [][2]string, error) {
	var dirs []dirMeta
	var links [][2]string
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	err := filepath.WalkDir(src, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			if vanished(err) && path != src {
				return nil // removed or renamed while we walked: a live volume
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if vanished(err) && path != src {
				return nil
			}
			return fmt.Errorf("lstat %s: %w", path, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			// Owner-writable until the end so the copy can fill it.
			if err := os.Mkdir(to, 0o700); err != nil {
				return fmt.Errorf("mkdir %s: %w", to, err)
			}
			dirs = append(dirs, dirMeta{path: to, st: st, src: path})
			c.stats.Dirs++
			return nil
		case unix.S_IFLNK:
			target, err := os.Readlink(path)
			if vanished(err) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("readlink %s: %w", path, err)
			}
			if err := os.Symlink(target, to); err != nil {
				return fmt.Errorf("symlink %s: %w", to, err)
			}
			c.stats.Symlinks++
			return applyMeta(path, to, &st)
		}
		if st.Nlink > 1 {
			key := inode{st.Dev, st.Ino}
			if first, ok := seen[key]; ok {
				links = append(links, [2]string{first, to})
				return nil
			}
			seen[key] = to
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			c.stats.Files++
			c.stats.Bytes += st.Size
			select {
			case jobs <- fileJob{src: path, dst: to, st: st}:
			case <-ctx.Done():
				return ctx.Err()
			}
			return nil
		}
		// FIFO, socket, character or block device.
		if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("mknod %s: %w", to, err)
		}
		c.stats.Specials++
		return applyMeta(path, to, &st)
	})
	return dirs, links, err
}

func (c *copier) copyFile(j fileJob) error {
	in, err := os.OpenFile(j.src, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if vanished(err) {
		return nil // removed since the walk saw it
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", j.src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(j.dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", j.dst, err)
	}
	defer out.Close()
	cloned := false
	if !c.opts.NoReflink && j.st.Size > 0 {
		cloned = unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil
	}
	if !cloned {
		if err := copyData(in, out, j.st.Size); err != nil {
			return fmt.Errorf("copy %s: %w", j.src, err)
		}
	}
	if j.st.Size > 0 {
		if cloned {
			atomic.AddInt64(&c.stats.Reflinked, 1)
		} else {
			atomic.AddInt64(&c.stats.Copied, 1)
		}
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("close %s: %w", j.dst, err)
	}
	return applyMeta(j.src, j.dst, &j.st)
}

// copyData copies only the data segments of in (SEEK_DATA/SEEK_HOLE) with
// copy_file_range, so holes stay holes, and sets the size for a trailing hole.
func copyData(in, out *os.File, size int64) error {
	ifd, ofd := int(in.Fd()), int(out.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(ifd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(ifd, data, unix.SEEK_HOLE)
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
				return fmt.Errorf("copy_file_range: source shrank at %d", data)
			}
			data += int64(n)
		}
		off = hole
	}
	return out.Truncate(size)
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

// applyMeta gives to the owner, mode, extended attributes and times of src.
// Order matters: chown clears setuid/setgid and file capabilities, so the
// mode and xattrs come after it, and times come last.
func applyMeta(src, to string, st *unix.Stat_t) error {
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if err := unix.Fchownat(unix.AT_FDCWD, to, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %s: %w", to, err)
	}
	if !isLink { // a symlink's own mode is always 0777 on Linux
		if err := unix.Fchmodat(unix.AT_FDCWD, to, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", to, err)
		}
	}
	if err := copyXattrs(src, to, isLink); err != nil {
		return err
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, to, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %s: %w", to, err)
	}
	return nil
}

func copyXattrs(src, to string, isLink bool) error {
	names, err := listXattrs(src)
	if vanished(err) {
		return nil // the source went away after its data was copied
	}
	if err != nil {
		return fmt.Errorf("list xattrs of %s: %w", src, err)
	}
	for _, name := range names {
		val, err := getXattr(src, name)
		if vanished(err) || errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read xattr %s of %s: %w", name, src, err)
		}
		if err := unix.Lsetxattr(to, name, val, 0); err != nil {
			if isLink && errors.Is(err, unix.EPERM) {
				continue // user.* xattrs cannot exist on symlinks anyway
			}
			return fmt.Errorf("set xattr %s on %s: %w", name, to, err)
		}
	}
	return nil
}

func listXattrs(path string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := unix.Llistxattr(path, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for _, b := range splitNUL(buf[:n]) {
			names = append(names, string(b))
		}
		return names, nil
	}
}

func getXattr(path, name string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
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
