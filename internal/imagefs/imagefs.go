// Package imagefs keeps a volume as a filesystem image: a sparse file,
// attached to a loop device (internal/loop), formatted ext4 or xfs through
// k8s.io/mount-utils and mounted where the node service wants it. The image
// is a hard size limit on any backing filesystem (a full image is ENOSPC for
// its volume and nobody else), its usage is one statfs, it grows online where
// the kernel allows, and a point-in-time copy is a freeze, a reflink and a
// thaw.
//
// The image file is the durable record of a volume's size: a grow that the
// filesystem cannot take at once (ext4 without CAP_SYS_RESOURCE, or an image
// that is not mounted) is kept as a larger file and applied at the next
// Mount.
//
// Callers serialize calls per image (the driver's per-volume lock); this
// package also takes its own per-image lock, because two mounts of one image
// through two loop devices would corrupt it.
package imagefs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/keylock"
	"github.com/hostpath-csi/hostpath-csi/internal/loop"
)

// Filesystem types an image can hold.
const (
	Ext4 = "ext4"
	XFS  = "xfs"
)

// ErrUnsupportedFS is returned for a filesystem type other than ext4 or xfs.
var ErrUnsupportedFS = errors.New("unsupported filesystem type for an image (use ext4 or xfs)")

// ErrTooSmall is returned when an image is smaller than its filesystem's
// mkfs accepts (see MinSize).
var ErrTooSmall = errors.New("image too small for its filesystem")

// ErrShrink is returned by Expand for a size below the image's current one:
// filesystems on images are never shrunk.
var ErrShrink = errors.New("an image cannot shrink")

// ErrBlank is returned by Mount with NoFormat for an image that holds no
// filesystem.
var ErrBlank = errors.New("image holds no filesystem, and was formatted before: refusing to format it again")

// ErrInUse is returned when the image is attached to a loop device that no
// mount holds: something else (a raw block user, another attacher) has it,
// and mounting it a second time through another device would corrupt it.
var ErrInUse = errors.New("image is attached to a loop device that is not mounted")

// MinSize returns the smallest image mkfs accepts for fsType: xfsprogs 5.19
// and later refuse filesystems under 300 MiB. A driver rounds a smaller
// request up to it (CSI allows a larger capacity than required).
func MinSize(fsType string) (int64, error) {
	switch fsType {
	case Ext4:
		// With 4 KiB blocks (see imageSector), mke2fs leaves out the
		// journal below 8 MiB; an ext4 without one is not crash-safe.
		return 8 << 20, nil
	case XFS:
		return 300 << 20, nil
	}
	return 0, fmt.Errorf("%q: %w", fsType, ErrUnsupportedFS)
}

