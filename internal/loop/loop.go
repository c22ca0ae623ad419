// Package loop attaches files to loop devices through the kernel's ioctls
// (LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LOOP_CLR_FD, LOOP_SET_CAPACITY), so a
// volume's backing file becomes a block device without running losetup:
// no fork per attach, no parsing of its output, and errors that carry the
// errno the kernel gave.
//
// A device is identified by its backing file's device and inode numbers, not
// by its name: after a restart or a reboot /dev/loop5 may belong to another
// file, and a backing file may have been renamed since it was attached. Find
// answers "which devices hold this file" from the kernel's own record.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Options say how a file is attached.
type Options struct {
	// ReadOnly attaches the device read-only (the backing file is opened
	// read-only too, so the kernel cannot write it).
	ReadOnly bool
	// DirectIO asks the loop driver to read and write the backing file with
	// O_DIRECT, so the data is not cached twice (once for the device, once
	// for the file) and a write to the device costs what a write to the file
	// costs. Where the backing filesystem cannot do direct I/O the device is
	// attached with buffered I/O instead; Device.DirectIO says which one it
	// got.
	DirectIO bool
	// AutoClear makes the kernel detach the device when its last user closes
	// it, for example when the filesystem on it is unmounted. Use it for
	// devices that only ever carry a mount; never for raw block volumes,
	// which a pod reaches through a bind-mounted device node that holds no
	// open reference, so the device would vanish under it.
	//
	// Any last close clears such a device, not only an unmount: Attach
	// therefore returns it held open, and the caller calls Device.Close
	// once the mount holds it (or to give up, which detaches it).
	AutoClear bool
	// BlockSize is the logical block size the device presents (512, 1024,
	// 2048 or 4096). Zero lets the kernel choose: 512, or with direct I/O
	// the backing file's direct I/O alignment.
	//
	// Set it for anything attached more than once: the kernel's choice can
	// change under the same file. xfs reports a 4096-byte direct I/O
	// alignment instead of 512 once a file shares blocks (after a reflink
	// copy of it), so a device that had 512-byte sectors comes back with
	// 4096-byte ones, and what was made on it (a filesystem with 1 KiB
	// blocks, a database's 512-byte writes) may not work any more. With a
	// fixed 512 on such a file the kernel attaches with buffered I/O
	// instead (Device.DirectIO says so).
	BlockSize uint32
	// NoDiscard turns the device's discard off before Attach returns it:
	// its queue's discard_max_bytes is set to 0 (see DisableDiscard). The
	// loop driver serves a discard, and a write of zeroes that may unmap,
	// by punching a hole in the backing file, so whoever writes to the
	// device (mkfs, which discards a whole device by default; a
	// filesystem's discard or fstrim; a pod's blkdiscard or fallocate
	// --punch-hole on a raw device) would hand the file's preallocated
	// blocks back to the backing filesystem, where anything else may take
	// them. With it off the kernel answers EOPNOTSUPP to those calls and
	// writes zeroes instead of unmapping them.
	NoDiscard bool

	// device, when not 0, is the one device Attach may take, loop<device-1>
	// (tests: a device they added themselves, with the kernel's defaults).
	device int
	// busyRetries, when set (tests), counts the attempts that lost the
	// race for a free device: tests log it to show the race was exercised.
	busyRetries *atomic.Int64
}

// Device is a loop device bound to a backing file, as the kernel reports it.
type Device struct {
	// Path is the device node, /dev/loopN.
	Path string
	// Number is N in /dev/loopN.
	Number int
	// BackingFile is the backing file's path as the kernel knows it now
	// (it follows renames). Empty when the kernel gave none.
	BackingFile string
	// BackingDeleted is true when the backing file has been unlinked while
	// attached: the device still holds its data, but no path reaches it.
	BackingDeleted bool
	// BackingDev and BackingInode identify the backing file (st_dev, st_ino).
	BackingDev, BackingInode uint64
	ReadOnly, AutoClear      bool
	// DirectIO is true when the device reads and writes its backing file
	// with direct I/O.
	DirectIO bool
	// BlockSize is the device's logical block (sector) size.
	BlockSize uint32
	// Discard is true when the device accepts discards (and so punches
	// holes in its backing file).
	Discard bool

	// held keeps an AutoClear device open until Close; nil otherwise.
	held *os.File
}

