package nfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// The subdirectories of an export belong to tenants (a volume's pods write
// there as root when the export allows it): every path below the share is
// reached through directory descriptors (package beneath), one component at
// a time, never through a symlink, so a tenant who swaps a directory for a
// symlink cannot steer the driver out of the share.

func (x *Export) openRoot() (*beneath.Dir, error) {
	root, err := beneath.OpenRootWith(x.Root, x.b.treeOptions())
	if err != nil {
		return nil, fmt.Errorf("open export %s: %w", x.Name(), err)
	}
	return root, nil
}

// treeOptions are how the trees of the backend's exports behave.
func (b *Backend) treeOptions() beneath.Options {
	return beneath.Options{RefuseRenameFlags: b.opts.RefuseRenameFlags}
}

// ErrNotOurs: a volume's subdirectory is already there, and the driver did
// not make it for this volume nor was it handed to it (retained data of
// the same claim): someone's data, another share's root, a directory made
// by hand. A create never takes it.
var ErrNotOurs = errors.New("the directory already exists and was not made for this volume")

// ErrHoldsShare: a tree holds a .hostpath-csi directory, the records of a
// share whose root lies inside it (another StorageClass's export), or
// reaching it crosses into another mount. The driver neither takes such a
// tree into a volume, nor archives it, nor deletes it.
var ErrHoldsShare = errors.New("holds a " + ids.HiddenDir + " directory: the records and volumes of another share whose root lies inside it")

// openParent opens the directory that holds subDir (creating the missing
// ones, mode 0755, when create) and returns it with subDir's last component.
// When create, a directory on the way that holds a .hostpath-csi (the root
// of another share) is ErrHoldsShare: a volume made there would lie among
// that share's volumes, and theirs inside it.
func (x *Export) openParent(subDir string, create bool) (*beneath.Dir, string, error) {
	dir, err := x.openRoot()
	if err != nil {
		return nil, "", err
	}
	parts := strings.Split(subDir, "/")
	for i, p := range parts[:len(parts)-1] {
		if create {
			if err := dir.Mkdir(p, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				dir.Close()
				return nil, "", err
			}
		}
		next, err := dir.OpenDir(p)
		dir.Close()
		if err != nil {
			return nil, "", err
		}
		dir = next
		if create {
			if err := refuseShareRoot(dir, strings.Join(parts[:i+1], "/")); err != nil {
				dir.Close()
				return nil, "", err
			}
		}
	}
	return dir, parts[len(parts)-1], nil
}

// refuseShareRoot is ErrHoldsShare if dir (shown as rel) holds a
// .hostpath-csi directory.
func refuseShareRoot(dir *beneath.Dir, rel string) error {
	st, err := dir.Lstat(ids.HiddenDir)
	switch {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		return fmt.Errorf("%s %w", rel, ErrHoldsShare)
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	}
	return err
}

// openSubDir opens subDir itself, walking from the share's root through
// directory descriptors (no symlink followed).
func (x *Export) openSubDir(subDir string) (*beneath.Dir, error) {
	parent, name, err := x.openParent(subDir, false)
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	return parent.OpenDir(name)
}

// MakeNewDir creates subDir (and its missing parents) for a new volume and
// applies mode when it is not nil. A directory already there is taken only
// if it is empty (the driver's own, made by an attempt killed before it
// recorded the volume ready: no pod has written there yet); one that holds
// anything is ErrNotOurs and is left as it is.
func (x *Export) MakeNewDir(ctx context.Context, subDir string, mode *os.FileMode) error {
	return x.makeDir(ctx, subDir, mode, false)
}

// MakeOwnDir is MakeNewDir for a create's first mkdir, which the create
// looked for and did not find: a directory there now was made by someone
// else meanwhile (another share's root being made, say) and is ErrNotOurs,
// even empty.
func (x *Export) MakeOwnDir(ctx context.Context, subDir string, mode *os.FileMode) error {
	return x.makeDir(ctx, subDir, mode, true)
}