// Create makes an image file of size bytes at path, which must not exist,
// with every block allocated (see Allocate). The file is fsync'd, and so is
// its directory, so a crash after Create returns leaves the file in place.
func Create(path string, size int64, fsType string) error {
	min, err := MinSize(fsType)
	if err != nil {
		return err
	}
	if size < min {
		return fmt.Errorf("%s image of %d bytes: %w (at least %d bytes)", fsType, size, ErrTooSmall, min)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	err = Allocate(f, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("create image %s of %d bytes: %w", path, size, err)
	}
	return nil
}

// Allocate makes the file f size bytes long with every block of it
// allocated on the backing filesystem (fallocate mode 0: unwritten extents,
// read as zeros, no data written), so a volume kept in it never meets a
// full backing filesystem below its size, whatever else fills it: the
// blocks are the file's. Blocks already there (data, a grow's old part)
// are kept as they are, so it also fills the holes of a sparse copy.
//
// Two things can still take blocks from such a file, and are handled where
// they arise: a discard through its loop device, which the loop driver
// turns into a hole punched in the file (devices are attached with discard
// off, see loop.Options.NoDiscard), and blocks shared with a reflinked copy,
// which a write must copy first (that room is set aside by the driver's
// bookkeeping, not by the file). On a filesystem without fallocate the file
// is made sparse, and a warning says so.
//
// On btrfs an empty file is made NOCOW first (btrfs.SetNoCOW): btrfs
// otherwise writes every overwrite to new blocks, and a preallocated file
// rewritten on a full filesystem fails. A file that already holds data keeps
// what it is (btrfs sets the flag only on an empty file): a copy of a NOCOW
// file is made NOCOW by internal/copytree.
func Allocate(f *os.File, size int64) error {
	if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
		if err := btrfs.SetNoCOW(int(f.Fd())); err != nil {
			return fmt.Errorf("%s: %w", f.Name(), err)
		}
	}
	err := unix.Fallocate(int(f.Fd()), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) {
		klog.InfoS("WARNING: the data filesystem cannot preallocate; the image is sparse, and its room is only set aside, not held", "file", f.Name())
		return f.Truncate(size)
	}
	if err != nil {
		return fmt.Errorf("allocate %d bytes for %s: %w", size, f.Name(), err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// MountOptions say how an image is mounted.
type MountOptions struct {
	// FSType is the filesystem the image holds, or gets when it is blank.
	FSType string
	// Options are mount options (for example "noatime"), as in CSI
	// mount_flags. Every mount is nosuid and nodev besides.
	Options []string
	// ReadOnly attaches and mounts read-only. A blank image cannot be
	// mounted read-only: there is nothing to format it with.
	ReadOnly bool
	// NoFormat refuses a blank image (ErrBlank) instead of formatting it:
	// for an image whose owner knows it was formatted, a blank superblock
	// means damage, and a new filesystem over it would lose what is left.
	NoFormat bool
}

// Mounted says what Mount did.
type Mounted struct {
	// Device is the loop device under the mount.
	Device string
	// DirectIO is true when the loop device writes the image with direct
	// I/O (no second page cache between the filesystem and the disk).
	DirectIO bool
	// Grown is true when Mount applied a grow that was pending (the image
	// file is larger than its filesystem).
	Grown bool
	// Formatted is true when Mount made the filesystem (the image was
	// blank).
	Formatted bool
}

var locks keylock.Locks

func lockImage(img string) (func(), error) {
	abs, err := filepath.Abs(img)
	if err != nil {
		return nil, err
	}
	return locks.Lock(context.Background(), abs)
}

func newMounter() *mount.SafeFormatAndMount {
	return &mount.SafeFormatAndMount{Interface: mount.New(""), Exec: utilexec.New()}
}

// Mount makes the filesystem in img available at target, which must be an
// existing directory: it attaches the image to a loop device (direct I/O
// where the backing filesystem allows, autoclear so that the unmount frees
// the device), formats it when blank, applies a pending grow, and mounts it.
// Mounting an image already mounted at target does nothing; an image mounted
// elsewhere is mounted at target through the same device.
func Mount(img, target string, opts MountOptions) (*Mounted, error) {
	if _, err := MinSize(opts.FSType); err != nil {
		return nil, err
	}
	unlock, err := lockImage(img)
	if err != nil {
		return nil, err
	}
	defer unlock()

	devs, err := loop.Find(img)
	if err != nil {
		return nil, fmt.Errorf("find loop devices of %s: %w", img, err)
	}
	for _, d := range devs {
		mounts, err := mountsOf(d.Path)
		if err != nil {
			return nil, err
		}
		if len(mounts) > 0 && d.Discard {
			// Mounted by a driver from before discards were turned off.
			if err := loop.DisableDiscard(&d); err != nil {
				return nil, err
			}
		}
		for _, m := range mounts {
			if m.Mountpoint == filepath.Clean(target) {
				return &Mounted{Device: d.Path, DirectIO: d.DirectIO}, nil
			}
		}
		if len(mounts) > 0 {
			// Same device, same superblock: a second mount point of one
			// filesystem, not a second filesystem over one file.
			if err := newMounter().Mount(d.Path, target, opts.FSType, mountOptions(opts)); err != nil {
				return nil, fmt.Errorf("mount %s (already mounted at %s) at %s: %w", d.Path, mounts[0].Mountpoint, target, err)
			}
			return &Mounted{Device: d.Path, DirectIO: d.DirectIO}, nil
		}
	}
	if len(devs) > 0 {
		return nil, fmt.Errorf("%s on %s: %w", img, devs[0].Path, ErrInUse)
	}

	// Nothing has the image attached, so its file is its current content.
	sb, err := readSuperblock(img)
	if err != nil {
		return nil, err
	}
	if sb.fsType != "" && sb.fsType != opts.FSType {
		return nil, fmt.Errorf("image %s holds %s, asked to mount it as %s", img, sb.fsType, opts.FSType)
	}
	if sb.fsType == "" && opts.NoFormat {
		return nil, fmt.Errorf("image %s: %w", img, ErrBlank)
	}
	d, err := loop.Attach(img, loop.Options{AutoClear: true, DirectIO: true, ReadOnly: opts.ReadOnly, BlockSize: sectorSize(sb), NoDiscard: true})
	if err != nil {
		return nil, fmt.Errorf("attach image: %w", err)
	}
	// Until the mount holds the device, this hold keeps it; on any failure
	// the close detaches it, so nothing leaks.
	defer d.Close()
	res := &Mounted{Device: d.Path, DirectIO: d.DirectIO, Formatted: sb.fsType == ""}
	devSize, err := loop.Size(d.Path)
	if err != nil {
		return nil, err
	}
	pending := sb.fsType != "" && !opts.ReadOnly && sb.needsGrow(devSize)
	if pending && sb.fsType == Ext4 {
		// ext4 grows offline here, before the mount, which needs no
		// CAP_SYS_RESOURCE (an online grow does).
		if err := growExt4Offline(d.Path); err != nil {
			return nil, err
		}
		res.Grown = true
	}
	if err := newMounter().FormatAndMount(d.Path, target, opts.FSType, mountOptions(opts)); err != nil {
		return nil, fmt.Errorf("format and mount %s (%s) at %s: %w", img, d.Path, target, err)
	}
	if pending && sb.fsType == XFS {
		// xfs only grows mounted.
		if _, err := mount.NewResizeFs(utilexec.New()).Resize(d.Path, target); err != nil {
			_ = unix.Unmount(target, 0)
			return nil, fmt.Errorf("grow xfs on %s at %s: %w", d.Path, target, err)
		}
		res.Grown = true
	}
	klog.V(2).InfoS("Mounted image", "image", img, "target", target, "device", d.Path, "directIO", d.DirectIO, "grown", res.Grown)
	return res, nil
}

// imageSector is the logical sector size of every image's loop device. It is
// fixed, not left to the kernel, because the kernel's choice follows the
// backing file's direct I/O alignment, and that changes under a file: xfs
// reports 4096 instead of 512 once a file shares blocks (after the first
// reflink snapshot). A filesystem made on a 512-byte device with 1 KiB
// blocks would then no longer mount. 4096 does direct I/O on every backing
// filesystem here, and mkfs picks 4 KiB blocks and sectors to match.
const imageSector = 4096

// sectorSize is the loop sector size for an image: imageSector, or smaller
// for a filesystem made elsewhere with smaller blocks (it mounts, with
// buffered I/O where direct I/O needs the larger sector).
func sectorSize(sb superblock) uint32 {
	if sb.fsType != "" && sb.sector != 0 && sb.sector < imageSector {
		return sb.sector
	}
	return imageSector
}

// mountOptions are the options of an image's mount: the caller's, then
// nosuid and nodev whatever they say (the last of suid and nosuid wins). An
// image's filesystem is its tenant's, block by block: a setuid-root binary
// or a device node in it (written by a pod, or crafted in the image file)
// must not take effect for whoever runs or opens it through a mount.
func mountOptions(opts MountOptions) []string {
	o := append([]string(nil), opts.Options...)
	o = append(o, "nosuid", "nodev")
	if opts.ReadOnly {
		o = append(o, "ro")
	}
	if opts.FSType == XFS {
		// A snapshot, restore or clone of an image is a copy with the same
		// filesystem UUID, which xfs refuses to mount beside the original.
		o = append(o, "nouuid")
	}
	return o
}

// mountsOf lists where the block device at dev is mounted.
func mountsOf(dev string) ([]*mountinfo.Info, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	major, minor := int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))
	mounts, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
		return i.Major != major || i.Minor != minor, false
	})
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return mounts, nil
}

