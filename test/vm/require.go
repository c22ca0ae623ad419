package vm

import (
	"errors"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Require returns the kernel to boot, fetching it into CacheDir on first
// use, or stops the test (testutil.Missing: a skip, a failure under
// HOSTPATH_TEST_REQUIRE_ALL=1) with the reason this machine cannot boot a
// VM (no qemu-system-x86_64, no static busybox, no apt-get, dpkg-deb or
// depmod, or no package lists to fetch the kernel with). Any other failure
// fails the test.
func Require(t testing.TB) *Kernel {
	t.Helper()
	for _, check := range []struct {
		find    func() (string, error)
		install string
	}{
		{QEMU, "apt-get install qemu-system-x86"},
		{Busybox, "apt-get install busybox-static"},
	} {
		if _, err := check.find(); err != nil {
			testutil.Missing(t, err.Error(), check.install)
			return nil
		}
	}
	k, err := FetchKernel(CacheDir())
	if errors.Is(err, ErrUnavailable) {
		testutil.Missing(t, err.Error(), "apt-get install apt dpkg kmod, and apt-get update so that apt-get download finds "+kernelMeta+"'s kernel")
		return nil
	}
	if err != nil {
		t.Fatalf("kernel for the VM: %v", err)
	}
	return k
}
