package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A device listed under one directory and attached meanwhile to a file of
// another is left alone; one still backed under the directory is detached.
func TestDetachIfBackedUnderDetachesOnlyWhatIsStillUnderDir(t *testing.T) {
	RequireRoot(t)
	losetup := RequireCommand(t, "losetup")
	mine, theirs := t.TempDir(), t.TempDir()
	file := filepath.Join(theirs, "img")
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(losetup, "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command(losetup, "-d", dev).Run() })

	if err := DetachIfBackedUnder(dev, mine); err != nil {
		t.Fatal(err)
	}
	if got, _ := LoopDevicesBackedUnder(theirs); len(got) != 1 || got[0] != dev {
		t.Fatalf("%s, backed by a file of another directory, was detached: devices under it now %v", dev, got)
	}
	if err := DetachIfBackedUnder(dev, theirs); err != nil {
		t.Fatal(err)
	}
	if got, _ := LoopDevicesBackedUnder(theirs); len(got) != 0 {
		t.Fatalf("%s is still attached after its detach: %v", dev, got)
	}
}
