package driver

import (
	"flag"
	"io"
	"os"
	"testing"

	"k8s.io/klog/v2"
)

// TestMain keeps the driver's logs out of test and benchmark output; run
// with HOSTPATH_TEST_LOGS=1 to see them.
func TestMain(m *testing.M) {
	if tenantChild() {
		return
	}
	if os.Getenv("HOSTPATH_TEST_LOGS") == "" {
		fs := flag.NewFlagSet("klog", flag.ContinueOnError)
		klog.InitFlags(fs)
		_ = fs.Set("logtostderr", "false")
		_ = fs.Set("stderrthreshold", "FATAL")
		klog.SetOutput(io.Discard)
	}
	os.Exit(m.Run())
}
