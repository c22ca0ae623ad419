package hostpath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/extents"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
	"github.com/hostpath-csi/hostpath-csi/internal/loop"
	"github.com/hostpath-csi/hostpath-csi/internal/quota"
)

// An image volume and a block volume keep their data in one preallocated
// file, volumes/<id>/disk.img (every block allocated at create and at each
// grow: see imagefs.Allocate): a filesystem image (ext4 or xfs, formatted at its
// first stage and mounted at the staging path), or the backing file of a
// loop device that pods get as a raw block device. The file's size is the
// volume's size, enforced by the kernel on any data filesystem.
const imageName = "disk.img"

// blockSectorSize is the logical sector size of a block volume's loop
// device. It is fixed: left to the kernel it can change between two attaches
// of the same file (xfs reports another direct I/O alignment once a file
// shares blocks after a reflink), and what a pod made on the device would no
// longer fit it.
const blockSectorSize = 4096

// Filesystems an image volume holds.
const (
	ImageExt4 = imagefs.Ext4
	ImageXFS  = imagefs.XFS
)

// What ExpandImage says besides success: ErrGrowAtNextMount, the file and
// device grew but the filesystem grows at its next mount; ErrShrink, the
// size asked is below the image's.
var (
	ErrGrowAtNextMount = imagefs.ErrGrowAtNextMount
	ErrShrink          = imagefs.ErrShrink
)

// ImagePath is the file holding an image or block volume's data.
func (b *Backend) ImagePath(id string) string { return filepath.Join(b.Path(id), imageName) }

// ImageMinSize is the smallest image of fsType mkfs accepts ("" for a raw
// block volume: any size).
func ImageMinSize(fsType string) (int64, error) {
	if fsType == "" {
		return blockSectorSize, nil
	}
	return imagefs.MinSize(fsType)
}

// CreateImage makes volume id as a preallocated file of capacity bytes: an
// image that gets an fsType filesystem at its first stage, or with fsType ""
// the backing file of a block volume. It is idempotent: a file already there
// from an interrupted attempt is kept, grown to capacity and allocated.
func (b *Backend) CreateImage(id string, capacity int64, fsType string) error {
	dir := b.Path(id)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create volume directory: %w", err)
	}
	if err := requireDir(dir); err != nil {
		return err
	}
	img := b.ImagePath(id)
	if fi, err := os.Lstat(img); err == nil {
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: not a regular file (%s)", img, fi.Mode().Type())
		}
		// A kill may have cut the first attempt between the file's
		// creation and its allocation.
		if err := growFile(img, max(capacity, fi.Size())); err != nil {
			return err
		}
		return b.syncDirs(dir, b.volumes)
	}
	var err error
	if fsType == "" {
		err = createSparse(img, capacity)
	} else {
		err = imagefs.Create(img, capacity, fsType)
	}
	if err != nil {
		return err
	}
	return b.syncDirs(dir, b.volumes)
}

func createSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create block volume file: %w", err)
	}
	err = imagefs.Allocate(f, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("create block volume file of %d bytes: %w", size, err)
	}
	return nil
}

// growFile makes the file at path size bytes long (never shorter), every
// block of it allocated, durably.
func growFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size = max(size, fi.Size())
	if err := imagefs.Allocate(f, size); err != nil {
		if size > fi.Size() {
			_ = f.Truncate(fi.Size()) // give back what a grow that ran out of room took
		}
		return fmt.Errorf("grow %s to %d bytes: %w", path, size, err)
	}
	return f.Sync()
}

// MountImage mounts image volume id's filesystem at target (formatting a
// blank image with fsType first, and applying a grow that waited for it).
// formatted says the image was formatted before: a blank one is then
// refused, never formatted again.
func (b *Backend) MountImage(id, target, fsType string, flags []string, readOnly, formatted bool) (*imagefs.Mounted, error) {
	return imagefs.Mount(b.ImagePath(id), target, imagefs.MountOptions{FSType: fsType, Options: flags, ReadOnly: readOnly, NoFormat: formatted})
}

// UnmountImage unmounts image volume id from target; the last unmount frees
// its loop device.
func (b *Backend) UnmountImage(id, target string) error {
	return imagefs.Unmount(b.ImagePath(id), target)
}

// AttachBlock gives block volume id a loop device (the one it has, if any)
// and returns the device's path. Direct I/O where the data filesystem
// allows; the device stays until DetachBlock, whoever opens or closes it.
func (b *Backend) AttachBlock(id string, readOnly bool) (*loop.Device, error) {
	d, _, err := loop.Ensure(b.ImagePath(id), loop.Options{DirectIO: true, BlockSize: blockSectorSize, ReadOnly: readOnly, NoDiscard: true})
	if err != nil {
		return nil, fmt.Errorf("attach block volume %s: %w", id, err)
	}
	return d, nil
}

