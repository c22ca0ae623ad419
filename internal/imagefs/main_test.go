package imagefs

import (
	"io"
	"os"
	"testing"

	"k8s.io/klog/v2"
)

// TestMain silences klog (mount-utils logs every format and mount at level
// 0, which buries benchmark lines and test output); the errors the tests
// check carry the same text. HOSTPATH_TEST_KLOG=1 keeps it.
func TestMain(m *testing.M) {
	if os.Getenv("HOSTPATH_TEST_KLOG") == "" {
		klog.LogToStderr(false)
		klog.SetOutput(io.Discard)
	}
	os.Exit(m.Run())
}
