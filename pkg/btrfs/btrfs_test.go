package btrfs

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

func TestVolArgsLayout(t *testing.T) {
	if n := unsafe.Sizeof(volArgs{}); n != 4096 {
		t.Fatalf("struct btrfs_ioctl_vol_args is %d bytes here, the kernel's is 4096", n)
	}
}

func TestSubvolumeLifecycle(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	vol, snap := filepath.Join(mnt, "vol"), filepath.Join(mnt, "snap")
	if err := CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	if ok, err := IsSubvolume(vol); !ok || err != nil {
		t.Fatalf("IsSubvolume(new subvolume) = %v, %v", ok, err)
	}
	testutil.WriteSampleTree(t, vol, 50)
	want := testutil.TreeManifest(t, vol)
	if err := Snapshot(vol, snap); err != nil {
		t.Fatal(err)
	}
	// The snapshot is a point in time: later writes to the source do not
	// show in it, and it is writable itself.
	os.WriteFile(filepath.Join(vol, "later"), []byte("x"), 0o644)
	if got := testutil.TreeManifest(t, snap); testutil.DiffManifests(want, got) != "" {
		t.Fatalf("snapshot differs from its source at snapshot time:\n%s", testutil.DiffManifests(want, got))
	}
	if err := os.WriteFile(filepath.Join(snap, "own"), []byte("y"), 0o644); err != nil {
		t.Fatalf("snapshot is not writable: %v", err)
	}
	for _, p := range []string{vol, snap} {
		if err := DeleteSubvolume(p); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("%s still there: %v", p, err)
		}
	}
	plain := filepath.Join(mnt, "plain")
	os.Mkdir(plain, 0o755)
	if ok, _ := IsSubvolume(plain); ok {
		t.Fatal("a plain directory passes as a subvolume")
	}
	if ok, _ := IsSubvolume(t.TempDir()); ok {
		t.Fatal("a directory on another filesystem passes as a subvolume")
	}
}
