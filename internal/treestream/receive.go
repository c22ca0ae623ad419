package treestream

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/xattrs"
)

// ReceiveOptions tune Receive. The zero value receives at the caller's
// priority.
type ReceiveOptions struct {
	// Nice runs the writes at this nice value (1..19) on a thread of their
	// own that is discarded afterwards.
	Nice int
	// MaxDataBytes, when positive, bounds the data written (holes aside):
	// a stream that carries more fails with ErrTooLarge before the write
	// that would pass it.
	MaxDataBytes int64
}

// ErrTooLarge is a stream carrying more data than ReceiveOptions allow.
var ErrTooLarge = errors.New("treestream: the stream carries more data than the destination may hold")

// Receive reads a stream written by Send and makes the tree at dst, which
// must not exist (its parent must). It succeeds only once the stream's
// trailer has verified. It reads r through a buffer, so bytes after the
// trailer may be consumed: r should carry one stream. A stream that fails
// a check is ErrCorrupt, one that ends early (or whose reads fail)
// ErrTruncated, one of another format version ErrVersion. On error
// dst may be left partial; the caller removes it. Cancelling ctx stops
// Receive between records and, where r is an io.PipeReader (closed with
// the cause) or has SetReadDeadline (a net.Conn), during a blocked read.
func Receive(ctx context.Context, r io.Reader, dst string, opts ReceiveOptions) (Stats, error) {
	if err := os.Mkdir(dst, 0o700); err != nil { // owner-writable until the end
		return Stats{}, fmt.Errorf("create receive destination: %w", err)
	}
	root, err := beneath.OpenRoot(dst)
	if err != nil {
		return Stats{}, fmt.Errorf("open receive destination: %w", err)
	}
	defer root.Close()
	return ReceiveInto(ctx, r, root, opts)
}

// ReceiveInto is Receive into root, an empty directory the caller made
// and opened (a btrfs subvolume, say) and still owns; the stream's root
// metadata is applied to it.
func ReceiveInto(ctx context.Context, r io.Reader, root *beneath.Dir, opts ReceiveOptions) (_ Stats, err error) {
	if names, err := root.Names(); err != nil {
		return Stats{}, fmt.Errorf("read receive destination: %w", err)
	} else if len(names) > 0 {
		return Stats{}, fmt.Errorf("receive destination %s is not empty", root.Path())
	}
	stop := unblockOnCancel(ctx, r, true)
	defer stop()
	rc := &receiver{ctx: ctx, root: root, h: sha256.New(), br: bufio.NewReaderSize(r, 256<<10), maxData: opts.MaxDataBytes}
	niced(opts.Nice, func() { err = rc.run() })
	for _, l := range rc.stack { // left open by a failed receive
		if l.dir != root {
			l.dir.Close()
		}
	}
	if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
	}
	return rc.stats, err
}

// maxPending bounds what a stream can make Receive hold until its end
// (directories' names and metadata, hard links' names): a hostile stream
// cannot make it hold more.
const maxPending = 256 << 20

type dirNode struct {
	parent   *dirNode
	name     string
	meta     meta
	children []*dirNode
}

func (n *dirNode) rel() string {
	if n.parent == nil {
		return "."
	}
	if n.parent.parent == nil {
		return n.name
	}
	return n.parent.rel() + "/" + n.name
}

type linkName struct {
	dir  *dirNode
	name string
}

type hardLink struct{ first, link linkName }

type rlevel struct {
	dir  *beneath.Dir
	node *dirNode
}

type receiver struct {
	ctx  context.Context
	root *beneath.Dir
	br   *bufio.Reader
	h    hash.Hash
	// maxData bounds the data written (ReceiveOptions.MaxDataBytes).
	maxData int64

	top       *dirNode
	stack     []rlevel
	linkables []linkName
	links     []hardLink
	pending   int64  // bytes held for the end
	buf       []byte // a record's payload
	data      []byte // a data chunk
	stats     Stats
}

// read fills p from the stream and hashes it.
func (r *receiver) read(p []byte) error {
	if err := readFull(r.br, p); err != nil {
		return err
	}
	r.h.Write(p)
	return nil
}

