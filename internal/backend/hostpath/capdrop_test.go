package hostpath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// The capability is gone inside f and only there: CAP_CHOWN stands in for
// CAP_SYS_RESOURCE (which this machine's root lacks), since giving a file
// away is refused without it.
func TestWithoutCapability(t *testing.T) {
	testutil.RequireRoot(t)
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(f, 4321, 4321); err != nil {
		testutil.Missing(t, fmt.Sprintf("this process cannot give a file away even with its capabilities: %v", err),
			"run the tests as root with CAP_CHOWN, as CI does")
	}
	err := withoutCapability(unix.CAP_CHOWN, func() error { return os.Chown(f, 1234, 1234) })
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("chown without CAP_CHOWN: %v, want EPERM", err)
	}
	for i := 0; i < 50; i++ { // the dropped thread never serves anyone else
		if err := os.Chown(f, 1000+i, 1000+i); err != nil {
			t.Fatalf("chown #%d after withoutCapability returned: %v", i, err)
		}
	}
}
