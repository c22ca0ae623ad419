package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// LoopDevicesUnder lists the loop devices (/dev/loopN) whose backing file is
// at or below dir, including backing files deleted while attached. It reads
// sysfs only, so it counts this test's devices and not those of other test
// packages running at the same time.
func LoopDevicesUnder(t testing.TB, dir string) []string {
	t.Helper()
	out, err := LoopDevicesBackedUnder(dir)
	if err != nil {
		t.Fatalf("list loop devices: %v", err)
	}
	return out
}

// LoopDevicesBackedUnder lists the loop devices whose backing file is at
// or below dir (deleted or not), from sysfs; for code that has no test to
// fail (a cleanup on a signal).
func LoopDevicesBackedUnder(dir string) ([]string, error) {
	dir = filepath.Clean(dir)
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // detached meanwhile
		}
		f := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
		if f == dir || strings.HasPrefix(f, dir+"/") {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(p))))
		}
	}
	return out, nil
}

// CleanupLoopDevices registers a cleanup that fails the test if a loop device
// still holds a file under dir, and then detaches it anyway so that nothing
// is left on the machine. It allows a moment for autoclear devices, which the
// kernel detaches at the last close after an unmount. Register it before
// CleanupMounts so that it runs after the mounts are gone.
func CleanupLoopDevices(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		var left []string
		for i := 0; i < 100; i++ {
			if left = LoopDevicesUnder(t, dir); len(left) == 0 {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Errorf("loop devices left attached to files under %s: %v", dir, left)
		for _, dev := range left {
			if err := DetachIfBackedUnder(dev, dir); err != nil {
				t.Error(err)
			}
		}
	})
}

// DetachIfBackedUnder detaches loop device dev if, once open, its backing
// file is still at or below dir. The open keeps an autoclear device from
// going meanwhile, and the second look keeps a device number freed since
// it was listed, and attached again by someone else, from being detached.
func DetachIfBackedUnder(dev, dir string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("open %s to detach it: %w", dev, err)
	}
	defer unix.Close(fd)
	b, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/backing_file")
	if err != nil {
		return nil // detached meanwhile
	}
	f := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), " (deleted)")
	if dir = filepath.Clean(dir); f != dir && !strings.HasPrefix(f, dir+"/") {
		return nil // someone else's now
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && err != unix.ENXIO {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}
