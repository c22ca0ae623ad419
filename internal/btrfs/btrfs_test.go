package btrfs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

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

func TestIoctlLayouts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"btrfs_ioctl_search_key", unsafe.Sizeof(searchKey{}), 104},
		{"btrfs_ioctl_search_args", unsafe.Sizeof(searchArgs{}), 4096},
		{"btrfs_ioctl_search_header", unsafe.Sizeof(searchHeader{}), 32},
		{"btrfs_ioctl_ino_lookup_args", unsafe.Sizeof(inoLookupArgs{}), 4096},
	} {
		if tc.got != tc.want {
			t.Errorf("struct %s is %d bytes here, the kernel's is %d", tc.name, tc.got, tc.want)
		}
	}
}

// A subvolume holding subvolumes, nested ones, a snapshot and a read-only
// snapshot among them, is destroyed whole; plain DeleteSubvolume refuses it.
func TestDeleteSubvolumeTree(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	vol := filepath.Join(mnt, "vol")
	if err := CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "a/b", "a/b/c", "d"} {
		if err := CreateSubvolume(filepath.Join(vol, p)); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(vol, p, "f"), []byte(p), 0o644)
	}
	if err := Snapshot(filepath.Join(vol, "a/b"), filepath.Join(vol, "d/snap")); err != nil {
		t.Fatal(err)
	}
	// Read-only, as btrfs subvolume snapshot -r makes it
	// (BTRFS_IOC_SUBVOL_SETFLAGS, BTRFS_SUBVOL_RDONLY).
	fd, err := unix.Open(filepath.Join(vol, "d/snap"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	rdonly := uint64(1 << 1)
	if err := ioctl(fd, 0x4008941a, unsafe.Pointer(&rdonly)); err != nil {
		t.Fatalf("make the snapshot read-only: %v", err)
	}
	unix.Close(fd)
	if err := os.WriteFile(filepath.Join(vol, "d/snap/g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write into the read-only snapshot: %v, want EROFS", err)
	}
	if err := DeleteSubvolume(vol); !errors.Is(err, unix.ENOTEMPTY) {
		t.Fatalf("DeleteSubvolume of a subvolume holding others: %v, want ENOTEMPTY", err)
	}
	if err := DeleteSubvolumeTree(vol, mnt); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(vol); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", vol, err)
	}
	if err := DeleteSubvolumeTree(vol, mnt); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("DeleteSubvolumeTree of nothing: %v, want ENOENT", err)
	}
}

// A chain of subvolumes each inside the last, deeper than any fixed bound,
// under a read-only top, goes whole.
func TestDeleteSubvolumeTreeDeepChain(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	vol := filepath.Join(mnt, "vol")
	if err := CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(vol, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5000; i++ {
		var args volArgs
		copy(args.name[:], "s")
		if err := ioctl(fd, iocSubvolNew, unsafe.Pointer(&args)); err != nil {
			t.Fatalf("subvolume %d: %v", i, err)
		}
		next, err := unix.Openat(fd, "s", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		fd = next
	}
	unix.Close(fd)
	rdonly := uint64(subvolRdonly)
	if fd, err = unix.Open(vol, unix.O_RDONLY|unix.O_DIRECTORY, 0); err != nil {
		t.Fatal(err)
	}
	if err := ioctl(fd, iocSubvolSetFlags, unsafe.Pointer(&rdonly)); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := DeleteSubvolumeTree(vol, mnt); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(vol); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", vol, err)
	}
}