// Close releases the hold Attach keeps on an AutoClear device. If nothing
// else has the device open (no mount), the kernel detaches it now. For other
// devices Close does nothing; it is safe to call more than once.
func (d *Device) Close() error {
	if d.held == nil {
		return nil
	}
	f := d.held
	d.held = nil
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", d.Path, err)
	}
	return nil
}

// ErrNotAttached is returned when a device is not bound to any file, or not
// to the file the caller expected.
var ErrNotAttached = errors.New("loop device is not attached to the expected file")

// devDir is where device nodes live; tests point it elsewhere to check that a
// missing node is created.
const (
	defaultDevDir = "/dev"
	sysBlock      = "/sys/block"
	loopMajor     = 7
	// maxAttempts bounds the retries when another attacher takes the free
	// device between LOOP_CTL_GET_FREE and LOOP_CONFIGURE. Each retry is a
	// pair of ioctls; the bound only stops a livelock.
	maxAttempts = 1000
)

// Attach binds file to a free loop device and returns it. When another
// process (or goroutine) configures the same free device first, Attach asks
// for another one; it never shares a device.
func Attach(file string, opts Options) (*Device, error) {
	return attach(defaultDevDir, file, opts)
}

func attach(devDir, file string, opts Options) (*Device, error) {
	flags := unix.O_RDWR
	if opts.ReadOnly {
		flags = unix.O_RDONLY
	}
	ffd, err := unix.Open(file, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0) // a planted symlink is never a backing file
	if err != nil {
		return nil, fmt.Errorf("open backing file: %w", &os.PathError{Op: "open", Path: file, Err: err})
	}
	defer unix.Close(ffd)
	var st unix.Stat_t
	if err := unix.Fstat(ffd, &st); err != nil {
		return nil, fmt.Errorf("stat backing file %s: %w", file, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("backing file %s is not a regular file", file)
	}
	ctl, err := unix.Open(filepath.Join(devDir, "loop-control"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open loop-control: %w", err)
	}
	defer unix.Close(ctl)

	cfg := unix.LoopConfig{Fd: uint32(ffd), Size: opts.BlockSize}
	if opts.ReadOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opts.AutoClear {
		cfg.Info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if opts.DirectIO {
		cfg.Info.Flags |= unix.LO_FLAGS_DIRECT_IO
	}
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], file)

	for attempt := 0; attempt < maxAttempts; attempt++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if opts.device != 0 {
			n, err = opts.device-1, nil
		}
		if err != nil {
			return nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev, err := configure(devDir, n, flags, &cfg, opts.AutoClear)
		if errors.Is(err, unix.EBUSY) {
			if opts.busyRetries != nil {
				opts.busyRetries.Add(1)
			}
			continue // someone else took loop<n> first
		}
		if err != nil && opts.DirectIO && errors.Is(err, unix.EINVAL) {
			// Some kernels refuse direct I/O outright instead of falling
			// back; attach buffered and say so through Device.DirectIO.
			klog.V(2).InfoS("Loop device refused direct I/O, attaching buffered", "file", file, "device", n, "err", err)
			cfg.Info.Flags &^= unix.LO_FLAGS_DIRECT_IO
			dev, err = configure(devDir, n, flags, &cfg, opts.AutoClear)
			if errors.Is(err, unix.EBUSY) {
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("attach %s to loop%d: %w", file, n, err)
		}
		if dev.BackingDev != st.Dev || dev.BackingInode != st.Ino {
			// Cannot happen unless the kernel lies; never hand out a
			// device that holds another file.
			_ = dev.Close()
			_, _ = clearFD(dev.Path)
			return nil, fmt.Errorf("loop%d reports backing %d:%d after attaching %s (%d:%d)", n, dev.BackingDev, dev.BackingInode, file, st.Dev, st.Ino)
		}
		if opts.NoDiscard {
			if err := DisableDiscard(dev); err != nil {
				_ = dev.Close()
				_, _ = clearFD(dev.Path)
				return nil, err
			}
		}
		klog.V(4).InfoS("Attached loop device", "file", file, "device", dev.Path, "directIO", dev.DirectIO, "autoClear", dev.AutoClear, "readOnly", dev.ReadOnly, "discard", dev.Discard)
		return dev, nil
	}
	return nil, fmt.Errorf("attach %s: every free loop device was taken by another attacher %d times in a row", file, maxAttempts)
}

// configure binds loop<n> with cfg and reads back what the kernel set up.
// With hold, the device is returned open (see Options.AutoClear).
func configure(devDir string, n, flags int, cfg *unix.LoopConfig, hold bool) (*Device, error) {
	path, err := ensureNode(devDir, n)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := unix.IoctlLoopConfigure(fd, cfg); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", path, err)
	}
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		// The device is bound but unreadable: undo rather than leak it
		// (the clear completes at the close below).
		_ = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		unix.Close(fd)
		return nil, fmt.Errorf("LOOP_GET_STATUS64 %s after attach: %w", path, err)
	}
	d := deviceFrom(path, n, info)
	if hold {
		d.held = os.NewFile(uintptr(fd), path)
	} else {
		unix.Close(fd)
	}
	return d, nil
}

