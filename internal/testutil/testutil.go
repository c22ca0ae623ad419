// Package testutil holds helpers shared by tests that use real mounts.
package testutil

import (
	"os"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// RequireRoot stops a test that mounts when the process cannot (see
// Missing: it fails under HOSTPATH_TEST_REQUIRE_ALL=1, as CI runs as root).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root to mount", "run the tests as root, as CI and the development machine do")
	}
}

// MountsUnder lists mount points at or below dir.
func MountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatalf("read mount table: %v", err)
	}
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	return out
}

// CleanupMounts registers a cleanup that fails the test if mounts are left
// under dir, and then removes them anyway (deepest first) so that nothing is
// left on the machine even when the test failed half way.
func CleanupMounts(t testing.TB, dir string) {
	t.Helper()
	t.Cleanup(func() {
		left := MountsUnder(t, dir)
		if len(left) == 0 {
			return
		}
		t.Errorf("mounts left behind under %s: %v", dir, left)
		for i := 0; i < 10 && len(left) > 0; i++ {
			for j := len(left) - 1; j >= 0; j-- {
				_ = unix.Unmount(left[j], unix.MNT_DETACH)
			}
			left = MountsUnder(t, dir)
		}
		if len(left) > 0 {
			t.Errorf("could not remove mounts: %s", strings.Join(left, ", "))
		}
	})
}
