// Package btrfs makes, snapshots and destroys btrfs subvolumes through the
// kernel's ioctls, so that a snapshot of a volume is one metadata operation
// instead of a copy of every file.
package btrfs

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// From linux/btrfs.h.
const (
	superMagic    = 0x9123683e
	firstFreeObj  = 256 // the inode number of every subvolume's root
	pathNameMax   = 4087
	iocSnapCreate = 0x50009401 // _IOW(0x94, 1, struct btrfs_ioctl_vol_args)
	iocSubvolNew  = 0x5000940e // _IOW(0x94, 14, ...)
	iocSnapDelete = 0x5000940f // _IOW(0x94, 15, ...)
)

// volArgs is struct btrfs_ioctl_vol_args (4096 bytes).
type volArgs struct {
	fd   int64
	name [pathNameMax + 1]byte
}

// IsBtrfs reports whether path is on a btrfs filesystem.
func IsBtrfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return uint32(st.Type) == superMagic, nil
}

// IsSubvolume reports whether path is the root of a btrfs subvolume.
func IsSubvolume(path string) (bool, error) {
	ok, err := IsBtrfs(path)
	if err != nil || !ok {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, err
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && st.Ino == firstFreeObj, nil
}

// CreateSubvolume makes an empty subvolume at path.
func CreateSubvolume(path string) error {
	return onParent(path, iocSubvolNew, -1)
}

// Snapshot makes dst a writable snapshot of the subvolume src.
func Snapshot(src, dst string) error {
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", src, err)
	}
	defer unix.Close(fd)
	return onParent(dst, iocSnapCreate, fd)
}

// DeleteSubvolume destroys the subvolume at path with everything in it.
func DeleteSubvolume(path string) error {
	return onParent(path, iocSnapDelete, -1)
}

// onParent runs a vol_args ioctl on path's parent directory with path's
// name, as the btrfs ioctls want.
func onParent(path string, req uintptr, fd int) error {
	parent, name := filepath.Split(filepath.Clean(path))
	if len(name) > pathNameMax || name == "" {
		return fmt.Errorf("btrfs: bad subvolume name %q", name)
	}
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	args := volArgs{fd: int64(fd)}
	copy(args.name[:], name)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(pfd), req, uintptr(unsafe.Pointer(&args))); errno != 0 {
		return &os.PathError{Op: ioctlName(req), Path: path, Err: errno}
	}
	return nil
}

func ioctlName(req uintptr) string {
	switch req {
	case iocSnapCreate:
		return "btrfs snapshot"
	case iocSubvolNew:
		return "btrfs subvolume create"
	case iocSnapDelete:
		return "btrfs subvolume delete"
	}
	return "btrfs ioctl"
}
