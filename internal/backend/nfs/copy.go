package nfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/copytree"
)

// copyNice: copies yield the CPU to calls on other volumes.
const copyNice = 10

// A copy runs detached from its call (the driver's jobs) and may take far
// longer than the timeout, so it is not bounded by it as a whole: its
// start (the opens) is, and it ends when its context does. The kernel's NFS
// client still blocks a thread per file operation on a dead server; such a
// copy stays in flight, answered ABORTED to retries, until the server
// answers again or the copy is cancelled.

// Snapshot copies subDir into snapshots/<snapKey>/: to partial/ first, then,
// once every file is on the server (syncfs of the export), renamed into
// place. On error nothing of the snapshot is left.
func (x *Export) Snapshot(ctx context.Context, subDir, snapKey string) (copytree.Stats, error) {
	var src *beneath.Dir
	err := x.do(ctx, "open "+subDir, func() (err error) {
		src, err = x.openSubDir(subDir)
		return err
	})
	if err != nil {
		return copytree.Stats{}, fmt.Errorf("open %s on %s to snapshot it: %w", subDir, x.Name(), err)
	}
	defer src.Close()
	st, err := x.snapshotFrom(ctx, src, snapKey)
	if err != nil {
		return st, fmt.Errorf("snapshot %s on %s: %w", subDir, x.Name(), err)
	}
	return st, nil
}

// SnapshotFrom copies src, a directory outside the export that the caller
// opened and trusts (a hostpath volume of this node), into
// snapshots/<snapKey>/ as Snapshot does: partial/s-<snapKey> first, in
// place once on the server, nothing left on error. The caller keeps src
// unchanging meanwhile (its locks, a freeze).
func (x *Export) SnapshotFrom(ctx context.Context, src *beneath.Dir, snapKey string) (copytree.Stats, error) {
	st, err := x.snapshotFrom(ctx, src, snapKey)
	if err != nil {
		return st, fmt.Errorf("snapshot %s into %s: %w", src.Path(), x.Name(), err)
	}
	return st, nil
}

func (x *Export) snapshotFrom(ctx context.Context, src *beneath.Dir, snapKey string) (copytree.Stats, error) {
	return x.copyIn(ctx, src, "s-"+snapKey, func(partial *beneath.Dir, name string) error {
		snaps, err := x.sub(dirSnapshots)
		if err != nil {
			return err
		}
		defer snaps.Close()
		if err := moveDurably(partial, name, snaps, snapKey); err != nil {
			return fmt.Errorf("move the copy into place as snapshot %s: %w", snapKey, err)
		}
		return nil
	})
}

