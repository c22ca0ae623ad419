package docs

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// cleanupMountsAndLoops unmounts everything at or below dir (deepest
// first) and detaches the loop devices of files there, logging what it
// found; it fails only if something stays.
func cleanupMountsAndLoops(t testing.TB, dir string) error {
	for i := 0; ; i++ {
		points := testutil.MountsUnder(t, dir)
		if len(points) == 0 {
			break
		}
		if i == 10 {
			return fmt.Errorf("could not unmount %s", strings.Join(points, ", "))
		}
		sort.Sort(sort.Reverse(sort.StringSlice(points)))
		if i == 0 {
			t.Logf("unmounting what the doc left mounted: %s", strings.Join(points, ", "))
		}
		for _, p := range points {
			if err := unix.Unmount(p, 0); err != nil {
				_ = unix.Unmount(p, unix.MNT_DETACH)
			}
		}
	}
	// Autoclear devices go at their last close, a moment after the unmount.
	deadline := time.Now().Add(5 * time.Second)
	for {
		devs := testutil.LoopDevicesUnder(t, dir)
		if len(devs) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			t.Logf("detaching loop devices the doc left attached: %v", devs)
			for _, dev := range devs {
				fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					return fmt.Errorf("open %s to detach it: %w", dev, err)
				}
				err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
				unix.Close(fd)
				if err != nil {
					return fmt.Errorf("detach %s: %w", dev, err)
				}
			}
			if devs = testutil.LoopDevicesUnder(t, dir); len(devs) > 0 {
				return fmt.Errorf("loop devices %v still attached to files under %s", devs, dir)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}
