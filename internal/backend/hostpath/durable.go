package hostpath

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// syncDirs makes the named directories durable: their own metadata and the
// entries created, renamed or removed in them. A record that depends on such
// an entry (a volume recorded as ready, a delete recorded as done) is written
// only after this returns, so a power cut can never leave a record pointing
// at data the disk lost.
func (b *Backend) syncDirs(dirs ...string) error {
	for _, d := range dirs {
		if b.syncSeen != nil {
			b.syncSeen("dir", d)
		}
		fd, err := unix.Open(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("open %s to sync it: %w", d, err)
		}
		err = unix.Fsync(fd)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("sync %s: %w", d, err)
		}
	}
	return nil
}

// syncFS writes everything dirty on the filesystem that holds path to disk:
// the data and metadata of every file of a copy, in one call instead of one
// fsync per file (a copy of 10 000 small files would otherwise pay 10 000
// journal commits). btrfs snapshots are committed by the same call.
func (b *Backend) syncFS(path string) error {
	if b.syncSeen != nil {
		b.syncSeen("fs", path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s to sync its filesystem: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync the filesystem of %s: %w", path, err)
	}
	return nil
}