// MountedImageStats is the usage of an image's filesystem mounted at
// mountPath: one statfs (see imagefs.Stats).
func (b *Backend) MountedImageStats(mountPath string) (imagefs.Usage, error) {
	return imagefs.Stats(mountPath)
}

// BlockDevices returns the loop devices that hold block volume id's file.
func (b *Backend) BlockDevices(id string) ([]loop.Device, error) {
	devs, err := loop.Find(b.ImagePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return devs, err
}

// ReadAhead is the read-ahead (KiB) of the first loop device volume id's
// file is attached to; attached is false when it is attached to none.
func (b *Backend) ReadAhead(id string) (kib uint32, attached bool, err error) {
	devs, err := b.BlockDevices(id)
	if err != nil || len(devs) == 0 {
		return 0, false, err
	}
	kib, err = loop.ReadAhead(devs[0].Path)
	return kib, err == nil, err
}

// SetReadAhead sets the read-ahead of every loop device volume id's file is
// attached to (none when it is attached to none, or its file is gone) and
// says how many it changed.
func (b *Backend) SetReadAhead(id string, kib uint32) (int, error) {
	devs, err := b.BlockDevices(id)
	if err != nil {
		return 0, fmt.Errorf("find the devices of %s: %w", id, err)
	}
	for _, d := range devs {
		if err := loop.SetReadAhead(d.Path, kib); err != nil {
			return 0, err
		}
	}
	return len(devs), nil
}

// DetachBlock frees every loop device of volume id's file. A device a pod
// still has open goes when it closes it.
func (b *Backend) DetachBlock(id string) error {
	if _, err := loop.DetachFile(b.ImagePath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("detach block volume %s: %w", id, err)
	}
	return nil
}

// LeakedBlockDevices lists loop devices that hold a volume file of this
// data directory (matched by device and inode: the path the kernel shows is
// the one seen in the mount namespace that attached it, which a restarted
// container no longer has) whose volume ID is not in attached, and devices
// whose backing file was a volume file and has been deleted. These are
// devices a crash left attached.
func (b *Backend) LeakedBlockDevices(attached map[string]bool) ([]loop.Device, error) {
	all, err := loop.List()
	if err != nil {
		return nil, err
	}
	type inode struct{ dev, ino uint64 }
	owner := map[inode]string{}
	names, err := listDir(b.volumes)
	if err != nil {
		return nil, err
	}
	for _, id := range names {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(b.volumes, id, imageName), &st) == nil {
			owner[inode{st.Dev, st.Ino}] = id
		}
	}
	var leaked []loop.Device
	for _, d := range all {
		if id, ok := owner[inode{d.BackingDev, d.BackingInode}]; ok {
			if !attached[id] {
				leaked = append(leaked, d)
			}
			continue
		}
		// A deleted volume's file: its name still says what it was.
		volDir := filepath.Dir(d.BackingFile)
		if d.BackingDeleted && filepath.Base(d.BackingFile) == imageName && filepath.Base(filepath.Dir(volDir)) == "volumes" {
			leaked = append(leaked, d)
		}
	}
	return leaked, nil
}

// DetachDevice detaches loop device d, one of LeakedBlockDevices.
func (b *Backend) DetachDevice(d *loop.Device) error {
	_, err := loop.Detach(d)
	return err
}

// ExpandImage grows image volume id to size bytes, and its filesystem online
// when mounted. imagefs.ErrGrowAtNextMount means the file and device grew
// but the filesystem grows at the next stage.
func (b *Backend) ExpandImage(id string, size int64) (*imagefs.Expansion, error) {
	return imagefs.Expand(b.ImagePath(id), size)
}

// ExpandBlock grows block volume id's file to size bytes and tells each of
// its loop devices, so a pod sees the new size at once.
func (b *Backend) ExpandBlock(id string, size int64) error {
	if err := growFile(b.ImagePath(id), size); err != nil {
		return err
	}
	devs, err := b.BlockDevices(id)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if _, err := loop.SetCapacity(d.Path); err != nil {
			return fmt.Errorf("grow block device %s: %w", d.Path, err)
		}
	}
	return nil
}

