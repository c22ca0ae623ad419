package quota

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/loop"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// quotaFS makes a filesystem image with mkfs arguments, attaches it and
// tries to mount it with data as mount options. It returns the mount point,
// or the mount's error when the kernel refuses (everything is cleaned up
// either way).
func quotaFS(t *testing.T, fstype string, mkfsArgs []string, data string) (string, error) {
	t.Helper()
	testutil.RequireRoot(t)
	mkfs := testutil.RequireMkfs(t, fstype)
	dir := t.TempDir()
	testutil.CleanupLoopDevices(t, dir)
	testutil.CleanupMounts(t, dir)
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 320<<20); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"-q"}, mkfsArgs...), img)
	if fstype == "xfs" {
		args = append([]string{"-f"}, args...)
	}
	if out, err := exec.Command(mkfs, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s %v: %v\n%s", fstype, args, err, out)
	}
	dev, err := loop.Attach(img, loop.Options{AutoClear: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close() // after a mount the mount holds it; else it detaches
	if err := unix.Mount(dev.Path, mnt, fstype, 0, data); err != nil {
		return "", err
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt, nil
}

// TestProjectQuotaDetection checks that detection agrees with what the
// kernel does: where a quota-enabled mount works, ProjectQuotaSupport says
// yes on it; where the kernel refuses such a mount (the development machine:
// no CONFIG_QFMT_V2, no CONFIG_XFS_QUOTA), it says "not supported by this
// kernel" on a plain mount of the same filesystem.
func TestProjectQuotaDetection(t *testing.T) {
	for _, tc := range []struct {
		fs        string
		quotaMkfs []string
		quotaOpts string
	}{
		{"ext4", []string{"-O", "quota,project"}, ""},
		{"xfs", nil, "prjquota"},
	} {
		t.Run(tc.fs, func(t *testing.T) {
			plain, err := quotaFS(t, tc.fs, nil, "")
			if err != nil {
				t.Fatalf("plain %s mount: %v", tc.fs, err)
			}
			quota, qerr := quotaFS(t, tc.fs, tc.quotaMkfs, tc.quotaOpts)
			plainErr := ProjectQuotaSupport(plain)
			t.Logf("plain %s: %v", tc.fs, plainErr)
			if !errors.Is(plainErr, ErrNotSupported) {
				t.Fatalf("a %s without project quotas passes detection: %v", tc.fs, plainErr)
			}
			var nse *NotSupportedError
			if !errors.As(plainErr, &nse) {
				t.Fatalf("error %T is not a *NotSupportedError", plainErr)
			}
			if qerr != nil {
				t.Logf("quota-enabled %s mount refused by the kernel: %v", tc.fs, qerr)
				if !nse.Kernel || !strings.Contains(plainErr.Error(), "not supported by this kernel") {
					t.Fatalf("kernel refuses quota mounts, but detection blames the filesystem: %v", plainErr)
				}
				// The limit calls say the same, and change nothing.
				if err := SetProjectLimit(plain, 7, 1<<20); !errors.Is(err, ErrNotSupported) {
					t.Fatalf("SetProjectLimit where the kernel has no quotas = %v", err)
				}
				if _, _, err := ProjectUsage(plain, 7); !errors.Is(err, ErrNotSupported) {
					t.Fatalf("ProjectUsage where the kernel has no quotas = %v", err)
				}
				return
			}
			if nse.Kernel {
				t.Fatalf("a quota mount works, but detection says the kernel cannot: %v", plainErr)
			}
			if err := ProjectQuotaSupport(quota); err != nil {
				t.Fatalf("quota-enabled %s: %v", tc.fs, err)
			}
			enforced(t, quota)
		})
	}
}

// enforced sets a project limit and writes past it. It runs only on a
// kernel with ext4/xfs quota support (not the development machine).
func enforced(t *testing.T, mnt string) {
	t.Helper()
	dir := filepath.Join(mnt, "vol")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SetProjectID(dir, 7); err != nil {
		t.Fatal(err)
	}
	if err := SetProjectLimit(mnt, 7, 4<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(dir, "big"), 8<<20); !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("write past the project limit: %v, want EDQUOT", err)
	}
	used, limit, err := ProjectUsage(mnt, 7)
	if err != nil || limit != 4<<20 || used > 4<<20 {
		t.Fatalf("ProjectUsage = %d, %d, %v", used, limit, err)
	}
	if err := SetProjectLimit(mnt, 7, 16<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := writeFile(filepath.Join(dir, "big"), 8<<20); err != nil {
		t.Fatalf("the same write after raising the limit: %v", err)
	}
}

func TestProjectQuotaOtherFilesystems(t *testing.T) {
	btr := testutil.LoopFS(t, "btrfs", 128)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"btrfs", btr, "qgroups"},
		{"tmpfs", "/dev/shm", "only ext4 and xfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat(tc.path); err != nil {
				testutil.Missing(t, err.Error(), "a tmpfs on /dev/shm, as every Debian system has")
			}
			err := ProjectQuotaSupport(tc.path)
			var nse *NotSupportedError
			if !errors.As(err, &nse) || nse.Kernel || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ProjectQuotaSupport(%s) = %v, want a filesystem reason mentioning %q", tc.name, err, tc.want)
			}
		})
	}
}

// TestProjectIDInherited: xfs stores project IDs even without quota
// support, so this part runs everywhere xfs does.
func TestProjectIDInherited(t *testing.T) {
	mnt := testutil.LoopFS(t, "xfs", 300)
	vol := filepath.Join(mnt, "vol")
	if err := os.MkdirAll(filepath.Join(vol, "before"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SetProjectID(vol, 4242); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(vol, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "a", "b", "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rel  string
		want uint32
	}{
		{"", 4242},
		{"a", 4242},
		{"a/b/f", 4242},
		{"before", 0}, // existed before: keeps its ID
	} {
		got, err := ProjectID(filepath.Join(vol, tc.rel))
		if err != nil || got != tc.want {
			t.Errorf("ProjectID(%q) = %d, %v; want %d", tc.rel, got, err, tc.want)
		}
	}
}
