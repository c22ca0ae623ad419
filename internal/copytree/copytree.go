// Package copytree copies a directory tree with everything a volume's user
// can see: contents (keeping holes), modes with setuid/setgid/sticky,
// ownership, timestamps, symlinks, hard links, extended attributes, FIFOs,
// sockets and device nodes. It picks the fastest correct mechanism per file:
// a reflink (FICLONE) where the filesystem shares blocks (xfs with reflink,
// btrfs), otherwise an in-kernel copy (copy_file_range) of the data segments
// only. Regular files are copied by a pool of workers; nothing is buffered
// in user space and nothing is archived.
//
// The source is a volume that its pod may be changing while it is copied,
// as root: it is read through directory descriptors only (package beneath),
// so renaming a directory and a symlink back and forth cannot steer the copy
// outside the source or the destination. Entries that vanish or change type
// while they are copied are left out.
package copytree

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/xattrs"
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
var ErrMountInside = beneath.ErrMountInside

// Tree copies the tree at src to dst, which must not exist. src and dst are
// trusted paths; everything below src may change while it is copied:
// entries that vanish are left out, and nothing outside src is ever read or
// outside dst written. On error dst is left partial; the caller owns
// removing it.
func Tree(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	srcRoot, err := beneath.OpenRoot(src)
	if err != nil {
		return Stats{}, fmt.Errorf("open copy source: %w", err)
	}
	defer srcRoot.Close()
	return TreeFrom(ctx, srcRoot, dst, opts)
}

// TreeFrom is Tree from a source directory the caller opened (through
// descriptors below a root it trusts, when the path to the source is itself
// in someone else's hands). srcRoot stays the caller's to close.
func TreeFrom(ctx context.Context, srcRoot *beneath.Dir, dst string, opts Options) (Stats, error) {
	if opts.Workers <= 0 {
		opts.Workers = max(2, runtime.NumCPU())
	}
	if err := os.Mkdir(dst, 0o700); err != nil { // owner-writable until the end
		return Stats{}, fmt.Errorf("create copy destination: %w", err)
	}
	dstRoot, err := beneath.OpenRoot(dst)
	if err != nil {
		return Stats{}, fmt.Errorf("open copy destination: %w", err)
	}
	defer dstRoot.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &copier{opts: opts, ctx: ctx, dstRoot: dstRoot, jobs: make(chan fileJob, 4*opts.Workers), seen: map[inode]linkName{}}
	var wg sync.WaitGroup
	for i := 0; i < opts.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lowerPriority(opts.Nice)
			for j := range c.jobs {
				if ctx.Err() != nil {
					j.release()
					continue
				}
				if err := c.copyFile(j); err != nil {
					c.fail(err)
					cancel()
				}
			}
		}()
	}
	var walkErr error
	walked := make(chan struct{})
	go func() { // the walk too, so that it can run at lower priority
		defer close(walked)
		lowerPriority(opts.Nice)
		walkErr = beneath.Walk(srcRoot, c.visit, beneath.WalkOptions{Leave: c.leave})
		for _, l := range c.stack { // left open by a failed walk
			l.dst.Close()
		}
		if walkErr != nil {
			cancel()
		}
		close(c.jobs)
	}()
	<-walked
	wg.Wait()
	if err := c.err(walkErr, ctx); err != nil {
		return c.stats, err
	}
	// Hard links once every first name has its data.
	if err := c.makeLinks(); err != nil {
		return c.stats, err
	}
	// Directories last, deepest first: writing inside a directory changes
	// its mtime, and a read-only mode would stop the writes.
	if err := setDirMeta(dstRoot, c.root); err != nil {
		return c.stats, err
	}
	return c.stats, nil
}

// dirNode is a directory of the copy, kept until the end for its metadata
// and to be found again (by name from the destination's root) for hard links.
type dirNode struct {
	parent   *dirNode
	name     string
	st       unix.Statx_t
	xattrs   []xattr
	children []*dirNode
}

// rel is the directory's path below the destination root.
func (n *dirNode) rel() string {
	if n.parent == nil {
		return "."
	}
	if n.parent.parent == nil {
		return n.name
	}
	return n.parent.rel() + "/" + n.name
}

// level is a directory being walked: where its entries go.
type level struct {
	dst  *beneath.Dir
	node *dirNode
}

type inode struct{ dev, ino uint64 }

type linkName struct {
	dir  *dirNode
	name string
}

type hardLink struct{ first, link linkName }

// fileJob is a regular file for a worker to copy; it holds both directories
// open until it is done.
type fileJob struct {
	src, dst *beneath.Dir
	name     string
}

func (j fileJob) release() {
	j.src.Close()
	j.dst.Close()
}