func deviceFrom(path string, n int, info *unix.LoopInfo64) *Device {
	d := &Device{
		Path:         path,
		Number:       n,
		BackingDev:   info.Device,
		BackingInode: info.Inode,
		ReadOnly:     info.Flags&unix.LO_FLAGS_READ_ONLY != 0,
		AutoClear:    info.Flags&unix.LO_FLAGS_AUTOCLEAR != 0,
		DirectIO:     info.Flags&unix.LO_FLAGS_DIRECT_IO != 0,
	}
	d.BackingFile, d.BackingDeleted = backingFile(n)
	if v, err := queueValue(n, "logical_block_size"); err == nil {
		d.BlockSize = uint32(v)
	}
	if v, err := queueValue(n, "discard_max_bytes"); err == nil {
		d.Discard = v != 0
	}
	return d
}

// queueValue reads a number from loop<n>'s queue in sysfs.
func queueValue(n int, name string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "queue", name))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// DisableDiscard turns discard off on d: the largest discard its queue
// takes (discard_max_bytes, the one limit sysfs lets root lower) becomes 0,
// and the kernel then refuses BLKDISCARD and unmapping writes of zeroes on
// the device (EOPNOTSUPP), so nothing written to it can punch a hole in its
// backing file. It reads the limit back and fails unless it is 0.
//
// The limit belongs to the device, not to its file: it stays 0 on loop<n>
// after a detach, for whatever is attached there next, until the device is
// removed (LOOP_CTL_REMOVE) or the node reboots; the kernel accepts no
// value but 0 once the device has no discard granularity.
func DisableDiscard(d *Device) error {
	rel := filepath.Join("block", "loop"+strconv.Itoa(d.Number), "queue", "discard_max_bytes")
	if err := writeSysfs(rel, "0"); err != nil {
		return fmt.Errorf("turn discard off on %s (so that nothing written to it punches holes in %s): %w", d.Path, d.BackingFile, err)
	}
	v, err := queueValue(d.Number, "discard_max_bytes")
	if err != nil {
		return fmt.Errorf("read back the discard limit of %s: %w", d.Path, err)
	}
	if v != 0 {
		return fmt.Errorf("%s still takes discards of %d bytes after its limit was set to 0", d.Path, v)
	}
	d.Discard = false
	return nil
}

// writeSysfs writes value to /sys/rel. A container that is not in the
// host's network namespace gets its network namespace's sysfs, which the
// runtime mounts read-only even in a privileged container (what this driver
// runs in as a pod), and every further mount of that sysfs shares its
// read-only superblock. Block devices are not tied to a network namespace,
// so the write then goes through a fresh sysfs mounted from a network and
// mount namespace of its own, on a thread that ends with them.
func writeSysfs(rel, value string) error {
	err := os.WriteFile(filepath.Join(sysBlock, "..", rel), []byte(value), 0)
	if !errors.Is(err, unix.EROFS) {
		return err
	}
	if ferr := writeFreshSysfs(rel, value); ferr != nil {
		return fmt.Errorf("%w; and through a sysfs of its own: %v", err, ferr)
	}
	return nil
}

