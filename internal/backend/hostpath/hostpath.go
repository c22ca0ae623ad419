// Package hostpath keeps volumes as directories under a data directory on the
// node. Layout, all created by New:
//
//	<data>/volumes/<id>      one directory per volume
//	<data>/snapshots/<id>    one directory per snapshot
//	<data>/partial/<id>      copies in progress (snapshot, restore, clone);
//	                         renamed into place when complete, emptied at start
//	<data>/trash/<id>.<n>    volumes and snapshots being removed (emptied in
//	                         the background and at every start)
//	<data>/quarantine/<id>.<unix time>   directories found without a record;
//	                         kept for an operator, never deleted by the driver
//
// Every path is built from an ID that the caller validated; Lstat checks make
// sure a planted symlink is never followed, and nothing mounted inside a volume
// is ever descended into when deleting.
package hostpath

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/copytree"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
	"github.com/hostpath-csi/hostpath-csi/internal/quota"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ErrMountedInside is returned by Delete when something is mounted inside the
// volume directory: removing it would reach into another filesystem.
var ErrMountedInside = errors.New("a filesystem is mounted inside the volume")

// ErrNestedSubvolumes is returned for a copy of a btrfs volume that holds
// subvolumes of its own, which a snapshot would leave out.
var ErrNestedSubvolumes = errors.New("the volume holds btrfs subvolumes made inside it, which a snapshot leaves out; remove them (btrfs subvolume delete) to snapshot or clone it")

// ErrNotDirectory is returned when a volume path exists but is not a plain
// directory (for example a symlink planted in its place).
var ErrNotDirectory = errors.New("volume path is not a directory")

// umask is the process's file mode creation mask, read once at start-up
// (reading it means setting it, so it is put straight back).
var umask = func() fs.FileMode {
	m := unix.Umask(0o022)
	unix.Umask(m)
	return fs.FileMode(m)
}()

// Backend manages directory volumes under one data directory.
type Backend struct {
	root       string
	volumes    string
	snapshots  string
	partial    string
	trash      string
	quarantine string

	// btrfs: volumes are subvolumes, and snapshots, restores and clones
	// of a subvolume are subvolume snapshots.
	btrfs bool
	// dirLimit is what holds a new directory volume to its size here,
	// proven at start-up; dirLimitWhy says why when nothing does.
	dirLimit, dirLimitWhy string
	// reflink: the data filesystem shares blocks between files.
	reflink bool
	// freezeMarkers: see Options.FreezeMarkers.
	freezeMarkers string
	// syncSeen: see Options.SyncSeen.
	syncSeen func(kind, path string)

	trashSeq atomic.Uint64
	cleaning sync.WaitGroup
}

// New prepares the layout under root. root is resolved once, so a data
// directory reached through a symlink works, and every later path is built
// lexically from the resolved root.
func New(root string, opts Options) (*Backend, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	resolved, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("resolve data directory: %w", err)
	}
	b := &Backend{
		root:       resolved,
		volumes:    filepath.Join(resolved, "volumes"),
		snapshots:  filepath.Join(resolved, "snapshots"),
		partial:    filepath.Join(resolved, "partial"),
		trash:      filepath.Join(resolved, "trash"),
		quarantine: filepath.Join(resolved, "quarantine"),

		freezeMarkers: opts.FreezeMarkers,
		syncSeen:      opts.SyncSeen,
	}
	if b.btrfs, err = btrfs.IsBtrfs(resolved); err != nil {
		return nil, err
	}
	for _, d := range []string{b.volumes, b.snapshots, b.partial, b.trash, b.quarantine} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
		if err := requireDir(d); err != nil {
			return nil, err
		}
	}
	b.probeDirectoryLimits(opts)
	return b, nil
}

// FreezeMarkers is where a freeze of an image's filesystem leaves its
// marker (see Options.FreezeMarkers).
func (b *Backend) FreezeMarkers() string { return b.freezeMarkers }

// WithFrozen runs fn with the image filesystems mounted at mountPaths frozen,
// each with its marker in FreezeMarkers while it is (see imagefs.WithFrozen).
func (b *Backend) WithFrozen(mountPaths []string, fn func() error) error {
	return imagefs.WithFrozen(b.freezeMarkers, mountPaths, fn)
}

// ThawMarked thaws the filesystems whose markers a killed process left in
// markerDir (the Options.FreezeMarkers of the backend it ran), and returns
// their mount paths (see imagefs.ThawMarked). It needs no Backend: a pod
// writing to a filesystem left frozen hangs, so it runs first of all.
func ThawMarked(markerDir string) ([]string, error) { return imagefs.ThawMarked(markerDir) }