// ImageAllocated is what an image or block volume's file occupies on the
// data filesystem now (its holes take nothing).
func (b *Backend) ImageAllocated(id string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Lstat(b.ImagePath(id), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// ImageSize is the size of an image or block volume's file.
func (b *Backend) ImageSize(id string) (int64, error) {
	fi, err := os.Lstat(b.ImagePath(id))
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// IsImageMount reports whether path is where image volume id's filesystem
// is mounted: the directory's device is one of the image's loop devices.
// A staging path whose mount went away is a plain directory of the node's
// own filesystem, and freezing that would freeze the node.
func (b *Backend) IsImageMount(id, path string) (bool, error) {
	devs, err := b.BlockDevices(id)
	if err != nil || len(devs) == 0 {
		return false, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	for _, d := range devs {
		var ds unix.Stat_t
		if err := unix.Stat(d.Path, &ds); err == nil && ds.Rdev == st.Dev {
			return true, nil
		}
	}
	return false, nil
}

// maxExclusiveExtents bounds the extent map ImageExclusive reads. The
// driver sums it over every image under the lock that creates take, and a
// badly fragmented image (a database rewriting a reflinked file on xfs) can
// have hundreds of thousands of extents: seconds for each sum.
const maxExclusiveExtents = 16384

// ImageExclusive is what an image or block volume's file holds alone on the
// data filesystem: its allocated extents less those it shares with another
// file (a reflinked snapshot, clone or source). A shared extent takes new
// space when the volume rewrites it, so only the exclusive ones are already
// paid for. Of an image with more than maxExclusiveExtents extents only the
// exclusive extents among the first maxExclusiveExtents are counted: less
// than it holds alone, so the room the driver sets aside for its rewrites
// (its size less this) errs large, never small, which is the price of a
// bounded sum.
func (b *Backend) ImageExclusive(id string) (int64, error) {
	return imageExclusive(b.ImagePath(id), maxExclusiveExtents)
}

func imageExclusive(path string, maxExtents int) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	allocated := func() (int64, error) {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return 0, fmt.Errorf("stat %s: %w", path, err)
		}
		return st.Blocks * 512, nil
	}
	var total int64
	var batch extents.Batch
	for start, seen := uint64(0), 0; ; {
		if seen >= maxExtents {
			return total, nil // a lower bound: see ImageExclusive
		}
		n, err := batch.Read(int(f.Fd()), start, ^uint64(0), false)
		if errors.Is(err, extents.ErrNoExtentMap) {
			return allocated() // no extent map: count every block as its own
		}
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		if n == 0 {
			return total, nil
		}
		seen += n
		for i := range n {
			e := batch.At(i)
			if e.Flags&extents.FlagShared == 0 {
				total += int64(e.Length)
			}
			if e.Flags&extents.FlagLast != 0 {
				return total, nil
			}
			start = e.Logical + e.Length
		}
	}
}

// QgroupExclusive is what a btrfs directory volume holds alone (its
// qgroup's exclusive bytes), for the same reason as ImageExclusive.
func (b *Backend) QgroupExclusive(id string) (int64, error) {
	q, err := quota.QgroupUsage(b.Path(id))
	if err != nil {
		return 0, err
	}
	return int64(q.Exclusive), nil
}

// HoldImage allocates every block of image or block volume id's file that
// is not (a sparse file an earlier version made, or one a copy left holes
// in), so that what the driver counts as held is held. A file fully
// allocated is left as it is.
func (b *Backend) HoldImage(id string) error {
	img := b.ImagePath(id)
	var st unix.Stat_t
	if err := unix.Lstat(img, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Blocks*512 >= st.Size {
		return nil
	}
	return growFile(img, st.Size)
}

// DisableDiscardOnVolumeDevices turns discard off on every loop device that
// holds a volume file of this data directory (matched by device and inode,
// as LeakedBlockDevices does) and still takes discards: a device an
// earlier version attached, which a pod's discard turns into holes punched
// in the file. It returns how many it turned off.
func (b *Backend) DisableDiscardOnVolumeDevices() (int, error) {
	all, err := loop.List()
	if err != nil {
		return 0, err
	}
	type inode struct{ dev, ino uint64 }
	files := map[inode]bool{}
	names, err := listDir(b.volumes)
	if err != nil {
		return 0, err
	}
	for _, id := range names {
		var st unix.Stat_t
		if unix.Lstat(filepath.Join(b.volumes, id, imageName), &st) == nil {
			files[inode{st.Dev, st.Ino}] = true
		}
	}
	n := 0
	var errs []error
	for i := range all {
		d := &all[i]
		if !d.Discard || !files[inode{d.BackingDev, d.BackingInode}] {
			continue
		}
		if err := loop.DisableDiscard(d); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// ErrNotAnImage is returned by CheckImage for a volume whose image is not
// a plain file of its own.
var ErrNotAnImage = errors.New("the volume's image is not a regular file of its own")

// CheckImage makes sure an image or block volume made by a copy from
// outside this node (another node's stream, a snapshot on an NFS export)
// holds its image and nothing else, as a plain file with one link: a
// symlink or a hard link planted there would make every later grow, attach
// or format reach another file of the node.
func (b *Backend) CheckImage(id string) error {
	dir := b.Path(id)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(ents) != 1 || ents[0].Name() != imageName {
		names := make([]string, 0, len(ents))
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return fmt.Errorf("%w: volume %s holds %q, want only %s", ErrNotAnImage, id, names, imageName)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, imageName), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		return fmt.Errorf("%w: volume %s's %s has mode %o and %d links", ErrNotAnImage, id, imageName, st.Mode, st.Nlink)
	}
	return nil
}