// readFull reads p; a stream that ends or fails first (a sender killed, a
// connection reset) ended before its trailer.
func readFull(rd io.Reader, p []byte) error {
	if _, err := io.ReadFull(rd, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return ErrTruncated
		}
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	}
	return nil
}

// record reads the next record, refusing a payload longer than its type
// allows before reading it and one whose CRC does not match after.
func (r *receiver) record() (typ byte, payload []byte, err error) {
	if err := r.ctx.Err(); err != nil {
		return 0, nil, err
	}
	var hdr [recHdrLen]byte
	if err := r.read(hdr[:]); err != nil {
		return 0, nil, err
	}
	typ, n := hdr[0], int64(binary.BigEndian.Uint32(hdr[1:]))
	var limit int64
	buf := &r.buf
	switch typ {
	case recDir, recFile, recSymlink, recSpecial, recLink:
		limit = maxEntryRec
	case recData:
		if n <= 8 {
			return 0, nil, corrupt("data chunk of %d bytes", n)
		}
		limit, buf = 8+ChunkSize, &r.data
	case recSize:
		limit = 8
	case recXattr:
		limit = 1 + maxName + maxXattr
	case recEnd:
		limit = 0
	case recLeave:
		limit = maxXattr
	case recTrailer:
		limit = trailerLen - 32
	default:
		return 0, nil, corrupt("record type %#x", typ)
	}
	if n > limit {
		return 0, nil, corrupt("record %q of %d bytes, more than %d", typ, n, limit)
	}
	if int64(cap(*buf)) < n+crcLen {
		*buf = make([]byte, max(n+crcLen, 4096))
	}
	payload = (*buf)[:n+crcLen]
	if err := r.read(payload); err != nil {
		return 0, nil, err
	}
	payload, sum := payload[:n], binary.BigEndian.Uint32(payload[n:])
	if crc32.Update(crc32.Checksum(hdr[:], castagnoli), castagnoli, payload) != sum {
		return 0, nil, corrupt("record %q of %d bytes fails its CRC", typ, n)
	}
	return typ, payload, nil
}

func (r *receiver) run() error {
	var hdr [headerLen]byte
	if err := r.read(hdr[:]); err != nil {
		return err
	}
	if string(hdr[:len(magic)]) != magic {
		return corrupt("not a tree stream (magic %q)", hdr[:len(magic)])
	}
	if v := binary.BigEndian.Uint16(hdr[len(magic):]); v != version {
		return fmt.Errorf("%w: version %d (this build reads %d)", ErrVersion, v, version)
	}
	for {
		typ, p, err := r.record()
		if err != nil {
			return err
		}
		if r.top == nil && typ != recDir {
			return corrupt("stream starts with record %q, not the root directory", typ)
		}
		if r.top != nil && len(r.stack) == 0 {
			if typ != recTrailer {
				return corrupt("record %q after the root directory", typ)
			}
			return r.trailer(p)
		}
		switch typ {
		case recDir:
			err = r.dir(p)
		case recFile:
			err = r.file(p)
		case recSymlink:
			err = r.symlink(p)
		case recSpecial:
			err = r.special(p)
		case recLink:
			err = r.link(p)
		case recLeave:
			err = r.leave(p)
		default:
			err = corrupt("record %q where an entry was expected", typ)
		}
		if err != nil {
			return err
		}
	}
}

// entryHeader reads the name and metadata that start an entry's header and
// checks that the mode is of the type the record says.
func entryHeader(d *dec, root bool, types ...uint32) (string, meta, error) {
	name, err := d.str16(maxName)
	if err != nil {
		return "", meta{}, err
	}
	if root {
		if name != "" {
			return "", meta{}, corrupt("root directory named %q", name)
		}
	} else if err := checkName(name); err != nil {
		return "", meta{}, err
	}
	m, err := d.meta()
	if err != nil {
		return "", meta{}, err
	}
	for _, t := range types {
		if m.mode&unix.S_IFMT == t {
			return name, m, nil
		}
	}
	return "", meta{}, corrupt("%q of type %o", name, m.mode&unix.S_IFMT)
}

// made classifies an error creating an entry: a name made twice is the
// stream's fault.
func made(err error) error {
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w: an entry named twice (%w)", ErrCorrupt, err)
	}
	return err
}

