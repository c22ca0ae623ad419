// Package mountutil makes and removes the bind mounts the node service needs,
// with the mount(2) system call. Exec'ing mount(8), as k8s.io/mount-utils
// does, costs about 3 ms per call here; a bind mount needs no helper, and the
// node service does two per pod start (stage and publish). Mount-point
// detection is left to k8s.io/mount-utils.
package mountutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// flagBits are the mount options that make sense on a bind mount, by name as
// they appear in CSI mount_flags and in mount(8).
var flagBits = map[string]uintptr{
	"ro":          unix.MS_RDONLY,
	"rw":          0,
	"nosuid":      unix.MS_NOSUID,
	"nodev":       unix.MS_NODEV,
	"noexec":      unix.MS_NOEXEC,
	"noatime":     unix.MS_NOATIME,
	"nodiratime":  unix.MS_NODIRATIME,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
	"suid":        0,
	"dev":         0,
	"exec":        0,
	"atime":       0,
	"async":       0,
	"bind":        0,
	"defaults":    0,
}

// ParseFlags turns mount option names into mount(2) flags. An option that a
// bind mount cannot honour is an error that names it.
func ParseFlags(options []string) (uintptr, error) {
	var flags uintptr
	for _, opt := range options {
		for _, o := range strings.Split(opt, ",") {
			o = strings.TrimSpace(o)
			if o == "" {
				continue
			}
			bit, ok := flagBits[o]
			if !ok {
				return 0, fmt.Errorf("mount option %q is not supported on this volume type (supported: ro, nosuid, nodev, noexec, noatime, nodiratime, relatime, strictatime; sync and dirsync would change the whole data filesystem, not this mount)", o)
			}
			flags |= bit
		}
	}
	return flags, nil
}

// Bind mounts source at target (non-recursively: mounts below source do not
// come along) and then applies readOnly and the option flags, which Linux
// only takes on a remount of a bind. A failure leaves nothing mounted.
func Bind(source, target string, readOnly bool, options []string) error {
	flags, err := ParseFlags(options)
	if err != nil {
		return err
	}
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
	}
	if flags != 0 {
		// A bind remount sets the mount's flags to exactly those given:
		// keep what the new mount inherited (the data filesystem's nosuid,
		// nodev, noexec, atime mode), or a read-only publish would drop
		// them.
		inherited, err := mountFlags(target)
		if flags&atimeFlags != 0 {
			inherited &^= atimeFlags // the caller chose the atime mode
		}
		if err == nil {
			err = unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|flags|inherited, "")
		}
		if err != nil {
			_ = unix.Unmount(target, 0)
			return fmt.Errorf("apply mount options to %s: %w", target, err)
		}
	}
	return nil
}

const atimeFlags = unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// mountFlags returns the per-mount flags of the mount at path as mount(2)
// flags.
func mountFlags(path string) (uintptr, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	var flags uintptr
	for st_, ms := range map[int64]uintptr{
		unix.ST_RDONLY: unix.MS_RDONLY, unix.ST_NOSUID: unix.MS_NOSUID, unix.ST_NODEV: unix.MS_NODEV,
		unix.ST_NOEXEC: unix.MS_NOEXEC, unix.ST_NOATIME: unix.MS_NOATIME, unix.ST_NODIRATIME: unix.MS_NODIRATIME,
		unix.ST_RELATIME: unix.MS_RELATIME,
	} {
		if st.Flags&st_ != 0 {
			flags |= ms
		}
	}
	return flags, nil
}

// IsMountPoint reports whether path is a mount point; it sees bind mounts of
// a directory of the same filesystem, which a device-number check misses.
func IsMountPoint(path string) (bool, error) {
	return mounter().IsMountPoint(path)
}

// mounter is built once: mount.New execs helpers (systemd-run, umount) to
// probe the system, which costs milliseconds per call.
var mounter = sync.OnceValue(func() mount.Interface { return mount.New("") })

// IsReadOnly reports whether the mount at path is read-only.
func IsReadOnly(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, err
	}
	return st.Flags&unix.ST_RDONLY != 0, nil
}

// Unmount removes every mount stacked at target (a crash can leave the same
// path mounted twice) and then removes the target directory if removeDir.
// A target that does not exist or is not mounted is not an error.
func Unmount(target string, removeDir bool) error {
	for i := 0; ; i++ {
		mounted, err := IsMountPoint(target)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil && !mount.IsCorruptedMnt(err) {
			return fmt.Errorf("check mount point %s: %w", target, err)
		}
		if !mounted && err == nil {
			break
		}
		if i == maxStacked {
			return fmt.Errorf("unmount %s: still mounted after %d unmounts", target, maxStacked)
		}
		if err := unix.Unmount(target, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // not a mount point after all
			}
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	if removeDir {
		if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove mount point %s: %w", target, err)
		}
	}
	return nil
}

// maxStacked bounds how many mounts stacked on one path Unmount removes.
const maxStacked = 64
