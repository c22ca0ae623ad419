package imagefs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/hostpath-csi/hostpath-csi/internal/loop"
)

// ErrGrowAtNextMount is returned by Expand when the image and its device
// have grown but the mounted filesystem cannot grow now: ext4 grows online
// only for a process with CAP_SYS_RESOURCE. The new size is kept in the
// image file; the next Mount grows the filesystem (offline, before
// mounting), so the volume has its new size after the next unstage and
// stage.
var ErrGrowAtNextMount = errors.New("the filesystem grows at the next mount")

// growSlack is how much larger than its filesystem a device must be before
// a grow is attempted: mkfs and the grow tools round to blocks and
// allocation groups, so a filesystem never quite fills its device.
const growSlack = 1 << 20

// superblock is what Mount and Expand need from a filesystem's superblock.
type superblock struct {
	fsType string // "" when the device holds neither ext4 nor xfs
	bytes  uint64 // filesystem size
	// sector is the largest logical sector size of a device the
	// filesystem mounts on: ext4's block size, xfs's sector size.
	sector uint32
}

func (sb superblock) needsGrow(devSize uint64) bool {
	return sb.fsType != "" && devSize > sb.bytes+growSlack
}

// readSuperblock reads the ext4 or xfs superblock of dev (a device or an
// image file). It reads with O_DIRECT where it can, so that a stale cached
// copy of a device never answers.
func readSuperblock(dev string) (superblock, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) { // no O_DIRECT on this filesystem
		f, err = os.Open(dev)
	}
	if err != nil {
		return superblock{}, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer: take a 4 KiB-aligned window of a
	// larger allocation.
	raw := make([]byte, 8192+4096)
	off := (4096 - int(uintptr(unsafe.Pointer(&raw[0]))%4096)) % 4096
	buf := raw[off : off+8192]
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return superblock{}, fmt.Errorf("read superblock of %s: %w", dev, err)
	}
	return parseSuperblock(buf[:n]), nil
}

// parseSuperblock recognises ext4 (superblock at byte 1024) and xfs (at 0).
func parseSuperblock(b []byte) superblock {
	le, be := binary.LittleEndian, binary.BigEndian
	if len(b) >= 104 && string(b[0:4]) == "XFSB" {
		bs := uint64(be.Uint32(b[4:]))
		return superblock{fsType: XFS, bytes: be.Uint64(b[8:]) * bs, sector: uint32(be.Uint16(b[102:]))}
	}
	if len(b) >= 1024+0x154 {
		s := b[1024:]
		if le.Uint16(s[0x38:]) == 0xef53 {
			blocks := uint64(le.Uint32(s[0x4:]))
			if le.Uint32(s[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
				blocks |= uint64(le.Uint32(s[0x150:])) << 32
			}
			bs := uint64(1024) << le.Uint32(s[0x18:])
			return superblock{fsType: Ext4, bytes: blocks * bs, sector: uint32(bs)}
		}
	}
	return superblock{}
}

// growExt4Offline grows the unmounted ext4 on dev to the device's size.
// resize2fs insists on a forced check first when the filesystem is not
// mounted.
func growExt4Offline(dev string) error {
	out, err := exec.Command("e2fsck", "-f", "-p", dev).CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) { // 1: errors corrected
		return fmt.Errorf("e2fsck -f -p %s before growing it: %w: %s", dev, err, strings.TrimSpace(string(out)))
	}
	if _, err := mount.NewResizeFs(utilexec.New()).Resize(dev, ""); err != nil {
		return fmt.Errorf("grow ext4 on %s offline: %w", dev, err)
	}
	klog.V(2).InfoS("Grew ext4 offline", "device", dev)
	return nil
}

// Expansion says what Expand did.
type Expansion struct {
	// Device is the image's loop device; empty when it is not attached.
	Device string
	// DeviceSize is the device's size after the grow.
	DeviceSize uint64
	// MountPath is a mount point of the image; empty when not mounted.
	MountPath string
	// FSSize is the mounted filesystem's size after the grow (statfs).
	FSSize uint64
	// Pending is true when the filesystem has not grown yet and grows at
	// the next Mount.
	Pending bool
}

