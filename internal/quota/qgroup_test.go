package quota

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// TestIoctlLayouts pins the structs to the kernel's sizes (from the C
// headers): a wrong size would make the kernel read or write past them.
func TestIoctlLayouts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uintptr
	}{
		{"btrfs_ioctl_ino_lookup_args", unsafe.Sizeof(inoLookupArgs{}), 4096},
		{"btrfs_ioctl_qgroup_limit_args", unsafe.Sizeof(qgroupLimitArgs{}), 48},
		{"btrfs_ioctl_quota_ctl_args", unsafe.Sizeof(quotaCtlArgs{}), 16},
		{"fsxattr", unsafe.Sizeof(fsxattr{}), 28},
		{"fs_disk_quota", unsafe.Sizeof(fsDiskQuota{}), 112},
		{"fs_quota_statv", unsafe.Sizeof(fsQuotaStatv{}), 160},
	} {
		if tc.got != tc.want {
			t.Errorf("%s is %d bytes here, %d in the kernel", tc.name, tc.got, tc.want)
		}
	}
}

func syncFS(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// writeFile writes size bytes in 1 MiB chunks and syncs; it returns how
// many bytes were written before the first error.
func writeFile(path string, size int) (int, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i) | 1 // not zeros: no filesystem may skip them
	}
	n := 0
	for n < size {
		w, err := f.Write(chunk[:min(len(chunk), size-n)])
		n += w
		if err != nil {
			f.Close()
			return n, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return n, err
	}
	return n, f.Close()
}

func TestQgroupLimitRefusesWritesPastIt(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	vol := filepath.Join(mnt, "vol")
	if err := btrfs.CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	if on, err := QgroupsEnabled(mnt); err != nil || on {
		t.Fatalf("QgroupsEnabled on a fresh btrfs = %v, %v; want false", on, err)
	}
	if err := SetQgroupLimit(vol, 8<<20); !errors.Is(err, ErrQuotaDisabled) {
		t.Fatalf("SetQgroupLimit with quotas off = %v, want ErrQuotaDisabled", err)
	}
	if _, err := QgroupUsage(vol); !errors.Is(err, ErrQuotaDisabled) {
		t.Fatalf("QgroupUsage with quotas off = %v, want ErrQuotaDisabled", err)
	}
	// Data from before quotas were on must be counted too (the rescan).
	if _, err := writeFile(filepath.Join(vol, "old"), 2<<20); err != nil {
		t.Fatal(err)
	}
	for range 2 { // enabling twice is fine
		if err := EnableQgroups(mnt); err != nil {
			t.Fatal(err)
		}
	}
	if on, err := QgroupsEnabled(mnt); err != nil || !on {
		t.Fatalf("QgroupsEnabled after EnableQgroups = %v, %v", on, err)
	}
	if err := SetQgroupLimit(vol, 8<<20); err != nil {
		t.Fatal(err)
	}
	syncFS(t, vol)
	q, err := QgroupUsage(vol)
	if err != nil {
		t.Fatal(err)
	}
	if q.MaxReferenced != 8<<20 || q.Referenced < 2<<20 || q.Referenced > 3<<20 {
		t.Fatalf("qgroup after 2 MiB and an 8 MiB limit: %+v", q)
	}

	// 10 MiB more does not fit under 8 MiB: EDQUOT, and not much past it.
	n, err := writeFile(filepath.Join(vol, "big"), 10<<20)
	if !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("writing past the limit: %d bytes, err %v; want EDQUOT", n, err)
	}
	if n > 8<<20 {
		t.Fatalf("%d bytes written under an 8 MiB limit with 2 MiB used", n)
	}
	syncFS(t, vol)
	if q, err := QgroupUsage(vol); err != nil || q.Referenced > 8<<20 {
		t.Fatalf("usage past the limit: %+v, %v", q, err)
	}

	// Raise the limit (an expansion): the same write now succeeds.
	if err := SetQgroupLimit(vol, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(vol, "big"), 10<<20); err != nil {
		t.Fatalf("the same write after raising the limit: %v", err)
	}
	// No limit at all.
	if err := SetQgroupLimit(vol, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(vol, "more"), 10<<20); err != nil {
		t.Fatalf("write with the limit removed: %v", err)
	}
	syncFS(t, vol)
	if q, err := QgroupUsage(vol); err != nil || q.MaxReferenced != 0 || q.Referenced < 22<<20 {
		t.Fatalf("after removing the limit: %+v, %v", q, err)
	}
}

