package loop

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// A pod on the pod network gets its network namespace's sysfs, mounted
// read-only even in a privileged container; in make e2e the driver's pod
// got "read-only file system" there (and again through a second mount of
// that sysfs), and no image or block volume could be staged. Discard is
// still turned off, through a sysfs of a network namespace of its own.
func TestNoDiscardWhereSysIsReadOnly(t *testing.T) {
	dir := scratch(t)
	img := preallocated(t, dir, 8<<20)
	n := freshDevice(t)
	errc := make(chan error, 1)
	var d *Device
	go func() {
		// This thread gets a mount namespace of its own, where /sys is
		// read-only; it ends with the goroutine (never unlocked).
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			errc <- err
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- err
			return
		}
		// As a pod on the pod network gets it: its own network namespace,
		// whose sysfs the runtime mounts read-only (the superblock then is,
		// for every mount of it).
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			errc <- err
			return
		}
		if err := unix.Access("/sys/block", unix.W_OK); err == nil {
			t.Error("/sys is still writable: the case is not made")
		}
		var err error
		d, err = Attach(img, Options{DirectIO: true, BlockSize: 4096, NoDiscard: true, device: n})
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("attach with discard off where /sys is read-only: %v", err)
	}
	defer detach(t, d)
	if v, err := queueValue(d.Number, "discard_max_bytes"); err != nil || v != 0 {
		t.Fatalf("discard_max_bytes = %d, %v; want 0", v, err)
	}
}