func writeFreshSysfs(rel, value string) error {
	dir, err := os.MkdirTemp("", "hostpath-csi-sysfs-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	done := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, and the namespaces it entered, end
		// with this goroutine, so no other code runs in them.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS | unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- fmt.Errorf("make mounts private: %w", err)
			return
		}
		if err := unix.Mount("sysfs", dir, "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			done <- fmt.Errorf("mount: %w", err)
			return
		}
		err := os.WriteFile(filepath.Join(dir, rel), []byte(value), 0)
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		done <- err
	}()
	return <-done
}

// backingFile reads the backing file's current path from sysfs. The kernel
// appends " (deleted)" when the file has been unlinked.
func backingFile(n int) (string, bool) {
	b, err := os.ReadFile(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "loop", "backing_file"))
	if err != nil {
		return "", false
	}
	s := strings.TrimSuffix(string(b), "\n")
	if p, ok := strings.CutSuffix(s, " (deleted)"); ok {
		return p, true
	}
	return s, false
}

// ensureNode returns the device node of loop<n>, making it when the /dev in
// this mount namespace is not a devtmpfs (some containers) and so did not get
// one when the kernel created the device.
func ensureNode(devDir string, n int) (string, error) {
	path := filepath.Join(devDir, "loop"+strconv.Itoa(n))
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	if err == nil {
		if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != loopMajor {
			return "", fmt.Errorf("%s exists but is not a loop device node", path)
		}
		return path, nil
	}
	if !errors.Is(err, unix.ENOENT) {
		return "", fmt.Errorf("stat %s: %w", path, err)
	}
	// The minor number depends on the loop module's max_part, so take it
	// from sysfs rather than assuming n.
	b, err := os.ReadFile(filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "dev"))
	if err != nil {
		return "", fmt.Errorf("loop%d has no node in %s and no sysfs entry to make one from: %w", n, devDir, err)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err != nil {
		return "", fmt.Errorf("parse %s dev %q: %w", "loop"+strconv.Itoa(n), b, err)
	}
	if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(major, minor))); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("mknod %s: %w", path, err)
	}
	klog.V(2).InfoS("Created missing loop device node", "path", path, "major", major, "minor", minor)
	return path, nil
}

// List returns every loop device that is bound to a file, in device order.
// A device that is detached while List runs is left out.
func List() ([]Device, error) {
	return list(defaultDevDir)
}

func list(devDir string) ([]Device, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var out []Device
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), "loop")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil {
			continue
		}
		// The "loop" directory exists only while the device is bound; it
		// saves opening every idle device.
		if _, err := os.Stat(filepath.Join(sysBlock, e.Name(), "loop")); err != nil {
			continue
		}
		d, err := status(devDir, n)
		if errors.Is(err, ErrNotAttached) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Number < out[j].Number })
	return out, nil
}

// status reads loop<n>'s binding. An unbound device is ErrNotAttached.
func status(devDir string, n int) (*Device, error) {
	path, err := ensureNode(devDir, n)
	if err != nil {
		return nil, err
	}
	// O_RDONLY|O_NONBLOCK: an open neither writes nor waits; it does count
	// as a user for the moment it is held, which only delays an autoclear
	// detach to our close.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) {
			return nil, ErrNotAttached // removed meanwhile
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if errors.Is(err, unix.ENXIO) {
		return nil, ErrNotAttached
	}
	if err != nil {
		return nil, fmt.Errorf("LOOP_GET_STATUS64 %s: %w", path, err)
	}
	return deviceFrom(path, n, info), nil
}

// Status returns the binding of the device at path (/dev/loopN), or
// ErrNotAttached when it is not bound.
func Status(path string) (*Device, error) {
	n, err := number(path)
	if err != nil {
		return nil, err
	}
	return status(filepath.Dir(path), n)
}