func (r *receiver) cur() rlevel { return r.stack[len(r.stack)-1] }

func (r *receiver) hold(n int) error {
	r.pending += int64(n) + 64
	if r.pending > maxPending {
		return corrupt("more than %d bytes of names held for the end", maxPending)
	}
	return nil
}

func (r *receiver) dir(p []byte) error {
	d := &dec{b: p}
	name, m, err := entryHeader(d, r.top == nil, unix.S_IFDIR)
	if err != nil {
		return err
	}
	if err := d.done(recDir); err != nil {
		return err
	}
	node := &dirNode{name: name, meta: m}
	var dir *beneath.Dir
	if r.top == nil {
		r.top, dir = node, r.root
	} else {
		if len(r.stack) > beneath.MaxDepth { // the stack holds the root too
			return corrupt("%w", beneath.ErrTooDeep)
		}
		if err := r.hold(len(name)); err != nil {
			return err
		}
		parent := r.cur()
		if err := parent.dir.Mkdir(name, 0o700); err != nil {
			return made(err)
		}
		if dir, err = parent.dir.OpenChild(name); err != nil {
			return err
		}
		node.parent = parent.node
		parent.node.children = append(parent.node.children, node)
	}
	r.stack = append(r.stack, rlevel{dir: dir, node: node})
	r.stats.Dirs++
	return r.xattrsUntilEnd(dir.Path, func(n string, v []byte) error { return unix.Fsetxattr(dir.Fd(), n, v, 0) })
}

// leave ends the current directory: its default ACL now that its entries
// are made; its mode, owner and times at the very end.
func (r *receiver) leave(p []byte) error {
	top := r.cur()
	if len(p) > 0 {
		if err := setXattr(top.dir.Path, xattrs.DefaultACL, p, func(n string, v []byte) error {
			return unix.Fsetxattr(top.dir.Fd(), n, v, 0)
		}); err != nil {
			return err
		}
	}
	r.stack = r.stack[:len(r.stack)-1]
	if top.dir != r.root {
		return top.dir.Close()
	}
	return nil
}

// xattrsUntilEnd sets each xattr record up to the entry's end record.
// shown names the entry in messages; it is called only for one.
func (r *receiver) xattrsUntilEnd(shown func() string, set func(name string, value []byte) error) error {
	for {
		typ, p, err := r.record()
		if err != nil {
			return err
		}
		switch typ {
		case recEnd:
			return nil
		case recXattr:
			if len(p) < 1 || int(p[0]) == 0 || int(p[0]) > len(p)-1 {
				return corrupt("xattr record of %s", shown())
			}
			name, val := string(p[1:1+int(p[0])]), p[1+int(p[0]):]
			if err := setXattr(shown, name, val, set); err != nil {
				return err
			}
		default:
			return corrupt("record %q in the attributes of %s", typ, shown())
		}
	}
}

var xattrNamespaces = []string{"user.", "trusted.", "security.", "system."}

func setXattr(shown func() string, name string, val []byte, set func(string, []byte) error) error {
	ok := strings.IndexByte(name, 0) < 0
	if ok {
		ok = false
		for _, ns := range xattrNamespaces {
			ok = ok || strings.HasPrefix(name, ns) && len(name) > len(ns)
		}
	}
	if !ok {
		return corrupt("xattr name %q", name)
	}
	err := set(name, val)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ERANGE) {
		// A value the kernel refuses is not one Send read from a kernel.
		return fmt.Errorf("%w: xattr %s of %s refused (%w)", ErrCorrupt, name, shown(), err)
	}
	if err != nil {
		return fmt.Errorf("set xattr %s of %s: %w", name, shown(), err)
	}
	return nil
}

// linkable notes an entry that later hard links may name.
func (r *receiver) linkable(flag byte, name string) error {
	switch flag {
	case 0:
		return nil
	case 1:
		if err := r.hold(len(name)); err != nil {
			return err
		}
		r.linkables = append(r.linkables, linkName{r.cur().node, name})
		return nil
	}
	return corrupt("link flag %d", flag)
}

