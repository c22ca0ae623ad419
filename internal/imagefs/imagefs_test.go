package imagefs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/loop"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// scratch returns a directory for images and mount points. At the end the
// test fails if anything under it is still frozen, mounted or attached to a
// loop device, and all of it is undone anyway.
func scratch(t testing.TB, fsTypes ...string) string {
	t.Helper()
	testutil.RequireRoot(t)
	for _, fs := range append(fsTypes, "ext4") {
		testutil.RequireMkfs(t, fs)
	}
	dir := t.TempDir()
	return guard(t, dir)
}

// guard registers the leak checks for dir (see scratch).
func guard(t testing.TB, dir string) string {
	t.Helper()
	testutil.CleanupLoopDevices(t, dir)
	testutil.CleanupMounts(t, dir)
	t.Cleanup(func() {
		for _, m := range testutil.MountsUnder(t, dir) {
			if was, err := Thaw(m); was || err != nil {
				t.Errorf("%s was left frozen (thawed now: %v)", m, err)
			}
		}
	})
	return dir
}

func mkdir(t testing.TB, p string) string {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// fill writes size bytes (not zeros) to path and fsyncs; it returns the
// first error.
func fill(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	for n := int64(0); n < size; {
		w, err := f.Write(chunk[:min(int64(len(chunk)), size-n)])
		n += int64(w)
		if err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func mustMount(t testing.TB, img, target, fs string) *Mounted {
	t.Helper()
	m, err := Mount(img, target, MountOptions{FSType: fs})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustUnmount(t testing.TB, img, target string) {
	t.Helper()
	if err := Unmount(img, target); err != nil {
		t.Fatal(err)
	}
}

func sizeFor(fs string) int64 {
	if fs == XFS {
		return 300 << 20
	}
	return 64 << 20
}

func TestMountLifecycle(t *testing.T) {
	for _, fs := range []string{Ext4, XFS} {
		t.Run(fs, func(t *testing.T) {
			dir := scratch(t, fs)
			img := filepath.Join(dir, "vol.img")
			a, b := mkdir(t, filepath.Join(dir, "a")), mkdir(t, filepath.Join(dir, "b"))
			size := sizeFor(fs)
			if err := Create(img, size, fs); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(img, &st); err != nil || st.Blocks*512 < size {
				t.Fatalf("new image of %d bytes allocates %d blocks, want every block its own: %v", size, st.Blocks, err)
			}
			m := mustMount(t, img, a, fs)
			if !m.DirectIO {
				t.Errorf("image on %s mounted without direct I/O", dir)
			}
			u, err := Stats(a)
			if err != nil {
				t.Fatal(err)
			}
			if u.TotalBytes > uint64(size) || u.TotalBytes < uint64(size)*7/10 || u.AvailableBytes == 0 || u.Inodes == 0 {
				t.Fatalf("Stats of a %d-byte %s image: %+v", size, fs, u)
			}
			if err := os.WriteFile(filepath.Join(a, "hello"), []byte("world"), 0o644); err != nil {
				t.Fatal(err)
			}
			// Again at the same place: nothing to do.
			if m2 := mustMount(t, img, a, fs); m2.Device != m.Device {
				t.Fatalf("second Mount at the same target used %s, first %s", m2.Device, m.Device)
			}
			if n := len(testutil.MountsUnder(t, a)); n != 1 {
				t.Fatalf("%d mounts at %s after mounting twice", n, a)
			}
			// A second mount point shares the device and the filesystem.
			if m3 := mustMount(t, img, b, fs); m3.Device != m.Device {
				t.Fatalf("second target got %s, want the same device %s", m3.Device, m.Device)
			}
			if got, err := os.ReadFile(filepath.Join(b, "hello")); err != nil || string(got) != "world" {
				t.Fatalf("second mount does not show the first's file: %q %v", got, err)
			}
			mustUnmount(t, img, b)
			if devs, _ := loop.Find(img); len(devs) != 1 {
				t.Fatalf("unmounting one of two mounts left %d devices, want 1", len(devs))
			}
			mustUnmount(t, img, a)
			mustUnmount(t, img, a) // nothing mounted: no error
			if left := testutil.LoopDevicesUnder(t, dir); len(left) != 0 {
				t.Fatalf("unmount left %v attached", left)
			}
			// Mount again: the data is there (no reformat).
			mustMount(t, img, a, fs)
			if got, err := os.ReadFile(filepath.Join(a, "hello")); err != nil || string(got) != "world" {
				t.Fatalf("remount lost the data: %q %v", got, err)
			}
			mustUnmount(t, img, a)
		})
	}
}

// TestFullImageIsENOSPC: the image is the limit; past it the volume's
// writer gets ENOSPC and the backing filesystem is untouched.
func TestFullImageIsENOSPC(t *testing.T) {
	for _, fs := range []string{Ext4, XFS} {
		t.Run(fs, func(t *testing.T) {
			dir := scratch(t, fs)
			img, mnt := filepath.Join(dir, "vol.img"), mkdir(t, filepath.Join(dir, "mnt"))
			size := sizeFor(fs)
			if err := Create(img, size, fs); err != nil {
				t.Fatal(err)
			}
			mustMount(t, img, mnt, fs)
			defer mustUnmount(t, img, mnt)
			err := fill(filepath.Join(mnt, "big"), size+(8<<20))
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("writing more than the image holds: %v, want ENOSPC", err)
			}
			fi, err := os.Stat(img)
			if err != nil || fi.Size() != size {
				t.Fatalf("image file changed size to %d: %v", fi.Size(), err)
			}
		})
	}
}

func TestCreateAndMountRefusals(t *testing.T) {
	dir := scratch(t, XFS)
	mnt := mkdir(t, filepath.Join(dir, "mnt"))
	for _, tc := range []struct {
		name string
		fs   string
		size int64
		want error
	}{
		{"xfs below its minimum", XFS, 200 << 20, ErrTooSmall},
		{"ext4 below its minimum", Ext4, 64 << 10, ErrTooSmall},
		{"unknown filesystem", "vfat", 64 << 20, ErrUnsupportedFS},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(dir, tc.name)
			if err := Create(img, tc.size, tc.fs); !errors.Is(err, tc.want) {
				t.Fatalf("Create = %v, want %v", err, tc.want)
			}
			if _, err := os.Stat(img); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused Create left %s: %v", img, err)
			}
		})
	}
	img := filepath.Join(dir, "x.img")
	if err := Create(img, 300<<20, XFS); err != nil {
		t.Fatal(err)
	}
	if err := Create(img, 300<<20, XFS); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create over an existing image = %v, want ErrExist", err)
	}
	// Blank and read-only: nothing to format with.
	if _, err := Mount(img, mnt, MountOptions{FSType: XFS, ReadOnly: true}); err == nil {
		t.Fatal("mounted a blank image read-only")
	}
	mustMount(t, img, mnt, XFS)
	mustUnmount(t, img, mnt)
	// An xfs image asked to mount as ext4.
	if _, err := Mount(img, mnt, MountOptions{FSType: Ext4}); err == nil {
		t.Fatal("mounted an xfs image as ext4")
	}
	// Attached by someone else as a raw device: never a second attach.
	raw, err := loop.Attach(img, loop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Mount(img, mnt, MountOptions{FSType: XFS}); !errors.Is(err, ErrInUse) {
		t.Errorf("Mount of an image attached raw = %v, want ErrInUse", err)
	}
	if _, err := loop.Detach(raw); err != nil {
		t.Fatal(err)
	}
	if left := testutil.LoopDevicesUnder(t, dir); len(left) != 0 {
		t.Fatalf("refused mounts left %v attached", left)
	}
}