// Unmount unmounts the image img from target and, when that was its last
// mount, makes sure its loop device is gone. Unmounting what is not mounted
// does nothing; a target that holds something other than img is refused.
func Unmount(img, target string) error {
	unlock, err := lockImage(img)
	if err != nil {
		return err
	}
	defer unlock()
	devs, err := loop.Find(img)
	if errors.Is(err, fs.ErrNotExist) {
		// The image is gone (its volume's data was lost): the pod must
		// still be able to go. A device may hold the unlinked file.
		devs, err = devicesOfDeleted(img)
	}
	if err != nil {
		return fmt.Errorf("find loop devices of %s: %w", img, err)
	}
	target = filepath.Clean(target)
	at, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(target))
	if err != nil {
		return fmt.Errorf("read mount table: %w", err)
	}
	if len(at) > 0 {
		top := at[len(at)-1] // the mount a path resolves to when stacked
		if !sameDevice(top, devs) {
			return fmt.Errorf("%s holds %s, not image %s; left alone", target, top.Source, img)
		}
		if err := unix.Unmount(target, 0); err != nil {
			return fmt.Errorf("unmount image %s from %s: %w", img, target, err)
		}
	}
	for _, d := range devs {
		mounts, err := mountsOf(d.Path)
		if err != nil {
			return err
		}
		if len(mounts) > 0 {
			return nil // still mounted elsewhere; the device stays
		}
	}
	// The autoclear device went with the unmount; one attached some other
	// way (by hand, by an older driver) is detached here.
	for i := range devs {
		if _, err := loop.Detach(&devs[i]); err != nil && !errors.Is(err, loop.ErrNotAttached) {
			return fmt.Errorf("detach %s after unmount: %w", devs[i].Path, err)
		}
	}
	if len(devs) > 0 {
		waitDetached(img)
	}
	return nil
}