// Root is the resolved data directory.
func (b *Backend) Root() string { return b.root }

// Path is where the volume's data lives. id must have been validated.
func (b *Backend) Path(id string) string { return filepath.Join(b.volumes, id) }

// Create makes the volume directory with the given mode. It is idempotent:
// an existing directory is kept (and its mode set), so a retried create after
// a crash finishes the job.
func (b *Backend) Create(id string, mode fs.FileMode) error {
	p := b.Path(id)
	var err error
	if b.btrfs {
		// A subvolume, so that its snapshots are one metadata operation.
		// On a retry it already exists: keep it, and still set the mode.
		if err := btrfs.CreateSubvolume(p); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create volume subvolume: %w", err)
		}
		if err := requireDir(p); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return fmt.Errorf("set volume directory mode: %w", err)
		}
		// A new subvolume is on disk only once its transaction commits.
		return b.syncFS(p)
	}
	err = os.Mkdir(p, mode)
	switch {
	case errors.Is(err, fs.ErrExist):
		// A retry: keep what is there, if it is a real directory.
		if err := requireDir(p); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("create volume directory: %w", err)
	case mode&(umask|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) == 0:
		// mkdir gave exactly this mode
		return b.syncDirs(p, b.volumes)
	}
	// Mkdir applies the umask and drops special bits; the volume's mode is
	// what the class asked for.
	if err := os.Chmod(p, mode); err != nil {
		return fmt.Errorf("set volume directory mode: %w", err)
	}
	// The caller records the volume as ready next: the directory and its
	// entry in volumes/ must survive a power cut before that.
	return b.syncDirs(p, b.volumes)
}

