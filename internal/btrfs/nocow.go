package btrfs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// fsNoCOWFl is FS_NOCOW_FL from linux/fs.h.
const fsNoCOWFl = 0x00800000

// isBtrfsFd reports whether fd is on a btrfs filesystem.
func isBtrfsFd(fd int) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return false, fmt.Errorf("fstatfs: %w", err)
	}
	return uint32(st.Type) == superMagic, nil
}

// SetNoCOW makes the empty regular file fd NOCOW on btrfs (chattr +C):
// btrfs then writes an overwrite in place, into the blocks the file holds,
// instead of to new ones, so a preallocated file rewritten on a full
// filesystem does not run out of room. Only a block shared with a reflink
// or snapshot is copied, once, at its first write. btrfs keeps the flag
// only on an empty file (it ignores it on one that holds data); the caller
// sets it before the file gets any block. The price is that btrfs keeps no
// checksums of the file's data. On any other filesystem it does nothing.
func SetNoCOW(fd int) error {
	ok, err := isBtrfsFd(fd)
	if err != nil || !ok {
		return err
	}
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return fmt.Errorf("read inode flags: %w", err)
	}
	if flags&fsNoCOWFl != 0 {
		return nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsNoCOWFl)); err != nil {
		return fmt.Errorf("set NOCOW: %w", err)
	}
	return nil
}

// IsNoCOW reports whether fd is a btrfs file with FS_NOCOW_FL, and whether
// it is on btrfs at all.
func IsNoCOW(fd int) (nocow, onBtrfs bool, err error) {
	if onBtrfs, err = isBtrfsFd(fd); err != nil || !onBtrfs {
		return false, onBtrfs, err
	}
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if errors.Is(err, unix.ENOTTY) {
		return false, true, nil
	}
	if err != nil {
		return false, true, fmt.Errorf("read inode flags: %w", err)
	}
	return flags&fsNoCOWFl != 0, true, nil
}