func number(path string) (int, error) {
	num, ok := strings.CutPrefix(filepath.Base(path), "loop")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 0 {
		return 0, fmt.Errorf("%s is not a loop device path (/dev/loopN)", path)
	}
	return n, nil
}

// Find returns the devices the file is attached to, matched by device and
// inode number so that a renamed file is still found and a new file at an
// old path is not mistaken for the old one. Usually zero or one device;
// more when something attached the same file twice.
func Find(file string) ([]Device, error) {
	return find(defaultDevDir, file)
}

func find(devDir, file string) ([]Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", file, err)
	}
	all, err := list(devDir)
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, d := range all {
		if d.BackingDev == st.Dev && d.BackingInode == st.Ino {
			out = append(out, d)
		}
	}
	return out, nil
}

// Detach unbinds d from its backing file. It checks first, on the device
// itself, that the device still holds the same file (by device and inode
// number): a stale Device from before a restart must not detach a device
// that has since been given to another volume.
//
// While anything still has the device open (a mounted filesystem, a process
// reading it), the kernel cannot unbind it; it marks the device autoclear
// instead and unbinds it when the last user closes it. Detach then returns
// deferred = true and no error: the data is safe, and the device goes away
// by itself. Detaching a device that is no longer bound is not an error
// when it was bound to d's file... which cannot be told any more, so it
// returns ErrNotAttached and the caller decides.
func Detach(d *Device) (deferred bool, err error) {
	// Releasing Attach's hold on an AutoClear device detaches it when
	// nothing else has it open: then there is nothing left to do.
	held := d.held != nil
	if err := d.Close(); err != nil {
		return false, err
	}
	fd, err := unix.Open(d.Path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", d.Path, err)
	}
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENXIO) && held {
			return false, nil
		}
		if errors.Is(err, unix.ENXIO) {
			return false, fmt.Errorf("detach %s: %w", d.Path, ErrNotAttached)
		}
		return false, fmt.Errorf("LOOP_GET_STATUS64 %s: %w", d.Path, err)
	}
	if info.Device != d.BackingDev || info.Inode != d.BackingInode {
		unix.Close(fd)
		return false, fmt.Errorf("detach %s: it now holds %d:%d, not %d:%d: %w", d.Path, info.Device, info.Inode, d.BackingDev, d.BackingInode, ErrNotAttached)
	}
	err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
	// The unbinding itself happens when the last opener closes, which is
	// this close if nobody else holds the device.
	unix.Close(fd)
	if err != nil {
		return false, fmt.Errorf("LOOP_CLR_FD %s: %w", d.Path, err)
	}
	return waitUnbound(d.Number)
}

// clearFD is Detach without the identity check, for undoing an attach this
// process has just made.
func clearFD(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
	unix.Close(fd)
	if err != nil {
		return false, err
	}
	n, err := number(path)
	if err != nil {
		return false, err
	}
	return waitUnbound(n)
}

// waitUnbound waits briefly for the kernel to finish unbinding loop<n> after
// the last close. Still bound after that means another user holds it open:
// the unbinding is deferred to that user's close.
func waitUnbound(n int) (deferred bool, err error) {
	dir := filepath.Join(sysBlock, "loop"+strconv.Itoa(n), "loop")
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true, nil
}