// OpenSnapshot opens the data of snapshot snapKey (snapshots/<snapKey>/),
// under the timeout, for a copy out of the export (a restore into a
// hostpath volume); the caller closes it.
func (x *Export) OpenSnapshot(ctx context.Context, snapKey string) (*beneath.Dir, error) {
	var d *beneath.Dir
	err := x.do(ctx, "open snapshot "+snapKey, func() (err error) {
		d, err = x.sub(path.Join(dirSnapshots, snapKey))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open snapshot %s on %s: %w", snapKey, x.Name(), err)
	}
	return d, nil
}

// Restore copies snapshot snapKey into subDir, which must not exist (its
// parents are created), and applies mode when it is not nil. key is the new
// volume's: its copy is partial/v-<key> until it is complete.
func (x *Export) Restore(ctx context.Context, snapKey, subDir, key string, mode *os.FileMode) (copytree.Stats, error) {
	var src *beneath.Dir
	err := x.do(ctx, "open snapshot "+snapKey, func() (err error) {
		src, err = x.sub(path.Join(dirSnapshots, snapKey))
		return err
	})
	if err != nil {
		return copytree.Stats{}, fmt.Errorf("open snapshot %s on %s: %w", snapKey, x.Name(), err)
	}
	defer src.Close()
	return x.copyToSubDir(ctx, src, subDir, key, mode)
}

// Clone copies the volume in srcSubDir into subDir, as Restore does.
func (x *Export) Clone(ctx context.Context, srcSubDir, subDir, key string, mode *os.FileMode) (copytree.Stats, error) {
	var src *beneath.Dir
	err := x.do(ctx, "open "+srcSubDir, func() (err error) {
		src, err = x.openSubDir(srcSubDir)
		return err
	})
	if err != nil {
		return copytree.Stats{}, fmt.Errorf("open %s on %s to clone it: %w", srcSubDir, x.Name(), err)
	}
	defer src.Close()
	return x.copyToSubDir(ctx, src, subDir, key, mode)
}

func (x *Export) copyToSubDir(ctx context.Context, src *beneath.Dir, subDir, key string, mode *os.FileMode) (copytree.Stats, error) {
	st, err := x.copyIn(ctx, src, "v-"+key, func(partial *beneath.Dir, copyName string) error {
		if mode != nil {
			if err := partial.Chmod(copyName, unixMode(*mode)); err != nil {
				return err
			}
		}
		parent, name, err := x.openParent(subDir, true)
		if err != nil {
			return err
		}
		defer parent.Close()
		if err := moveDurably(partial, copyName, parent, name); err != nil {
			return fmt.Errorf("move the copy into place at %s: %w", subDir, err)
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("copy into %s on %s: %w", subDir, x.Name(), err)
	}
	return st, nil
}

// copyIn copies src to partial/<name>, makes it durable and hands it to
// place (with partial/ open); on any error partial/<name> is removed.
func (x *Export) copyIn(ctx context.Context, src *beneath.Dir, name string, place func(partial *beneath.Dir, name string) error) (copytree.Stats, error) {
	var partial *beneath.Dir
	err := x.do(ctx, "clear "+path.Join(dirPartial, name), func() (err error) {
		if partial, err = x.sub(dirPartial); err != nil {
			return err
		}
		return beneath.RemoveTreeAt(partial, name)
	})
	if err != nil {
		if partial != nil {
			partial.Close()
		}
		return copytree.Stats{}, err
	}
	defer partial.Close()
	// The copy's destination is named through partial/'s descriptor: the
	// kernel resolves /proc/self/fd/N to that directory, not by its path.
	st, err := copytree.TreeFrom(ctx, src, "/proc/self/fd/"+strconv.Itoa(partial.Fd())+"/"+name, copytree.Options{Nice: copyNice})
	if err == nil {
		err = x.do(ctx, "sync the copy", func() error { return syncFS(x.Root) })
	}
	if err == nil {
		err = x.do(ctx, "move the copy into place", func() error { return place(partial, name) })
	}
	if err != nil {
		if rerr := x.do(context.Background(), "remove a failed copy", func() error { return beneath.RemoveTreeAt(partial, name) }); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return st, err
	}
	return st, nil
}

// removeHidden removes dir/name below the driver's directory, and its tree.
func (x *Export) removeHidden(dir, name string) error {
	d, err := x.sub(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := beneath.RemoveTreeAt(d, name); err != nil {
		return err
	}
	return unix.Fsync(d.Fd())
}

// RemoveSnapshotData removes snapshots/<snapKey> (and a partial copy of it).
func (x *Export) RemoveSnapshotData(ctx context.Context, snapKey string) error {
	return x.do(ctx, "remove snapshot "+snapKey, func() error {
		if err := x.removeHidden(dirPartial, "s-"+snapKey); err != nil {
			return err
		}
		return x.removeHidden(dirSnapshots, snapKey)
	})
}

// RemovePartial removes what a copy into a new volume left in partial/.
func (x *Export) RemovePartial(ctx context.Context, key string) error {
	return x.do(ctx, "remove partial copy", func() error { return x.removeHidden(dirPartial, "v-"+key) })
}

// Statfs is the export's usage.
func (x *Export) Statfs(ctx context.Context) (unix.Statfs_t, error) {
	var st unix.Statfs_t
	err := x.do(ctx, "statfs", func() error { return unix.Statfs(x.Root, &st) })
	return st, err
}

// syncFS flushes everything written through the export's mount to the
// server (on NFS: the client's dirty pages, then a COMMIT).
func syncFS(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s to sync it: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync the filesystem of %s: %w", path, err)
	}
	return nil
}

// NodeStats is statfs of a mounted volume under the timeout, for
// NodeGetVolumeStats.
func (b *Backend) NodeStats(ctx context.Context, export, path string) (unix.Statfs_t, error) {
	var st unix.Statfs_t
	err := b.guard.do(ctx, export, "statfs "+path, func() error { return unix.Statfs(path, &st) })
	return st, err
}

// MountVolume mounts source (server:/share/subDir) at target with the
// mount options, under the timeout.
func (b *Backend) MountVolume(ctx context.Context, export, source, target, fstype string, options []string) error {
	if err := b.guard.busy(export); err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, b.opts.Timeout)
	defer cancel()
	err := b.opts.Mounter.Mount(mctx, source, target, fstype, options)
	if err != nil && errors.Is(mctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		b.guard.markDown(export, "mount of "+source)
		return fmt.Errorf("%w: mount of %s did not finish within %s (the mount process was killed): %v", ErrTimeout, source, b.opts.Timeout, err)
	}
	if err == nil {
		b.guard.markUp(export)
	}
	return err
}

// Unmount unmounts target (a volume's staging or publish mount of export),
// forcing and detaching a mount whose server is dead or whose handle is
// stale.
func (b *Backend) Unmount(ctx context.Context, export, target string) error {
	return unmount(ctx, b.guard, export, target)
}

// IsMounted reports whether target is a mount point, from the mount table
// (no stat of a possibly dead mount).
func IsMounted(target string) (bool, error) { return isMounted(target) }

// Do runs fn as a file operation on export under the timeout.
func (b *Backend) Do(ctx context.Context, export, what string, fn func() error) error {
	return b.guard.do(ctx, export, what, fn)
}

// moveDurably renames from/name to to/newName, never over an existing
// entry, and makes both directories' entries durable: a copy is in place
// only once the server has the rename.
func moveDurably(from *beneath.Dir, name string, to *beneath.Dir, newName string) error {
	if err := from.RenameNoReplace(name, to, newName); err != nil {
		return err
	}
	if err := unix.Fsync(from.Fd()); err != nil {
		return fmt.Errorf("fsync %s's old directory: %w", newName, err)
	}
	if err := unix.Fsync(to.Fd()); err != nil {
		return fmt.Errorf("fsync %s's directory: %w", newName, err)
	}
	return nil
}
