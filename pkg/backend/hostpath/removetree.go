package hostpath

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/pkg/beneath"
)

// removeTree removes path and everything below it. Unlike os.RemoveAll it
// never enters another mount, not even a bind mount of the same filesystem
// (openat2 with RESOLVE_NO_XDEV fails with EXDEV at a mount point), and
// never follows a symlink. The check is made by the kernel as each
// directory is opened, so a mount that appears during the walk is seen too.
func removeTree(path string) error {
	parent, name := filepath.Split(filepath.Clean(path))
	dir, err := beneath.OpenRoot(parent)
	if err != nil {
		return fmt.Errorf("open %s: %w", parent, err)
	}
	defer dir.Close()
	return removeAt(dir, name, path)
}

func removeAt(dir *beneath.Dir, name, shown string) error {
	err := dir.Unlink(name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrMountedInside, shown)
		}
		return err
	}
	sub, err := dir.OpenDir(name)
	switch {
	case errors.Is(err, beneath.ErrMountInside):
		return fmt.Errorf("%w: %s", ErrMountedInside, shown)
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return err
	}
	defer sub.Close()
	// A batch at a time: a directory of millions of entries is removed
	// without holding all their names.
	for {
		names, err := sub.ReadNames()
		if err != nil {
			return err
		}
		if len(names) == 0 {
			break
		}
		for _, n := range names {
			if err := removeAt(sub, n, shown+"/"+n); err != nil {
				return err
			}
		}
	}
	if err := dir.Unlink(name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrMountedInside, shown)
		}
		return err
	}
	return nil
}
