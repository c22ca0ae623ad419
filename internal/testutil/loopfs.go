package testutil

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// LoopFS makes a filesystem of sizeMiB in an image file, attaches it to a
// loop device and mounts it; it returns the mount point. Cleanup unmounts,
// detaches and removes the image even when the test fails, and fails the
// test if the image is still attached afterwards. (It checks this image,
// not a global count: other test packages attach loop devices in parallel.)
func LoopFS(t testing.TB, fstype string, sizeMiB int, mkfsArgs ...string) string {
	t.Helper()
	RequireRoot(t)
	mkfs := RequireMkfs(t, fstype)
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	args := append([]string{"-q"}, mkfsArgs...)
	if fstype == "xfs" || fstype == "btrfs" {
		args = append(args, "-f")
	}
	if out, err := exec.Command(mkfs, append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v\n%s", fstype, err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil && err != unix.EINVAL {
			t.Errorf("unmount %s: %v", mnt, err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("detach %s: %v %s", dev, err, out)
		}
		// A detach can complete a moment after the unmount releases the
		// device (autoclear; a btrfs lets its device go after the unmount
		// returns), longer on a loaded machine; wait for it, bounded.
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err := exec.Command("losetup", "--associated", img, "--noheadings", "--output", "NAME").Output()
			if err != nil {
				t.Errorf("losetup --associated: %v", err)
				break
			}
			if strings.TrimSpace(string(out)) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("image %s still attached to %s", img, strings.TrimSpace(string(out)))
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	if err := unix.Mount(dev, mnt, fstype, 0, ""); err != nil {
		t.Fatalf("mount %s: %v", dev, err)
	}
	return mnt
}

// FillFS writes files under dir until the filesystem says ENOSPC (blocks
// when files is false, inodes when true) and returns the filler directory
// to remove to free the space again.
func FillFS(t testing.TB, dir string, inodes bool) string {
	t.Helper()
	filler := filepath.Join(dir, "filler")
	if err := os.Mkdir(filler, 0o700); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := 0; ; i++ {
		name := filepath.Join(filler, strconv.Itoa(i))
		if inodes {
			f, err := os.Create(name)
			if err != nil {
				if isNoSpace(err) {
					return filler
				}
				t.Fatal(err)
			}
			f.Close()
			continue
		}
		f, err := os.Create(name)
		if err != nil {
			if isNoSpace(err) {
				return filler
			}
			t.Fatal(err)
		}
		for {
			if _, err := f.Write(chunk); err != nil {
				f.Close()
				if isNoSpace(err) {
					return filler
				}
				t.Fatal(err)
			}
		}
	}
}

func isNoSpace(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}
