package docs

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// mountsUnder lists the mount points at or below dir.
func mountsUnder(dir string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("read the mount table: %w", err)
	}
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

// loopDevicesUnder lists the loop devices whose backing file is at or
// below dir (deleted or not).
func loopDevicesUnder(dir string) []string {
	out, _ := testutil.LoopDevicesBackedUnder(dir)
	return out
}

// cleanupMountsAndLoops unmounts everything at or below dir (deepest
// first) and detaches the loop devices of files there, logging what it
// found; it fails only if something stays. (It takes no testing.TB: it
// also runs on a signal, outside any test.)
func cleanupMountsAndLoops(logf func(format string, args ...any), dir string) error {
	for i := 0; ; i++ {
		points, err := mountsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			break
		}
		if i == 10 {
			return fmt.Errorf("could not unmount %s", strings.Join(points, ", "))
		}
		sort.Sort(sort.Reverse(sort.StringSlice(points)))
		if i == 0 {
			logf("unmounting what the doc left mounted: %s", strings.Join(points, ", "))
		}
		for _, p := range points {
			if err := unix.Unmount(p, 0); err != nil {
				_ = unix.Unmount(p, unix.MNT_DETACH)
			}
		}
	}
	// Autoclear devices (the driver's) go at their last close, a moment
	// after the unmount; others (a scratch filesystem's) are detached now.
	deadline := time.Now().Add(5 * time.Second)
	for {
		devs := loopDevicesUnder(dir)
		if len(devs) == 0 {
			return nil
		}
		var detach []string
		for _, dev := range devs {
			if time.Now().After(deadline) || !autoclear(dev) {
				detach = append(detach, dev)
			}
		}
		if len(detach) > 0 {
			logf("detaching loop devices left attached: %v", detach)
		}
		for _, dev := range detach {
			if err := testutil.DetachIfBackedUnder(dev, dir); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			// A device still open is detached at its last close.
			for end := time.Now().Add(5 * time.Second); len(devs) > 0; devs = loopDevicesUnder(dir) {
				if time.Now().After(end) {
					return fmt.Errorf("loop devices %v still attached to files under %s", devs, dir)
				}
				time.Sleep(20 * time.Millisecond)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// autoclear says whether loop device dev goes by itself at its last close.
func autoclear(dev string) bool {
	b, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/loop/autoclear")
	return err != nil || strings.TrimSpace(string(b)) == "1"
}