// TestQgroupUsageSources: the sysfs reader and the quota-tree reader (for
// kernels before 5.9) must agree.
func TestQgroupUsageSources(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	if err := EnableQgroups(mnt); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		size  int
		limit uint64
	}{
		{"empty", 0, 0},
		{"4MiB unlimited", 4 << 20, 0},
		{"3MiB limited", 3 << 20, 64 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vol := filepath.Join(mnt, filepath.Base(t.Name()))
			if err := btrfs.CreateSubvolume(vol); err != nil {
				t.Fatal(err)
			}
			if _, err := writeFile(filepath.Join(vol, "f"), tc.size); err != nil {
				t.Fatal(err)
			}
			if err := SetQgroupLimit(vol, tc.limit); err != nil {
				t.Fatal(err)
			}
			syncFS(t, vol)
			fromSysfs, err := QgroupUsage(vol)
			if err != nil {
				t.Fatal(err)
			}
			fd, err := openDir(vol)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			fromTree, err := qgroupFromTree(fd, vol, fromSysfs.SubvolumeID)
			if err != nil {
				t.Fatal(err)
			}
			if *fromTree != *fromSysfs {
				t.Fatalf("sysfs says %+v, the quota tree %+v", fromSysfs, fromTree)
			}
			if fromSysfs.MaxReferenced != tc.limit || fromSysfs.Referenced < uint64(tc.size) || fromSysfs.Referenced > uint64(tc.size)+1<<20 {
				t.Fatalf("qgroup %+v after writing %d bytes with limit %d", fromSysfs, tc.size, tc.limit)
			}
		})
	}
}

// TestSnapshotKeepsLimit: a snapshot (or a restore made by snapshotting a
// snapshot) of a limited subvolume has the same limit, enforced on its own.
func TestSnapshotKeepsLimit(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	if err := EnableQgroups(mnt); err != nil {
		t.Fatal(err)
	}
	vol, snap, restored := filepath.Join(mnt, "vol"), filepath.Join(mnt, "snap"), filepath.Join(mnt, "restored")
	if err := btrfs.CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	if err := SetQgroupLimit(vol, 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(vol, "data"), 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Snapshot(vol, snap); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Snapshot(snap, restored); err != nil {
		t.Fatal(err)
	}
	syncFS(t, mnt)
	for _, p := range []string{snap, restored} {
		q, err := QgroupUsage(p)
		if err != nil {
			t.Fatal(err)
		}
		if q.MaxReferenced != 8<<20 {
			t.Fatalf("%s: limit %d, want the source's %d", p, q.MaxReferenced, 8<<20)
		}
		if q.Referenced < 3<<20 {
			t.Fatalf("%s: referenced %d, want the 3 MiB it shares with its source", p, q.Referenced)
		}
	}
	// The restored volume is enforced by itself: 3 MiB shared + 6 MiB > 8.
	if _, err := writeFile(filepath.Join(restored, "new"), 6<<20); !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("write past the inherited limit: %v, want EDQUOT", err)
	}
	// A restore to a larger size raises its own limit only.
	if err := SetQgroupLimit(restored, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(restored, "new"), 6<<20); err != nil {
		t.Fatalf("write after raising the restored volume's limit: %v", err)
	}
	if q, err := QgroupUsage(vol); err != nil || q.MaxReferenced != 8<<20 {
		t.Fatalf("source limit changed with its restore's: %+v, %v", q, err)
	}
}

func TestQgroupRefusesWrongTargets(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	if err := EnableQgroups(mnt); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(mnt, "vol")
	if err := btrfs.CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(vol, "dir")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	plain := t.TempDir() // on the test machine's root filesystem
	for _, tc := range []struct {
		name, path string
		want       error
	}{
		{"directory inside a subvolume", inner, nil},
		{"not btrfs", plain, ErrNotBtrfs},
		{"missing", filepath.Join(mnt, "nope"), os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := SetQgroupLimit(tc.path, 1<<20)
			if err == nil {
				t.Fatal("SetQgroupLimit succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if _, err := QgroupUsage(tc.path); err == nil {
				t.Fatal("QgroupUsage succeeded")
			}
		})
	}
	// The refusal above must not have limited the enclosing subvolume.
	if q, err := QgroupUsage(vol); err != nil || q.MaxReferenced != 0 {
		t.Fatalf("enclosing subvolume: %+v, %v", q, err)
	}
}