func (r *receiver) file(p []byte) error {
	d := &dec{b: p}
	name, m, err := entryHeader(d, false, unix.S_IFREG)
	if err != nil {
		return err
	}
	flag := d.u8()
	if err := d.done(recFile); err != nil {
		return err
	}
	dir := r.cur().dir
	shown := dir.Path() + "/" + name
	fd, err := dir.Create(name, 0o600)
	if err != nil {
		return made(err)
	}
	err = r.fill(fd, shown, m)
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", shown, cerr)
	}
	if err != nil {
		return err
	}
	r.stats.Files++
	return r.linkable(flag, name)
}

// fill writes a file's data chunks where they belong, so that what was a
// hole stays one, then its size, owner, mode, xattrs and times, in that
// order: chown clears setuid/setgid and capabilities, writes clear
// capabilities, so the mode and xattrs come after both, and times last.
func (r *receiver) fill(fd int, shown string, m meta) error {
	for {
		typ, p, err := r.record()
		if err != nil {
			return err
		}
		switch typ {
		case recData:
			o := int64(binary.BigEndian.Uint64(p[:8]))
			b := p[8:]
			n := len(b)
			if o < 0 || o > (1<<62)-ChunkSize {
				return corrupt("data of %s at offset %d", shown, uint64(o))
			}
			if max := r.maxData; max > 0 && r.stats.DataBytes+int64(n) > max {
				return fmt.Errorf("%w (more than %d bytes, at %s)", ErrTooLarge, max, shown)
			}
			for len(b) > 0 {
				w, err := unix.Pwrite(fd, b, o)
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					return fmt.Errorf("write %s: %w", shown, err)
				}
				b, o = b[w:], o+int64(w)
			}
			r.stats.DataBytes += int64(n)
		case recSize:
			d := &dec{b: p}
			size := int64(d.u64())
			if err := d.done(recSize); err != nil {
				return err
			}
			if size < 0 || size > 1<<62 {
				return corrupt("size %d of %s", uint64(size), shown)
			}
			if err := unix.Ftruncate(fd, size); err != nil {
				return fmt.Errorf("truncate %s: %w", shown, err)
			}
			r.stats.Bytes += size
			if err := unix.Fchown(fd, int(m.uid), int(m.gid)); err != nil {
				return fmt.Errorf("chown %s: %w", shown, err)
			}
			if err := unix.Fchmod(fd, m.mode&0o7777); err != nil {
				return fmt.Errorf("chmod %s: %w", shown, err)
			}
			if err := r.xattrsUntilEnd(func() string { return shown }, func(n string, v []byte) error { return unix.Fsetxattr(fd, n, v, 0) }); err != nil {
				return err
			}
			if err := beneath.Futimens(fd, m.atime, m.mtime); err != nil {
				return fmt.Errorf("set times of %s: %w", shown, err)
			}
			return nil
		default:
			return corrupt("record %q in the data of %s", typ, shown)
		}
	}
}

func (r *receiver) symlink(p []byte) error {
	d := &dec{b: p}
	name, m, err := entryHeader(d, false, unix.S_IFLNK)
	if err != nil {
		return err
	}
	target, err := d.str16(maxTarget)
	if err != nil {
		return err
	}
	if err := d.done(recSymlink); err != nil {
		return err
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return corrupt("symlink %q to %q", name, target)
	}
	dir := r.cur().dir
	if err := dir.Symlink(target, name); err != nil {
		return made(err)
	}
	r.stats.Symlinks++
	return r.atMeta(dir, name, m, true)
}

func (r *receiver) special(p []byte) error {
	d := &dec{b: p}
	name, m, err := entryHeader(d, false, unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFCHR, unix.S_IFBLK)
	if err != nil {
		return err
	}
	rdev := d.u64()
	flag := d.u8()
	if err := d.done(recSpecial); err != nil {
		return err
	}
	if t := m.mode & unix.S_IFMT; (t == unix.S_IFIFO || t == unix.S_IFSOCK) && rdev != 0 {
		return corrupt("%q: a FIFO or socket with device number %#x", name, rdev)
	}
	if rdev > 1<<32-1 { // what the kernel's dev_t holds
		return corrupt("%q: device number %#x", name, rdev)
	}
	dir := r.cur().dir
	if err := dir.Mknod(name, m.mode&unix.S_IFMT|0o600, rdev); err != nil {
		return made(err)
	}
	r.stats.Specials++
	if err := r.atMeta(dir, name, m, false); err != nil {
		return err
	}
	return r.linkable(flag, name)
}