// Ensure returns a device that holds file as opts ask, reusing one that
// already does, and attaches one otherwise. It is what a driver does for a
// raw block volume at stage time and for every block volume its state knows
// at start-up: after a restart the device is still there, after a reboot it
// is not. A device found with a pending detach (a Detach while it was in
// use set AutoClear) has the detach cancelled, so that it stays.
//
// A device that holds the file differently (read-only when read-write is
// asked, another block size) is an error: two devices over one file do not
// share their caches. Ensure is for devices that stay attached; AutoClear
// in opts is refused.
func Ensure(file string, opts Options) (d *Device, reused bool, err error) {
	if opts.AutoClear {
		return nil, false, fmt.Errorf("ensure %s: an autoclear device does not stay attached; use Attach", file)
	}
	found, err := Find(file)
	if err != nil {
		return nil, false, err
	}
	for i := range found {
		f := &found[i]
		if f.ReadOnly != opts.ReadOnly || (opts.BlockSize != 0 && f.BlockSize != opts.BlockSize) {
			return nil, false, fmt.Errorf("%s already holds %s (read-only %v, %d-byte sectors); asked read-only %v, %d-byte sectors",
				f.Path, file, f.ReadOnly, f.BlockSize, opts.ReadOnly, opts.BlockSize)
		}
		if f.AutoClear {
			if err := keepAttached(f); err != nil {
				return nil, false, err
			}
		}
		if opts.NoDiscard && f.Discard {
			// Attached before discards were turned off (an older driver).
			if err := DisableDiscard(f); err != nil {
				return nil, false, err
			}
		}
		return f, true, nil
	}
	d, err = Attach(file, opts)
	return d, false, err
}

// keepAttached clears AutoClear on d (LOOP_SET_STATUS64 with the flag off;
// the kernel lets exactly that flag be cleared), cancelling a pending
// detach.
func keepAttached(d *Device) error {
	fd, err := unix.Open(d.Path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", d.Path, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return fmt.Errorf("LOOP_GET_STATUS64 %s: %w", d.Path, err)
	}
	if info.Device != d.BackingDev || info.Inode != d.BackingInode {
		return fmt.Errorf("%s: %w", d.Path, ErrNotAttached)
	}
	info.Flags &^= unix.LO_FLAGS_AUTOCLEAR
	if err := unix.IoctlLoopSetStatus64(fd, info); err != nil {
		return fmt.Errorf("clear autoclear on %s: %w", d.Path, err)
	}
	d.AutoClear = false
	return nil
}

// DetachFile detaches every device that holds file and returns them; the
// ones still in use are detached when their last user closes them (see
// Detach). No device holding the file is not an error: the work is done.
func DetachFile(file string) ([]Device, error) {
	devs, err := Find(file)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i := range devs {
		if _, err := Detach(&devs[i]); err != nil && !errors.Is(err, ErrNotAttached) {
			errs = append(errs, err)
		}
	}
	return devs, errors.Join(errs...)
}

// Size returns the size in bytes of the block device at path (BLKGETSIZE64).
func Size(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	return sizeOf(fd, path)
}

func sizeOf(fd int, path string) (uint64, error) {
	var size uint64
	if err := ioctlPtr(fd, unix.BLKGETSIZE64, &size); err != nil {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", path, err)
	}
	return size, nil
}

// SetCapacity makes the device at path take the current size of its backing
// file (LOOP_SET_CAPACITY), after the file was grown, and returns the
// device's new size. The device stays attached and in use throughout; a
// filesystem on it still needs its own grow.
func SetCapacity(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return 0, fmt.Errorf("LOOP_SET_CAPACITY %s: %w", path, err)
	}
	return sizeOf(fd, path)
}

func ioctlPtr(fd int, req uint, arg *uint64) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(unsafe.Pointer(arg))); errno != 0 {
		return errno
	}
	return nil
}

// SetReadAhead sets the read-ahead of the block device at path to kib KiB
// (BLKRASET, which counts 512-byte sectors): how much more than asked the
// kernel reads from the device when a reader goes through it in order, and
// so what a filesystem on the device reads ahead in its files (the files
// opened after the change). It takes effect at once on an attached device
// in use, and lasts until the device is detached.
func SetReadAhead(path string, kib uint32) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.BLKRASET, int(kib)*2); err != nil {
		return fmt.Errorf("BLKRASET %s to %d KiB: %w", path, kib, err)
	}
	return nil
}

// ReadAhead returns the read-ahead of the block device at path, in KiB
// (BLKRAGET).
func ReadAhead(path string) (uint32, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var sectors uint64
	if err := ioctlPtr(fd, unix.BLKRAGET, &sectors); err != nil {
		return 0, fmt.Errorf("BLKRAGET %s: %w", path, err)
	}
	return uint32(sectors / 2), nil
}