func (x *Export) makeDir(ctx context.Context, subDir string, mode *os.FileMode, exclusive bool) error {
	err := x.do(ctx, "create "+subDir, func() error {
		parent, name, err := x.openParent(subDir, true)
		if err != nil {
			return err
		}
		defer parent.Close()
		existed := false
		if err := parent.Mkdir(name, 0o755); errors.Is(err, unix.EEXIST) {
			if exclusive {
				return fmt.Errorf("%s: %w (it was made by someone else while this volume was being created)", subDir, ErrNotOurs)
			}
			existed = true
		} else if err != nil {
			return err
		}
		d, err := parent.OpenDir(name) // a directory, reached without a symlink
		if err != nil {
			return err
		}
		defer d.Close()
		if existed {
			if err := refuseShareRoot(d, subDir); err != nil {
				return err
			}
			names, err := d.ReadNames()
			if err != nil {
				return err
			}
			if len(names) > 0 {
				return fmt.Errorf("%s: %w (it holds %d or more entries, such as %q)", subDir, ErrNotOurs, len(names), names[0])
			}
		}
		if mode != nil {
			if err := parent.Chmod(name, unixMode(*mode)); err != nil {
				return err
			}
		}
		return unix.Fsync(parent.Fd())
	})
	if err != nil {
		return fmt.Errorf("create %s on %s: %w", subDir, x.Name(), err)
	}
	return nil
}

// TakeOverDir takes subDir, retained data handed to a new volume, into the
// volume, as it is: its mode is left as its owner set it (mountPermissions
// is the mode of a new directory). The caller has checked that the tree
// holds no other share (CheckNoShareInside, which may take long: it is
// kept apart); its top is checked again here. A subDir that is gone
// (removed by hand) is made anew, with mode; adopted says which it was.
func (x *Export) TakeOverDir(ctx context.Context, subDir string, mode *os.FileMode) (adopted bool, err error) {
	exists, err := x.DirExists(ctx, subDir)
	if err != nil {
		return false, err
	}
	if !exists {
		return false, x.MakeNewDir(ctx, subDir, mode)
	}
	err = x.do(ctx, "take over "+subDir, func() error {
		parent, name, err := x.openParent(subDir, true)
		if err != nil {
			return err
		}
		defer parent.Close()
		d, err := parent.OpenDir(name)
		if err != nil {
			return err
		}
		defer d.Close()
		return refuseShareRoot(d, subDir)
	})
	if err != nil {
		return false, fmt.Errorf("take over %s on %s: %w", subDir, x.Name(), err)
	}
	return true, nil
}

func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		u |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		u |= unix.S_ISVTX
	}
	return u
}

// HoldsShareRecords reports whether subDir holds a .hostpath-csi directory
// of its own: it is the root of another share.
func (x *Export) HoldsShareRecords(ctx context.Context, subDir string) (bool, error) {
	var holds bool
	err := x.lookUp(ctx, subDir, func(d *beneath.Dir) {
		holds = errors.Is(refuseShareRoot(d, subDir), ErrHoldsShare)
	})
	return holds, err
}

// DirExists reports whether subDir is a directory on the export.
func (x *Export) DirExists(ctx context.Context, subDir string) (bool, error) {
	var ok bool
	err := x.lookUp(ctx, subDir, func(*beneath.Dir) { ok = true })
	return ok, err
}

// lookUp calls fn with subDir's directory, opened as a file operation on
// the export; a subDir that is not there is no error, and fn is not called.
func (x *Export) lookUp(ctx context.Context, subDir string, fn func(d *beneath.Dir)) error {
	return x.do(ctx, "look up "+subDir, func() error {
		d, err := x.openSubDir(subDir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer d.Close()
		fn(d)
		return nil
	})
}

// RemoveDirIfEmpty removes subDir if it is an empty directory; one that
// holds anything, or is not there, is left alone.
func (x *Export) RemoveDirIfEmpty(ctx context.Context, subDir string) error {
	return x.do(ctx, "remove empty "+subDir, func() error {
		parent, name, err := x.openParent(subDir, false)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer parent.Close()
		err = parent.Unlink(name, unix.AT_REMOVEDIR)
		if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTDIR) {
			return nil
		}
		return err
	})
}

// RemoveDir removes subDir: it is moved into trash/ at once (a delete is
// then done as far as anyone can see) and its tree removed after, in the
// background, through descriptors. What a crash leaves in trash/ is removed
// at the next process's first use of the export (see PurgeTrash). Nothing
// above subDir is touched.
func (x *Export) RemoveDir(ctx context.Context, subDir, trashName string) error {
	err := x.do(ctx, "remove "+subDir, func() error {
		parent, name, err := x.openParent(subDir, false)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer parent.Close()
		trash, err := x.sub(dirTrash)
		if err != nil {
			return err
		}
		defer trash.Close()
		err = parent.RenameNoReplace(name, trash, trashName)
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("move %s to the trash: %w", subDir, err)
		}
		if err := unix.Fsync(parent.Fd()); err != nil {
			return err
		}
		return unix.Fsync(trash.Fd())
	})
	if err != nil {
		return fmt.Errorf("delete %s on %s: %w", subDir, x.Name(), err)
	}
	x.b.purgeTrash(x)
	return nil
}