// devicesOfDeleted finds the loop devices whose backing file was img and
// has been unlinked: the kernel names it "<img> (deleted)".
func devicesOfDeleted(img string) ([]loop.Device, error) {
	abs, err := filepath.Abs(img)
	if err != nil {
		return nil, err
	}
	all, err := loop.List()
	if err != nil {
		return nil, err
	}
	var out []loop.Device
	for _, d := range all {
		if d.BackingDeleted && d.BackingFile == abs {
			out = append(out, d)
		}
	}
	return out, nil
}

func sameDevice(m *mountinfo.Info, devs []loop.Device) bool {
	for _, d := range devs {
		var st unix.Stat_t
		if unix.Stat(d.Path, &st) == nil && int(unix.Major(st.Rdev)) == m.Major && int(unix.Minor(st.Rdev)) == m.Minor {
			return true
		}
	}
	return false
}

// waitDetached waits, a bounded while, for the loop devices of img to be
// gone after its last unmount: the kernel unbinds an autoclear device when
// its last user lets go, which under load can come after umount returns,
// and a mount of the same image meanwhile (a read-only remount right after
// the first format) would find it attached but unmounted (ErrInUse). One
// that stays is held open by someone else, and is left to that close.
func waitDetached(img string) {
	for i := 0; i < 200; i++ {
		left, err := loop.Find(img)
		if err != nil || len(left) == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