type copier struct {
	opts    Options
	ctx     context.Context
	dstRoot *beneath.Dir
	jobs    chan fileJob

	// The walk's own, used by its goroutine only.
	root  *dirNode
	stack []level
	seen  map[inode]linkName
	links []hardLink

	stats Stats // counters of the walk; workers add to Reflinked and Copied atomically
	mu    sync.Mutex
	first error
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

// visit copies one entry of the source: directories, symlinks and special
// files at once, regular files by queueing them for the workers.
func (c *copier) visit(e *beneath.Entry) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if e.IsDir() {
		return c.enter(e)
	}
	st := &e.Stat
	to := c.stack[len(c.stack)-1]
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		target, err := e.Parent.Readlink(e.Name)
		if beneath.Gone(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := to.dst.Symlink(target, e.Name); err != nil {
			return err
		}
		c.stats.Symlinks++
		return setMetaAt(e.Parent, to.dst, e.Name, st)
	}
	if st.Nlink > 1 {
		key := inode{unix.Mkdev(st.Dev_major, st.Dev_minor), st.Ino}
		if first, ok := c.seen[key]; ok {
			c.links = append(c.links, hardLink{first: first, link: linkName{to.node, e.Name}})
			return nil
		}
		c.seen[key] = linkName{to.node, e.Name}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		c.stats.Files++
		c.stats.Bytes += int64(st.Size)
		j := fileJob{src: e.Parent.Retain(), dst: to.dst.Retain(), name: e.Name}
		select {
		case c.jobs <- j:
			return nil
		case <-c.ctx.Done():
			j.release()
			return c.ctx.Err()
		}
	}
	// FIFO, socket, character or block device.
	if err := to.dst.Mknod(e.Name, uint32(st.Mode), unix.Mkdev(st.Rdev_major, st.Rdev_minor)); err != nil {
		return err
	}
	c.stats.Specials++
	return setMetaAt(e.Parent, to.dst, e.Name, st)
}

// enter makes the directory's copy, to be filled by what follows until leave.
func (c *copier) enter(e *beneath.Entry) error {
	node := &dirNode{name: e.Name, st: e.Stat}
	var dst *beneath.Dir
	var err error
	if e.Parent == nil {
		c.root, dst = node, c.dstRoot.Retain()
	} else {
		parent := c.stack[len(c.stack)-1]
		if err := parent.dst.Mkdir(e.Name, 0o700); err != nil { // owner-writable until the end
			return err
		}
		if dst, err = parent.dst.OpenDir(e.Name); err != nil {
			return err
		}
		node.parent = parent.node
		parent.node.children = append(parent.node.children, node)
	}
	// Extended attributes now, one at a time (setting one changes no
	// mtime), so none is held until the end; only a default ACL waits for
	// the end, or the files copied into the directory would inherit it.
	err = copyXattrs(xattrs.Fd(e.Dir.Fd()), setOnFd(dst.Fd()), func(n string) bool { return n != xattrs.DefaultACL })
	if err == nil {
		var acl []byte
		if acl, err = xattrs.Get(xattrs.Fd(e.Dir.Fd()), xattrs.DefaultACL); err == nil {
			node.xattrs = []xattr{{name: xattrs.DefaultACL, value: acl}}
		} else if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
			err = nil
		}
	}
	if err != nil {
		dst.Close()
		return fmt.Errorf("copy xattrs of %s: %w", e.Dir.Path(), err)
	}
	c.stats.Dirs++
	c.stack = append(c.stack, level{dst: dst, node: node})
	return nil
}

func (c *copier) leave(*beneath.Entry) error {
	top := c.stack[len(c.stack)-1]
	c.stack = c.stack[:len(c.stack)-1]
	return top.dst.Close()
}

// makeLinks makes the hard links, each relative to the destination's root.
// A link whose first name vanished from the source before it was copied is
// left out with it.
func (c *copier) makeLinks() error {
	open := map[*dirNode]*beneath.Dir{}
	defer func() {
		for _, d := range open {
			d.Close()
		}
	}()
	dirOf := func(n *dirNode) (*beneath.Dir, error) {
		if d, ok := open[n]; ok {
			return d, nil
		}
		if len(open) >= 64 { // bounded: a tree may link across many directories
			for k, d := range open {
				d.Close()
				delete(open, k)
			}
		}
		d, err := c.dstRoot.OpenDir(n.rel())
		if err != nil {
			return nil, err
		}
		open[n] = d
		return d, nil
	}
	for _, l := range c.links {
		from, err := dirOf(l.first.dir)
		if err != nil {
			return err
		}
		to, err := dirOf(l.link.dir)
		if err != nil {
			return err
		}
		if err := from.Link(l.first.name, to, l.link.name); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("hard link: %w", err)
		}
		c.stats.HardLinks++
	}
	return nil
}

// setDirMeta gives each directory below and at d its source's metadata,
// children before their parent.
func setDirMeta(d *beneath.Dir, n *dirNode) error {
	for _, child := range n.children {
		sub, err := d.OpenDir(child.name)
		if err != nil {
			return err
		}
		err = setDirMeta(sub, child)
		sub.Close()
		if err != nil {
			return err
		}
	}
	return setMetaFd(d.Fd(), d.Path(), &n.st, func(fd int) error {
		for _, x := range n.xattrs {
			if err := unix.Fsetxattr(fd, x.name, x.value, 0); err != nil {
				return err
			}
		}
		return nil
	})
}