// ArchiveDir renames subDir to archived-<subDir with '/' as '-'>-<UTC time>
// in the share's root and returns that name; a missing subDir is not an
// error ("" is returned).
func (x *Export) ArchiveDir(ctx context.Context, subDir string, now time.Time) (string, error) {
	var archived string
	err := x.do(ctx, "archive "+subDir, func() error {
		parent, name, err := x.openParent(subDir, false)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		defer parent.Close()
		root, err := x.openRoot()
		if err != nil {
			return err
		}
		defer root.Close()
		for n := 0; n < 100; n++ {
			to := archiveName(subDir, now, n)
			err = parent.RenameNoReplace(name, root, to)
			if errors.Is(err, unix.EEXIST) {
				continue
			}
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("rename %s to %s: %w", subDir, to, err)
			}
			archived = to
			if err := unix.Fsync(parent.Fd()); err != nil {
				return err
			}
			return unix.Fsync(root.Fd())
		}
		return fmt.Errorf("rename %s: every archive name for %s is taken", subDir, now.UTC())
	})
	if err != nil {
		return "", fmt.Errorf("archive %s on %s: %w", subDir, x.Name(), err)
	}
	return archived, nil
}

// purgeTrash removes what is in the export's trash/, in the background,
// holding the export mounted meanwhile.
func (b *Backend) purgeTrash(x *Export) {
	e := x.e
	if !e.purging.CompareAndSwap(false, true) {
		e.purgeAgain.Store(true)
		return
	}
	held, err := b.Use(context.Background(), x.Server(), x.Share())
	if err != nil {
		e.purging.Store(false)
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer held.Release()
		held.purgeLoop()
	}()
}

// PurgeTrash removes, before it returns, what a delete left in trash/: the
// data of volumes deleted by a controller killed before its background
// removal ended. The first use of an export by a process runs it, so such
// data does not wait for the next delete on the export. If a removal
// already runs, it is asked to look again instead.
func (x *Export) PurgeTrash() {
	e := x.e
	if !e.purging.CompareAndSwap(false, true) {
		e.purgeAgain.Store(true)
		return
	}
	x.purgeLoop()
}

// purgeLoop empties trash/ until no delete asked for another round; the
// caller has set e.purging.
func (x *Export) purgeLoop() {
	e := x.e
	for {
		e.purgeAgain.Store(false)
		if err := x.emptyTrash(); err != nil {
			klog.ErrorS(err, "Cannot remove a deleted volume's data; the next use of this export retries", "export", x.Name())
		}
		e.purging.Store(false)
		if !e.purgeAgain.Load() || !e.purging.CompareAndSwap(false, true) {
			return
		}
	}
}

// emptyTrash removes every entry of trash/, through descriptors. Each
// step (a listing, an unlink, an open) runs under the guard, as every
// other operation on the export: a server that stops answering mid-purge
// costs one timeout, marks the export stuck, and the purge stops (the next
// use of the export retries), instead of holding the purge, and whoever
// waits for it, forever. A large tree on a healthy server takes as long as
// it takes: only a single step is bounded.
func (x *Export) emptyTrash() error {
	ctx := context.Background()
	var trash *beneath.Dir
	var names []string
	err := x.do(ctx, "list "+dirTrash, func() error {
		t, err := x.sub(dirTrash)
		if err != nil {
			return err
		}
		if names, err = t.Names(); err != nil {
			t.Close()
			return err
		}
		trash = t
		return nil
	})
	if err != nil {
		return fmt.Errorf("list %s on %s: %w", dirTrash, x.Name(), err)
	}
	defer trash.Close()
	step := func(op func() error) error { return x.do(ctx, "remove from "+dirTrash, op) }
	var errs []error
	for _, n := range names {
		if err := beneath.RemoveTreeAtSteps(trash, n, step); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path.Join(dirTrash, n), err))
			if errors.Is(err, ErrTimeout) || errors.Is(err, ErrBusy) {
				break // the server stopped answering: no use trying the rest
			}
		}
	}
	return errors.Join(errs...)
}

// WaitIdle waits for background removals, at most the timeout: a removal
// stuck on a dead server must not hold up a shutdown forever (its data
// stays in trash/, which the next process to use the export, or the next
// delete on it, removes).
func (b *Backend) WaitIdle() {
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(b.opts.Timeout):
		klog.InfoS("Background removal of deleted NFS volumes still runs; not waiting for it any longer", "waited", b.opts.Timeout)
	}
}