// TestUnmountLeavesOthersAlone: Unmount of image A at a target that holds
// image B refuses.
func TestUnmountLeavesOthersAlone(t *testing.T) {
	dir := scratch(t)
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	mnt := mkdir(t, filepath.Join(dir, "mnt"))
	for _, img := range []string{a, b} {
		if err := Create(img, 16<<20, Ext4); err != nil {
			t.Fatal(err)
		}
	}
	mustMount(t, b, mnt, Ext4)
	defer mustUnmount(t, b, mnt)
	if err := Unmount(a, mnt); err == nil {
		t.Fatal("Unmount of image a unmounted image b")
	}
	if n := len(testutil.MountsUnder(t, mnt)); n != 1 {
		t.Fatalf("%d mounts at %s, want b's", n, mnt)
	}
}

func TestParseSuperblock(t *testing.T) {
	testutil.RequireRoot(t) // not for the parse: for the scratch checks
	dir := scratch(t, XFS)
	for _, tc := range []struct {
		name string
		mkfs []string
		size int64
		want superblock
	}{
		{"blank", nil, 1 << 20, superblock{}},
		{"ext4 small", []string{"mkfs.ext4", "-q", "-F"}, 16 << 20, superblock{Ext4, 16 << 20, 1024}},
		{"ext4 64bit 4k", []string{"mkfs.ext4", "-q", "-F", "-O", "64bit", "-b", "4096"}, 96 << 20, superblock{Ext4, 96 << 20, 4096}},
		{"xfs", []string{"mkfs.xfs", "-q", "-f", "-s", "size=4096"}, 320 << 20, superblock{XFS, 320 << 20, 4096}},
		{"xfs 512-byte sectors", []string{"mkfs.xfs", "-q", "-f", "-s", "size=512"}, 320 << 20, superblock{XFS, 320 << 20, 512}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(dir, tc.name)
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, tc.size); err != nil {
				t.Fatal(err)
			}
			if tc.mkfs != nil {
				if out, err := exec.Command(tc.mkfs[0], append(tc.mkfs[1:], img)...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %v %s", tc.mkfs, err, out)
				}
			}
			b := make([]byte, 8192)
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			f.ReadAt(b, 0)
			f.Close()
			if got := parseSuperblock(b); got != tc.want {
				t.Fatalf("parseSuperblock = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestMountImageMadeElsewhere: an ext4 made with 1 KiB blocks (by hand, by
// another tool) mounts: its loop device gets sectors no larger than its
// blocks.
func TestMountImageMadeElsewhere(t *testing.T) {
	dir := scratch(t)
	img, mnt := filepath.Join(dir, "vol.img"), mkdir(t, filepath.Join(dir, "mnt"))
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-b", "1024", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	m := mustMount(t, img, mnt, Ext4)
	defer mustUnmount(t, img, mnt)
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(m.Device), "queue/logical_block_size"))
	if err != nil || string(bytes.TrimSpace(b)) != "1024" {
		t.Fatalf("loop sector size %q (%v), want 1024 for 1 KiB blocks", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Mount says when it formatted a blank image, and with NoFormat refuses a
// blank image rather than make a new filesystem over what may be damage.
func TestMountFormattedAndNoFormat(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	img, mnt := filepath.Join(dir, "img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Create(img, 64<<20, Ext4); err != nil {
		t.Fatal(err)
	}
	if _, err := Mount(img, mnt, MountOptions{FSType: Ext4, NoFormat: true}); !errors.Is(err, ErrBlank) {
		t.Fatalf("NoFormat mount of a blank image: %v, want ErrBlank", err)
	}
	m, err := Mount(img, mnt, MountOptions{FSType: Ext4})
	if err != nil || !m.Formatted {
		t.Fatalf("first mount: %+v %v, want Formatted", m, err)
	}
	if err := Unmount(img, mnt); err != nil {
		t.Fatal(err)
	}
	m, err = Mount(img, mnt, MountOptions{FSType: Ext4, NoFormat: true})
	if err != nil || m.Formatted {
		t.Fatalf("second mount: %+v %v, want a plain mount", m, err)
	}
	if err := Unmount(img, mnt); err != nil {
		t.Fatal(err)
	}
}