// Exists reports whether the volume directory is present. A symlink or a file
// in its place is reported as ErrNotDirectory.
func (b *Backend) Exists(id string) (bool, error) {
	err := requireDir(b.Path(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// Delete moves the volume directory to the trash and removes it in the
// background; a missing directory is not an error. It refuses when anything is
// mounted inside the volume, so a delete can never reach into another
// filesystem through a planted mount. An image or block volume's file goes
// first, at once: its blocks are preallocated, and the room a delete gives
// back must be free on disk when the delete returns, for the next create.
func (b *Backend) Delete(id string) error {
	img := b.ImagePath(id)
	if fi, err := os.Lstat(img); err == nil && fi.Mode().IsRegular() {
		if err := os.Remove(img); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove volume file: %w", err)
		}
	}
	return b.discard(b.Path(id))
}

// DeleteSnapshot is Delete for a snapshot's data.
func (b *Backend) DeleteSnapshot(id string) error { return b.discard(b.SnapshotPath(id)) }

func (b *Backend) discard(p string) error {
	if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
		// Gone already (a retry); a rename to the trash that an earlier
		// attempt made may not be on disk yet.
		return b.syncDirs(filepath.Dir(p))
	}
	mounted, err := MountsUnder(p)
	if err != nil {
		return err
	}
	if len(mounted) > 0 {
		return fmt.Errorf("%w: %v", ErrMountedInside, mounted)
	}
	dst := filepath.Join(b.trash, filepath.Base(p)+"."+strconv.FormatUint(b.trashSeq.Add(1), 10))
	for try := 0; ; try++ {
		err := os.Rename(p, dst)
		if err == nil {
			break
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		// A btrfs volume's subvolume belongs to whoever owns its root
		// directory, and a pod running as that user (root, even with no
		// capability) may make it read-only, which no rename passes.
		// The pod's mount may outlive its unpublish: it can set the flag
		// again, so a few tries.
		if b.btrfs && errors.Is(err, unix.EROFS) && try < 3 {
			if sub, serr := btrfs.IsSubvolume(p); serr == nil && sub {
				if cerr := btrfs.ClearReadOnly(p); cerr != nil {
					return fmt.Errorf("move to trash: %w (and making the subvolume writable again: %v)", err, cerr)
				}
				continue
			}
		}
		return fmt.Errorf("move to trash: %w", err)
	}
	// The caller drops the record next. If this rename were lost in a power
	// cut, the data would come back without an owner (and be quarantined).
	// What must last is the entry gone from its directory; where the data
	// lands does not matter (it is being removed).
	if err := b.syncDirs(filepath.Dir(p)); err != nil {
		return err
	}
	b.cleaning.Add(1)
	go func() {
		defer b.cleaning.Done()
		b.removeTrashEntry(dst)
	}()
	return nil
}

// SnapshotPath is where a snapshot's data lives. id must have been validated.
func (b *Backend) SnapshotPath(id string) string { return filepath.Join(b.snapshots, id) }

// SnapshotExists reports whether a snapshot's data directory is present.
func (b *Backend) SnapshotExists(id string) (bool, error) {
	err := requireDir(b.SnapshotPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// CopyResult says how a snapshot, restore or clone was made.
type CopyResult struct {
	// Mechanism: "btrfs-snapshot", "reflink", "copy" or "mixed".
	Mechanism string
	// Files and Bytes copied (zero for a btrfs snapshot, which copies none).
	Files, Bytes int64
}

// Snapshot copies a volume into a new snapshot, fastest mechanism first.
// The copy goes to partial/ and is renamed into snapshots/ only when
// complete, so a snapshot directory is never half made.
// freeze lists the mounts of the volume's filesystem image to freeze while
// it is copied, so the copy is one point in time even while pods write
// (nil for a directory volume, or a caller that froze them already).
func (b *Backend) Snapshot(ctx context.Context, volumeID, snapshotID string, freeze []string) (CopyResult, error) {
	return b.copyInto(ctx, b.Path(volumeID), b.SnapshotPath(snapshotID), snapshotID, freeze)
}

// Restore makes volume volumeID from snapshot snapshotID.
func (b *Backend) Restore(ctx context.Context, snapshotID, volumeID string) (CopyResult, error) {
	return b.copyInto(ctx, b.SnapshotPath(snapshotID), b.Path(volumeID), volumeID, nil)
}

// Clone makes volume volumeID as a copy of volume sourceID; freeze as for
// Snapshot.
func (b *Backend) Clone(ctx context.Context, sourceID, volumeID string, freeze []string) (CopyResult, error) {
	return b.copyInto(ctx, b.Path(sourceID), b.Path(volumeID), volumeID, freeze)
}

// RestoreFrom makes volume volumeID as a copy of src, a directory the
// caller opened and trusts the place of (a snapshot of a hostpath volume
// kept on an NFS export), as Restore does: the copy is partial/<volumeID>
// until it is complete and on disk, then renamed into place; on error
// nothing of it is left. The copy is file by file (nothing is shared with
// a source on another filesystem): on btrfs the volume is a directory, not
// a subvolume.
func (b *Backend) RestoreFrom(ctx context.Context, src *beneath.Dir, volumeID string) (CopyResult, error) {
	return b.copyWith(ctx, src.Path(), b.Path(volumeID), volumeID, nil, func(tmp string) (CopyResult, error) {
		st, err := copytree.TreeFrom(ctx, src, tmp, copyOptions())
		return CopyResult{Mechanism: string(st.Mechanism()), Files: st.Files, Bytes: st.Bytes}, err
	})
}

func (b *Backend) copyInto(ctx context.Context, src, dst, id string, freeze []string) (CopyResult, error) {
	if err := requireDir(src); err != nil {
		return CopyResult{}, fmt.Errorf("copy source: %w", err)
	}
	return b.copyWith(ctx, src, dst, id, freeze, func(tmp string) (CopyResult, error) { return b.copyTree(ctx, src, tmp) })
}

// copyWith makes dst by copy into partial/<id>, then a rename: see copyInto.
// src names the source in messages.
func (b *Backend) copyWith(ctx context.Context, src, dst, id string, freeze []string, copy func(tmp string) (CopyResult, error)) (CopyResult, error) {
	tmp := filepath.Join(b.partial, id)
	if err := b.remove(tmp); err != nil { // a previous attempt's leftovers
		return CopyResult{}, err
	}
	var res CopyResult
	err := imagefs.WithFrozen(b.freezeMarkers, freeze, func() (err error) {
		res, err = copy(tmp)
		return err
	})
	if err == nil {
		// Every file, directory and btrfs snapshot of the copy on disk
		// before it is moved into place and the caller records it ready:
		// after a power cut a ready snapshot must not hold empty files.
		err = b.syncFS(tmp)
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err == nil {
		err = b.syncDirs(filepath.Dir(dst), b.partial)
	}
	if err != nil {
		if rmErr := b.remove(tmp); rmErr != nil {
			klog.ErrorS(rmErr, "Cannot remove a failed copy; it is removed at the next start", "path", tmp)
		}
		return res, fmt.Errorf("copy %s: %w", filepath.Base(src), err)
	}
	klog.V(2).InfoS("Copied", "from", src, "to", dst, "mechanism", res.Mechanism, "files", res.Files, "bytes", res.Bytes)
	return res, nil
}

// copyTree takes a btrfs snapshot of a subvolume, and otherwise copies file
// by file (reflink first).
func (b *Backend) copyTree(ctx context.Context, src, dst string) (CopyResult, error) {
	if b.btrfs {
		mounted, err := MountsUnder(src)
		if err != nil {
			return CopyResult{}, err
		}
		if sub, err := btrfs.IsSubvolume(src); err == nil && sub && len(mounted) == 0 {
			// A snapshot leaves out subvolumes a pod made inside its
			// volume, and reports nothing: refuse rather than make a
			// snapshot that silently lacks them.
			if nested, err := quota.HasNestedSubvolumes(src); err != nil {
				return CopyResult{}, err
			} else if nested {
				return CopyResult{}, ErrNestedSubvolumes
			}
			if err := btrfs.Snapshot(src, dst); err != nil {
				return CopyResult{}, err
			}
			// And again after: one made between the look and the
			// snapshot is left out of it too (the caller removes dst).
			if nested, err := quota.HasNestedSubvolumes(src); err != nil {
				return CopyResult{}, err
			} else if nested {
				return CopyResult{}, ErrNestedSubvolumes
			}
			return CopyResult{Mechanism: "btrfs-snapshot"}, nil
		}
	}
	st, err := copytree.Tree(ctx, src, dst, copyOptions())
	return CopyResult{Mechanism: string(st.Mechanism()), Files: st.Files, Bytes: st.Bytes}, err
}

// copyOptions are a file-by-file copy's: nice 10, so that a long copy does
// not slow calls on other volumes; at most 8 workers, since a copy is bound
// by the disk and each worker holds a thread of its own.
func copyOptions() copytree.Options {
	return copytree.Options{Nice: 10, Workers: min(8, max(2, runtime.NumCPU()))}
}

// remove deletes a tree this backend made: a btrfs subvolume at once, with
// the subvolumes a pod made inside it, a directory file by file without
// entering mounts.
func (b *Backend) remove(p string) error {
	if b.btrfs {
		if sub, err := btrfs.IsSubvolume(p); err == nil && sub {
			err := btrfs.DeleteSubvolumeTree(p, b.trash)
			if err == nil || errors.Is(err, unix.ENOENT) {
				return nil
			}
			// Remove what is there file by file instead.
			klog.V(2).InfoS("Subvolume delete failed; removing file by file", "path", p, "err", err)
		}
	}
	return removeTree(p)
}

// ListSnapshots returns the names of all entries in the snapshots directory.
func (b *Backend) ListSnapshots() ([]string, error) { return listDir(b.snapshots) }

// QuarantineSnapshot is Quarantine for the snapshots directory.
func (b *Backend) QuarantineSnapshot(name string) (string, error) {
	return b.quarantineFrom(b.snapshots, name)
}

// Leftover is an entry of partial/ (a snapshot, restore or clone cut short)
// or of trash/ (a delete cut short), found at start-up.
type Leftover struct {
	Path string
	// ID is the volume or snapshot ID the entry was made for (its name up
	// to the first dot); the caller validates it before using it.
	ID string
	// Trash is true for a trash entry, false for a partial copy.
	Trash bool
}

// Leftovers lists what partial/ and trash/ hold.
func (b *Backend) Leftovers() ([]Leftover, error) {
	var out []Leftover
	for _, dir := range []string{b.partial, b.trash} {
		names, err := listDir(dir)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			id, _, _ := strings.Cut(n, ".")
			out = append(out, Leftover{Path: filepath.Join(dir, n), ID: id, Trash: dir == b.trash})
		}
	}
	return out, nil
}

// AdoptVolume moves a leftover into place as the data of volume l.ID, whose
// record says it is ready while its directory is missing: a copy whose move
// into place did not reach the disk. It never replaces an existing entry.
func (b *Backend) AdoptVolume(l Leftover) error { return b.adopt(l, b.volumes) }

// AdoptSnapshot is AdoptVolume for a snapshot's data.
func (b *Backend) AdoptSnapshot(l Leftover) error { return b.adopt(l, b.snapshots) }

func (b *Backend) adopt(l Leftover, dir string) error {
	if l.ID == "" || l.ID != filepath.Base(l.ID) || strings.HasPrefix(l.ID, ".") {
		return fmt.Errorf("adopt %s: bad ID %q", l.Path, l.ID)
	}
	if err := requireDir(l.Path); err != nil {
		return fmt.Errorf("adopt %s: %w", l.Path, err)
	}
	dst := filepath.Join(dir, l.ID)
	if err := unix.Renameat2(unix.AT_FDCWD, l.Path, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("move %s into place at %s: %w", l.Path, dst, err)
	}
	return b.syncDirs(dir, filepath.Dir(l.Path))
}

// RemoveLeftover removes a leftover and everything in it.
func (b *Backend) RemoveLeftover(l Leftover) error {
	if err := b.remove(l.Path); err != nil {
		return fmt.Errorf("remove %s: %w", l.Path, err)
	}
	return nil
}

// WaitIdle waits until background removals are finished.
func (b *Backend) WaitIdle() { b.cleaning.Wait() }

func (b *Backend) removeTrashEntry(p string) {
	start := time.Now()
	if err := b.remove(p); err != nil {
		klog.ErrorS(err, "Cannot remove deleted volume data; it stays in the trash and is retried at the next start", "path", p)
		return
	}
	klog.V(4).InfoS("Removed deleted volume data", "path", p, "duration", time.Since(start))
}

// List returns the names of all entries in the volumes directory.
func (b *Backend) List() ([]string, error) { return listDir(b.volumes) }

func listDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// Quarantine moves an entry of the volumes directory that has no owner out of
// the way, keeping its data for an operator, and returns where it went.
func (b *Backend) Quarantine(name string) (string, error) { return b.quarantineFrom(b.volumes, name) }

func (b *Backend) quarantineFrom(dir, name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("quarantine: bad entry name %q", name)
	}
	dst := filepath.Join(b.quarantine, name+"."+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(filepath.Join(dir, name), dst); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", name, err)
	}
	return dst, nil
}

// Usage is what a volume directory holds.
type Usage struct {
	Bytes  int64 // allocated bytes (st_blocks * 512), so sparse files count what they use
	Inodes int64
}

// Usage walks the volume without following symlinks or crossing into other
// filesystems.
func (b *Backend) Usage(id string) (Usage, error) { return usage(b.Path(id)) }

func usage(p string) (Usage, error) {
	root, err := beneath.OpenRoot(p)
	if err != nil {
		return Usage{}, fmt.Errorf("measure volume usage: %w", err)
	}
	defer root.Close()
	var u Usage
	// Through directory descriptors: a pod renaming a directory and a
	// symlink back and forth cannot make the walk count (or reach) anything
	// outside the volume. A mount inside the volume is not its usage.
	err = beneath.Walk(root, func(e *beneath.Entry) error {
		u.Bytes += int64(e.Stat.Blocks) * 512
		u.Inodes++
		return nil
	}, beneath.WalkOptions{SkipMounts: true})
	if err != nil {
		return Usage{}, fmt.Errorf("measure volume usage: %w", err)
	}
	return u, nil
}

// FSStats are the data directory filesystem's totals.
type FSStats struct {
	TotalBytes, AvailableBytes int64
	TotalInodes, FreeInodes    int64
}

// Stats reports the data directory's filesystem. Available bytes come from
// f_bavail, what an unprivileged writer (a pod) can really use, not f_bfree.
func (b *Backend) Stats() (FSStats, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(b.root, &st); err != nil {
		return FSStats{}, fmt.Errorf("statfs %s: %w", b.root, err)
	}
	return FSStats{
		TotalBytes:     int64(st.Blocks) * st.Bsize,
		AvailableBytes: int64(st.Bavail) * st.Bsize,
		TotalInodes:    int64(st.Files),
		FreeInodes:     int64(st.Ffree),
	}, nil
}

// CheckWritable proves the data directory accepts writes right now. A full
// filesystem (ENOSPC, EDQUOT) passes: the directory works, it is only full,
// and restarting the driver would not help; Stats tells how full it is.
func (b *Backend) CheckWritable() error {
	f, err := os.CreateTemp(b.root, ".probe-*")
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("data directory %s is not writable: %w", b.root, err)
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

// MountsUnder lists mount points strictly below dir.
func MountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	var under []string
	for _, m := range mounts {
		if m.Mountpoint != dir {
			under = append(under, m.Mountpoint)
		}
	}
	return under, nil
}

func requireDir(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: %w (mode %s)", p, ErrNotDirectory, fi.Mode().Type())
	}
	return nil
}
