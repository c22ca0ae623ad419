package imagefs

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Usage is what a mounted image's filesystem reports: the enforced limit is
// TotalBytes, and none of it is shared with other volumes.
type Usage struct {
	TotalBytes, UsedBytes, AvailableBytes uint64
	Inodes, InodesUsed, InodesFree        uint64
}

// Stats returns the usage of the filesystem mounted at mountPath: one
// statfs, however many files the volume holds. Available is what an
// unprivileged writer can still use (ext4 images are made with no reserved
// blocks, so it is Total - Used there).
func Stats(mountPath string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(mountPath, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", mountPath, err)
	}
	bs := uint64(st.Frsize)
	if bs == 0 {
		bs = uint64(st.Bsize)
	}
	return Usage{
		TotalBytes:     st.Blocks * bs,
		UsedBytes:      (st.Blocks - st.Bfree) * bs,
		AvailableBytes: st.Bavail * bs,
		Inodes:         st.Files,
		InodesUsed:     st.Files - st.Ffree,
		InodesFree:     st.Ffree,
	}, nil
}
