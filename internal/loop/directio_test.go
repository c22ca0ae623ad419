package loop

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// TestDirectIOOnFilesystems attaches a file on each backing filesystem with
// direct I/O and checks what the kernel granted and that the bytes go
// through. The last case is a backing filesystem on a 4 KiB-sector device
// with a loop device asking for 512-byte sectors: direct I/O cannot work
// there, and the device must still attach, buffered, and say so.
func TestDirectIOOnFilesystems(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name      string
		mount     func(t *testing.T) string
		blockSize uint32
		wantDIO   bool
	}{
		{"ext4", func(t *testing.T) string { return testutil.LoopFS(t, "ext4", 64) }, 0, true},
		{"xfs", func(t *testing.T) string { return testutil.LoopFS(t, "xfs", 300) }, 0, true},
		{"btrfs", func(t *testing.T) string { return testutil.LoopFS(t, "btrfs", 128) }, 0, true},
		{"4k-sector fs, 4k loop", func(t *testing.T) string { return fourKSectorFS(t) }, 0, true},
		{"4k-sector fs, 512 loop", func(t *testing.T) string { return fourKSectorFS(t) }, 512, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := tc.mount(t)
			testutil.CleanupLoopDevices(t, mnt)
			want := pattern(2<<20, 21)
			file := newFile(t, mnt, "vol", want)
			d, err := Attach(file, Options{DirectIO: true, BlockSize: tc.blockSize})
			if err != nil {
				t.Fatal(err)
			}
			defer detach(t, d)
			if d.DirectIO != tc.wantDIO {
				t.Errorf("DirectIO = %v, want %v", d.DirectIO, tc.wantDIO)
			}
			if b, _ := os.ReadFile(filepathJoinSys(d.Number, "loop/dio")); string(bytes.TrimSpace(b)) != map[bool]string{true: "1", false: "0"}[d.DirectIO] {
				t.Errorf("sysfs dio = %q, Device.DirectIO = %v", b, d.DirectIO)
			}
			if got := readDev(t, d.Path, len(want)); !bytes.Equal(got, want) {
				t.Fatal("device does not read the file")
			}
			f, err := os.OpenFile(d.Path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			news := pattern(1<<20, 22)
			if _, err := f.WriteAt(news, 512<<10); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			copy(want[512<<10:], news)
			got, _ := os.ReadFile(file)
			if !bytes.Equal(got, want) {
				t.Fatal("write through the device did not reach the file")
			}
		})
	}
}

func filepathJoinSys(n int, rel string) string {
	return filepath.Join(sysBlock, "loop"+strconv.Itoa(n), rel)
}

// fourKSectorFS mounts an ext4 filesystem on a loop device with 4 KiB
// logical sectors (attached by this package) and returns the mount point.
func fourKSectorFS(t *testing.T) string {
	t.Helper()
	testutil.RequireMkfs(t, "ext4")
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "4k.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	testutil.CleanupLoopDevices(t, dir)
	d, err := Attach(img, Options{DirectIO: true, BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil && err != unix.EINVAL {
			t.Errorf("unmount %s: %v", mnt, err)
		}
		if _, err := Detach(d); err != nil {
			t.Errorf("detach %s: %v", d.Path, err)
		}
	})
	if out, err := exec.Command("mkfs.ext4", "-q", d.Path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if err := unix.Mount(d.Path, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	return mnt
}