// atMeta gives a symlink or special file, which cannot be opened, its
// owner, mode, xattrs (records up to the entry's end) and times, by name
// relative to its directory, never following it.
func (r *receiver) atMeta(dir *beneath.Dir, name string, m meta, isLink bool) error {
	if err := dir.Lchown(name, m.uid, m.gid); err != nil {
		return err
	}
	if !isLink { // a symlink's own mode is always 0777 on Linux
		if err := dir.Chmod(name, m.mode&0o7777); err != nil {
			return err
		}
	}
	path, err := dir.XattrPath(name)
	if err != nil {
		return err
	}
	if err := r.xattrsUntilEnd(func() string { return dir.Path() + "/" + name }, func(n string, v []byte) error {
		err := unix.Lsetxattr(path, n, v, 0)
		if isLink && errors.Is(err, unix.EPERM) {
			return nil // user.* xattrs cannot exist on symlinks anyway
		}
		return err
	}); err != nil {
		return err
	}
	return dir.Lutimes(name, m.atime, m.mtime)
}

func (r *receiver) link(p []byte) error {
	d := &dec{b: p}
	name, err := d.str16(maxName)
	if err != nil {
		return err
	}
	id := d.u64()
	if err := d.done(recLink); err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	if id >= uint64(len(r.linkables)) {
		return corrupt("hard link %q to entry %d, not one received before it", name, id)
	}
	if err := r.hold(len(name)); err != nil {
		return err
	}
	r.links = append(r.links, hardLink{first: r.linkables[id], link: linkName{r.cur().node, name}})
	r.stats.HardLinks++
	return nil
}

// trailer verifies the counts and the hash, then finishes the tree: hard
// links, then every directory's metadata.
func (r *receiver) trailer(p []byte) error {
	d := &dec{b: p}
	sent := d.stats()
	if err := d.done(recTrailer); err != nil {
		return err
	}
	want := r.h.Sum(nil)
	got := make([]byte, sha256.Size)
	if err := readFull(r.br, got); err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return corrupt("SHA-256 of the stream is %x, its trailer says %x", want, got)
	}
	if sent != r.stats {
		return corrupt("the trailer counts %+v, the stream held %+v", sent, r.stats)
	}
	if err := r.makeLinks(); err != nil {
		return err
	}
	// Directories last, deepest first: writing inside a directory changes
	// its mtime, and a read-only mode would stop the writes.
	return setDirMeta(r.root, r.top)
}

// makeLinks makes the hard links, each relative to the destination's root.
func (r *receiver) makeLinks() error {
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
		var d *beneath.Dir
		var err error
		if n.parent == nil {
			d = r.root.Retain()
		} else if d, err = r.root.OpenDir(n.rel()); err != nil {
			return nil, err
		}
		open[n] = d
		return d, nil
	}
	for _, l := range r.links {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		from, err := dirOf(l.first.dir)
		if err != nil {
			return err
		}
		to, err := dirOf(l.link.dir)
		if err != nil {
			return err
		}
		if err := from.Link(l.first.name, to, l.link.name); err != nil {
			return fmt.Errorf("hard link: %w", made(err))
		}
	}
	return nil
}

// setDirMeta gives each directory below and at d its metadata, children
// before their parent.
func setDirMeta(d *beneath.Dir, n *dirNode) error {
	for _, child := range n.children {
		sub, err := d.OpenChild(child.name)
		if err != nil {
			return err
		}
		err = setDirMeta(sub, child)
		sub.Close()
		if err != nil {
			return err
		}
	}
	if err := unix.Fchown(d.Fd(), int(n.meta.uid), int(n.meta.gid)); err != nil {
		return fmt.Errorf("chown %s: %w", d.Path(), err)
	}
	if err := unix.Fchmod(d.Fd(), n.meta.mode&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", d.Path(), err)
	}
	if err := beneath.Futimens(d.Fd(), n.meta.atime, n.meta.mtime); err != nil {
		return fmt.Errorf("set times of %s: %w", d.Path(), err)
	}
	return nil
}
