package imagefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// From linux/fs.h.
const (
	fiFreeze = 0xc0045877 // FIFREEZE
	fiThaw   = 0xc0045878 // FITHAW
)

// A freeze with a marker directory leaves a marker file there, written and
// fsync'd (with its directory) before FIFREEZE and removed after FITHAW. A
// process killed in between leaves the marker, and the next start thaws
// exactly the filesystems it names (ThawMarked): never one that someone else
// froze (an operator's fsfreeze), and without waiting for anything else to
// start first, since a pod writing to a frozen filesystem hangs meanwhile.
const markerSuffix = ".frozen"

var markerSeq atomic.Uint64

// Frozen is one filesystem held frozen through an open descriptor.
type Frozen struct {
	path   string
	fd     int
	dev    uint64
	marker string // "" without a marker directory
}

// Thaw thaws the filesystem (FITHAW) and then removes its marker.
func (f *Frozen) Thaw() error {
	defer unix.Close(f.fd)
	if _, err := unix.IoctlRetInt(f.fd, fiThaw); err != nil {
		return fmt.Errorf("thaw %s: %w", f.path, err)
	}
	if f.marker != "" {
		if err := os.Remove(f.marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
			// A marker left behind names a filesystem that is not frozen:
			// the next start's thaw of it does nothing.
			klog.ErrorS(err, "Cannot remove the marker of a thawed filesystem", "marker", f.marker)
		}
	}
	return nil
}

// Freeze freezes the filesystem mounted at mountPath (FIFREEZE: dirty data
// is written out and new writes block) until Thaw. With markerDir not "",
// the marker is on disk before the filesystem is frozen.
func Freeze(markerDir, mountPath string) (*Frozen, error) {
	fd, err := unix.Open(mountPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s to freeze it: %w", mountPath, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", mountPath, err)
	}
	f := &Frozen{path: mountPath, fd: fd, dev: st.Dev}
	if err := f.freeze(markerDir); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

func (f *Frozen) freeze(markerDir string) error {
	if markerDir != "" {
		name := fmt.Sprintf("%x-%d-%d%s", f.dev, os.Getpid(), markerSeq.Add(1), markerSuffix)
		f.marker = filepath.Join(markerDir, name)
		if err := writeMarker(f.marker, f.path, f.dev); err != nil {
			return err
		}
	}
	if _, err := unix.IoctlRetInt(f.fd, fiFreeze); err != nil {
		if f.marker != "" {
			_ = os.Remove(f.marker)
		}
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("freeze %s: already frozen (by another snapshot, or by someone else): %w", f.path, err)
		}
		return fmt.Errorf("freeze %s: %w", f.path, err)
	}
	return nil
}

// writeMarker records, durably, that the filesystem dev mounted at path is
// about to be frozen.
func writeMarker(marker, path string, dev uint64) error {
	err := os.WriteFile(marker, []byte(strconv.FormatUint(dev, 10)+"\n"+path+"\n"), 0o600)
	if err == nil {
		var f *os.File
		if f, err = os.Open(marker); err == nil {
			err = f.Sync()
			f.Close()
		}
	}
	if err == nil {
		err = syncDir(filepath.Dir(marker))
	}
	if err != nil {
		_ = os.Remove(marker)
		return fmt.Errorf("write freeze marker %s: %w", marker, err)
	}
	return nil
}

// WithFrozen freezes the filesystems mounted at mountPaths, runs fn, and
// thaws them again, whatever fn does: returns an error, panics, or the
// freeze of a later path fails. A group snapshot freezes every member
// first, so the copies taken in fn are one point in time across all of them
// even while pods write.
//
// Paths on one filesystem are frozen once. markerDir, when not "", gets a
// marker for each frozen filesystem while it is (see ThawMarked): a kill -9
// between freeze and thaw leaves filesystems frozen, and the next start
// thaws them from their markers.
func WithFrozen(markerDir string, mountPaths []string, fn func() error) (err error) {
	var held []*Frozen
	defer func() {
		// Thaw in reverse order, even on panic (the panic continues
		// after the thaw).
		var errs []error
		for i := len(held) - 1; i >= 0; i-- {
			if terr := held[i].Thaw(); terr != nil {
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
		f := &Frozen{path: p, fd: fd, dev: st.Dev}
		if ferr := f.freeze(markerDir); ferr != nil {
			unix.Close(fd)
			return ferr
		}
		seen[st.Dev] = true
		held = append(held, f)
	}
	return fn()
}

// Thaw thaws the filesystem mounted at mountPath if it is frozen, and says
// whether it was.
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

// ThawMarked thaws the filesystems that the markers in markerDir name (a
// process killed between a freeze and its thaw), and removes the markers.
// A marker whose path no longer is that filesystem (unmounted, the node
// rebooted) is only removed. It returns the paths it thawed. Nothing else
// may freeze with markerDir meanwhile: the caller holds it (a driver's start
// runs this before it freezes anything).
func ThawMarked(markerDir string) (thawed []string, err error) {
	entries, err := os.ReadDir(markerDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read freeze markers: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), markerSuffix) {
			continue
		}
		marker := filepath.Join(markerDir, e.Name())
		path, dev, err := readMarker(marker)
		if err == nil {
			var st unix.Stat_t
			if unix.Stat(path, &st) == nil && st.Dev == dev {
				var was bool
				if was, err = Thaw(path); was {
					thawed = append(thawed, path)
				}
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue // kept, for the next start to try again
		}
		if err := os.Remove(marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove freeze marker: %w", err))
		}
	}
	return thawed, errors.Join(errs...)
}

func readMarker(marker string) (path string, dev uint64, err error) {
	b, err := os.ReadFile(marker)
	if err != nil {
		return "", 0, fmt.Errorf("read freeze marker: %w", err)
	}
	devStr, path, ok := strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
	if dev, err = strconv.ParseUint(devStr, 10, 64); !ok || err != nil || path == "" {
		// Torn by a crash before its fsync: its freeze never happened.
		return "", 0, nil
	}
	return path, dev, nil
}
