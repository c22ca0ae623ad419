package beneath

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// removeDepth bounds how deep RemoveTree descends while holding a
// descriptor per level. A tenant controls its volume's shape: a tree deeper
// than the process may open descriptors (a few hundred MiB of nested
// directories) would otherwise never be removed, and each attempt would
// take every free descriptor of the driver.
const removeDepth = 64

// spillSeq numbers the subtrees RemoveTree moves up to remove them apart.
var spillSeq atomic.Uint64

// RemoveTree removes path and everything below it. Unlike os.RemoveAll it
// never enters another mount, not even a bind mount of the same filesystem
// (openat2 with RESOLVE_NO_XDEV fails with EXDEV at a mount point), and
// never follows a symlink. The check is made by the kernel as each
// directory is opened, so a mount that appears during the walk is seen too.
//
// It holds at most removeDepth directories open: a directory found deeper
// is moved up next to path (path must be in a directory the driver owns,
// such as a trash directory) and removed after, so any depth is removed with
// bounded descriptors. A moved subtree left by a crash is named ".deep-…",
// which start-up removes like any leftover.
func RemoveTree(path string) error {
	parentPath, name := filepath.Split(filepath.Clean(path))
	parent, err := OpenRoot(parentPath)
	if err != nil {
		return fmt.Errorf("open %s: %w", parentPath, err)
	}
	defer parent.Close()
	return RemoveTreeAt(parent, name)
}

// RemoveTreeAt is RemoveTree of the entry name of parent, a directory the
// caller opened (through descriptors from a root it trusts); deep subtrees
// are moved up into parent. A missing name is success.
func RemoveTreeAt(parent *Dir, name string) error {
	return RemoveTreeAtSteps(parent, name, func(op func() error) error { return op() })
}

// RemoveTreeAtSteps is RemoveTreeAt with each system call (an unlink, an
// open, a read of names, a rename) run through step: a caller on a file
// system that can stop answering (NFS) bounds each step with its own
// timeout instead of the whole removal, which may legitimately take long.
func RemoveTreeAtSteps(parent *Dir, name string, step func(op func() error) error) error {
	if err := checkName(name); err != nil {
		return parent.errAt("remove", name, err)
	}
	queue := []string{name}
	spill := func(dir *Dir, child string) error {
		moved := ".deep-" + strconv.FormatUint(spillSeq.Add(1), 10) + "-" + name
		if err := step(func() error { return dir.RenameNoReplace(child, parent, moved) }); err != nil {
			return fmt.Errorf("move a deep directory of %s up to remove it: %w", parent.Path()+"/"+name, err)
		}
		queue = append(queue, moved)
		return nil
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		if err := removeAt(parent, n, parent.Path()+"/"+n, 0, spill, step); err != nil {
			return err
		}
	}
	return nil
}

func removeAt(dir *Dir, name, shown string, depth int, spill func(*Dir, string) error, step func(func() error) error) error {
	err := step(func() error { return dir.Unlink(name, 0) })
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrMountInside, shown)
		}
		return err
	}
	if depth >= removeDepth {
		return spill(dir, name)
	}
	var sub *Dir
	err = step(func() (err error) { sub, err = dir.OpenDir(name); return err })
	switch {
	case errors.Is(err, ErrMountInside):
		return fmt.Errorf("%w: %s", ErrMountInside, shown)
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return err
	}
	defer sub.Close()
	// A batch at a time: a directory of millions of entries is removed
	// without holding all their names.
	for {
		var names []string
		err := step(func() (err error) { names, err = sub.ReadNames(); return err })
		if err != nil {
			return err
		}
		if len(names) == 0 {
			break
		}
		for _, n := range names {
			childShown := shown + "/" + n
			if depth > 8 {
				childShown = shown // keep messages short in a deep tree
			}
			if err := removeAt(sub, n, childShown, depth+1, spill, step); err != nil {
				return err
			}
		}
	}
	if err := step(func() error { return dir.Unlink(name, unix.AT_REMOVEDIR) }); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrMountInside, shown)
		}
		return err
	}
	return nil
}
