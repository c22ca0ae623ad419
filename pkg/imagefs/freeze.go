package imagefs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// From linux/fs.h.
const (
	fiFreeze = 0xc0045877 // FIFREEZE
	fiThaw   = 0xc0045878 // FITHAW
)

// frozen is one filesystem held frozen through an open descriptor.
type frozen struct {
	path string
	fd   int
}

func (f frozen) thaw() error {
	defer unix.Close(f.fd)
	if _, err := unix.IoctlRetInt(f.fd, fiThaw); err != nil {
		return fmt.Errorf("thaw %s: %w", f.path, err)
	}
	return nil
}

// WithFrozen freezes the filesystems mounted at mountPaths (FIFREEZE: dirty
// data is written out and new writes block), runs fn, and thaws them again,
// whatever fn does: returns an error, panics, or the freeze of a later path
// fails. A group snapshot freezes every member first, so the copies taken in
// fn are one point in time across all of them even while pods write.
//
// Paths on one filesystem are frozen once. A kill -9 between freeze and
// thaw leaves filesystems frozen: a restarting driver calls Thaw on the
// mounts it knows.
func WithFrozen(mountPaths []string, fn func() error) (err error) {
	var held []frozen
	defer func() {
		// Thaw in reverse order, even on panic (the panic continues
		// after the thaw).
		var errs []error
		for i := len(held) - 1; i >= 0; i-- {
			if terr := held[i].thaw(); terr != nil {
				klog.ErrorS(terr, "Could not thaw filesystem", "path", held[i].path)
				errs = append(errs, terr)
			}
		}
		if len(errs) > 0 {
			err = errors.Join(append([]error{err}, errs...)...)
		}
	}()
	seen := map[uint64]bool{}
	for _, p := range mountPaths {
		fd, oerr := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if oerr != nil {
			return fmt.Errorf("open %s to freeze it: %w", p, oerr)
		}
		var st unix.Stat_t
		if serr := unix.Fstat(fd, &st); serr != nil {
			unix.Close(fd)
			return fmt.Errorf("stat %s: %w", p, serr)
		}
		if seen[st.Dev] {
			unix.Close(fd)
			continue
		}
		if _, ferr := unix.IoctlRetInt(fd, fiFreeze); ferr != nil {
			unix.Close(fd)
			if errors.Is(ferr, unix.EBUSY) {
				return fmt.Errorf("freeze %s: already frozen (by another snapshot, or left frozen by a crash: Thaw it): %w", p, ferr)
			}
			return fmt.Errorf("freeze %s: %w", p, ferr)
		}
		seen[st.Dev] = true
		held = append(held, frozen{path: p, fd: fd})
	}
	return fn()
}

// Thaw thaws the filesystem mounted at mountPath if it is frozen, and says
// whether it was. A driver calls it at start-up on every image mount it
// knows, in case it was killed while one was frozen.
func Thaw(mountPath string) (wasFrozen bool, err error) {
	fd, err := unix.Open(mountPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open %s to thaw it: %w", mountPath, err)
	}
	defer unix.Close(fd)
	if _, err := unix.IoctlRetInt(fd, fiThaw); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return false, nil // not frozen
		}
		return false, fmt.Errorf("thaw %s: %w", mountPath, err)
	}
	return true, nil
}