// Expand grows the image img to newSize bytes and, when it is mounted, its
// filesystem online: the file first (the durable record of the size), then
// the loop device (LOOP_SET_CAPACITY), then the filesystem (xfs_growfs, or
// resize2fs for ext4) through k8s.io/mount-utils. An image that is not
// mounted grows at its next Mount. Where ext4 cannot grow online, Expand
// returns ErrGrowAtNextMount together with the Expansion. A smaller size is
// ErrShrink; the same size only finishes a grow that was interrupted.
func Expand(img string, newSize int64) (*Expansion, error) {
	unlock, err := lockImage(img)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := growFile(img, newSize); err != nil {
		return nil, err
	}
	res := &Expansion{Pending: true}
	devs, err := loop.Find(img)
	if err != nil {
		return nil, fmt.Errorf("find loop devices of %s: %w", img, err)
	}
	if len(devs) == 0 {
		return res, nil
	}
	d := devs[0]
	res.Device = d.Path
	if res.DeviceSize, err = loop.SetCapacity(d.Path); err != nil {
		return nil, err
	}
	mounts, err := mountsOf(d.Path)
	if err != nil {
		return nil, err
	}
	if len(mounts) == 0 {
		return res, nil
	}
	res.MountPath = mounts[0].Mountpoint
	sb, err := readSuperblock(d.Path)
	if err != nil {
		return nil, err
	}
	if !sb.needsGrow(res.DeviceSize) {
		// Already as large as its device: a retried Expand after the
		// grow happened (online, or at a Mount in between).
		return res, finish(res)
	}
	if sb.fsType == Ext4 && !hasCapSysResource() {
		return res, fmt.Errorf("image %s and %s grew to %d bytes, but ext4 grows online only with CAP_SYS_RESOURCE, which this process lacks: %w",
			img, d.Path, res.DeviceSize, ErrGrowAtNextMount)
	}
	if _, err := mount.NewResizeFs(utilexec.New()).Resize(d.Path, res.MountPath); err != nil {
		if sb.fsType == Ext4 && (strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "Operation not permitted")) {
			return res, fmt.Errorf("online resize2fs of %s refused (%v): %w", d.Path, err, ErrGrowAtNextMount)
		}
		return res, fmt.Errorf("grow filesystem of %s at %s: %w", img, res.MountPath, err)
	}
	if err := finish(res); err != nil {
		return res, err
	}
	klog.V(2).InfoS("Grew image online", "image", img, "device", d.Path, "deviceSize", res.DeviceSize, "fsSize", res.FSSize)
	return res, nil
}

// finish records a mounted filesystem that has its full size.
func finish(res *Expansion) error {
	var st unix.Statfs_t
	if err := unix.Statfs(res.MountPath, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", res.MountPath, err)
	}
	res.FSSize = st.Blocks * uint64(st.Bsize)
	res.Pending = false
	return nil
}

// growFile makes img newSize bytes long, durably; never shorter.
func growFile(img string, newSize int64) error {
	f, err := os.OpenFile(img, os.O_RDWR|unix.O_NOFOLLOW, 0) // a planted symlink is never grown
	if err != nil {
		return fmt.Errorf("open image: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat image %s: %w", img, err)
	}
	if newSize < fi.Size() {
		return fmt.Errorf("image %s is %d bytes, asked for %d: %w", img, fi.Size(), newSize, ErrShrink)
	}
	// Every call, even at the same size: the grown part gets its blocks,
	// and so do the holes of an image restored or cloned by a sparse copy
	// (blocks already there are left as they are).
	if err := Allocate(f, newSize); err != nil {
		if newSize > fi.Size() {
			// Give back what a grow that ran out of room took past the
			// old end.
			_ = f.Truncate(fi.Size())
		}
		return fmt.Errorf("grow image %s to %d bytes: %w", img, newSize, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync image %s: %w", img, err)
	}
	return nil
}

// capSysResource is CAP_SYS_RESOURCE's bit number.
const capSysResource = 24

// hasCapSysResource reports whether this thread may grow ext4 online
// (EXT4_IOC_RESIZE_FS checks CAP_SYS_RESOURCE).
func hasCapSysResource() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return true // unknown: let the grow try and report what it gets
	}
	return data[0].Effective&(1<<capSysResource) != 0
}
