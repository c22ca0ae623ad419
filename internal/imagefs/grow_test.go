package imagefs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func total(t *testing.T, mnt string) uint64 {
	t.Helper()
	u, err := Stats(mnt)
	if err != nil {
		t.Fatal(err)
	}
	return u.TotalBytes
}

// TestExpandMounted grows a mounted image. xfs grows online. ext4 grows
// online only with CAP_SYS_RESOURCE: without it (the development machine)
// Expand says the grow waits for the next mount, and the next mount does
// it. Either way the write that did not fit before fits after.
func TestExpandMounted(t *testing.T) {
	for _, tc := range []struct {
		fs            string
		size, newSize int64
	}{
		{XFS, 300 << 20, 400 << 20},
		{Ext4, 32 << 20, 64 << 20},
	} {
		t.Run(tc.fs, func(t *testing.T) {
			dir := scratch(t, tc.fs)
			img, mnt := filepath.Join(dir, "vol.img"), mkdir(t, filepath.Join(dir, "mnt"))
			if err := Create(img, tc.size, tc.fs); err != nil {
				t.Fatal(err)
			}
			m := mustMount(t, img, mnt, tc.fs)
			defer func() { mustUnmount(t, img, mnt) }()
			before := total(t, mnt)
			// More than fits now, less than fits after.
			want := int64(before) + (tc.newSize-tc.size)/2
			if err := fill(filepath.Join(mnt, "big"), want); !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("write of %d bytes into %d: %v, want ENOSPC", want, before, err)
			}
			os.Remove(filepath.Join(mnt, "big"))

			if _, err := Expand(img, tc.size-1); !errors.Is(err, ErrShrink) {
				t.Fatalf("Expand to a smaller size = %v, want ErrShrink", err)
			}
			res, err := Expand(img, tc.newSize)
			if res == nil || res.Device != m.Device || res.DeviceSize != uint64(tc.newSize) || res.MountPath != mnt {
				t.Fatalf("Expand = %+v, %v", res, err)
			}
			if fi, _ := os.Stat(img); fi.Size() != tc.newSize {
				t.Fatalf("image file is %d bytes after Expand, want %d", fi.Size(), tc.newSize)
			}
			switch {
			case err == nil:
				if res.Pending || res.FSSize <= before || total(t, mnt) != res.FSSize {
					t.Fatalf("online grow: %+v; statfs total %d, before %d", res, total(t, mnt), before)
				}
			case tc.fs == Ext4 && errors.Is(err, ErrGrowAtNextMount):
				t.Logf("ext4 online grow not possible here: %v", err)
				if !res.Pending || total(t, mnt) != before {
					t.Fatalf("refused grow changed the filesystem: %+v", res)
				}
				// Expand again (the kubelet retries): same answer, no harm.
				if _, err := Expand(img, tc.newSize); !errors.Is(err, ErrGrowAtNextMount) {
					t.Fatalf("retried Expand = %v", err)
				}
				mustUnmount(t, img, mnt)
				m2 := mustMount(t, img, mnt, tc.fs)
				if !m2.Grown {
					t.Fatal("the next Mount did not apply the pending grow")
				}
				if total(t, mnt) <= before {
					t.Fatalf("filesystem still %d bytes after the next mount", total(t, mnt))
				}
			default:
				t.Fatalf("Expand: %v", err)
			}
			if err := fill(filepath.Join(mnt, "big"), want); err != nil {
				t.Fatalf("the same write after the grow: %v", err)
			}
			// The kubelet retries NodeExpandVolume until it succeeds: once
			// the filesystem has its size, a retry succeeds and does nothing.
			res, err = Expand(img, tc.newSize)
			if err != nil || res.Pending || res.FSSize != total(t, mnt) {
				t.Fatalf("Expand after the grow = %+v, %v; want done", res, err)
			}
		})
	}
}

// TestExpandUnmounted: a grow while nothing is mounted waits in the image
// file and happens at the next Mount; the data is intact.
func TestExpandUnmounted(t *testing.T) {
	for _, tc := range []struct {
		fs            string
		size, newSize int64
	}{
		{XFS, 300 << 20, 512 << 20},
		{Ext4, 32 << 20, 96 << 20},
	} {
		t.Run(tc.fs, func(t *testing.T) {
			dir := scratch(t, tc.fs)
			img, mnt := filepath.Join(dir, "vol.img"), mkdir(t, filepath.Join(dir, "mnt"))
			if err := Create(img, tc.size, tc.fs); err != nil {
				t.Fatal(err)
			}
			mustMount(t, img, mnt, tc.fs)
			if err := os.WriteFile(filepath.Join(mnt, "keep"), []byte("me"), 0o644); err != nil {
				t.Fatal(err)
			}
			before := total(t, mnt)
			mustUnmount(t, img, mnt)

			res, err := Expand(img, tc.newSize)
			if err != nil || !res.Pending || res.Device != "" {
				t.Fatalf("Expand of an unmounted image = %+v, %v; want pending, no device", res, err)
			}
			m := mustMount(t, img, mnt, tc.fs)
			defer mustUnmount(t, img, mnt)
			if !m.Grown {
				t.Fatal("Mount did not grow the filesystem")
			}
			after := total(t, mnt)
			if after <= before || after > uint64(tc.newSize) || after < uint64(tc.newSize)*8/10 {
				t.Fatalf("filesystem is %d bytes after growing a %d-byte image (was %d)", after, tc.newSize, before)
			}
			if got, err := os.ReadFile(filepath.Join(mnt, "keep")); err != nil || string(got) != "me" {
				t.Fatalf("data lost in the grow: %q %v", got, err)
			}
			// Mounting again finds nothing to grow.
			mustUnmount(t, img, mnt)
			if m := mustMount(t, img, mnt, tc.fs); m.Grown {
				t.Fatal("a second Mount grew again")
			}
		})
	}
}
