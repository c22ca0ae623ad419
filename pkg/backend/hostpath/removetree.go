package hostpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// removeTree removes path and everything below it. Unlike os.RemoveAll it
// never enters another mount, not even a bind mount of the same filesystem
// (openat2 with RESOLVE_NO_XDEV fails with EXDEV at a mount point), and
// never follows a symlink. The check is made by the kernel as each
// directory is opened, so a mount that appears during the walk is seen too.
func removeTree(path string) error {
	parent, name := filepath.Split(filepath.Clean(path))
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	return removeAt(pfd, name, path)
}

func removeAt(dirfd int, name, shown string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrMountedInside, shown)
		}
		return fmt.Errorf("remove %s: %w", shown, err)
	}
	fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH,
	})
	switch {
	case errors.Is(err, unix.EXDEV):
		return fmt.Errorf("%w: %s", ErrMountedInside, shown)
	case errors.Is(err, unix.ENOENT):
		return nil
	case err != nil:
		return fmt.Errorf("open %s: %w", shown, err)
	}
	dir := os.NewFile(uintptr(fd), shown)
	defer dir.Close()
	for {
		names, err := dir.Readdirnames(1024)
		for _, n := range names {
			if err := removeAt(fd, n, shown+"/"+n); err != nil {
				return err
			}
		}
		if err != nil { // io.EOF once the directory is exhausted
			break
		}
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s", ErrMountedInside, shown)
		}
		return fmt.Errorf("remove %s: %w", shown, err)
	}
	return nil
}
