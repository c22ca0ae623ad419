package vm

import (
	"errors"
	"testing"
)

// Require returns the kernel to boot, fetching it into CacheDir on first
// use, or skips the test with the reason this machine cannot boot a VM (no
// qemu-system-x86_64, no static busybox, no apt-get or package lists to
// fetch the kernel with). Any other failure fails the test.
func Require(t testing.TB) *Kernel {
	t.Helper()
	for _, check := range []func() (string, error){QEMU, Busybox} {
		if _, err := check(); err != nil {
			t.Skipf("skipping: %v", err)
		}
	}
	k, err := FetchKernel(CacheDir())
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatalf("kernel for the VM: %v", err)
	}
	return k
}
