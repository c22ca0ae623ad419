package mountutil

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		opts    []string
		want    uintptr
		wantErr bool
	}{
		{nil, 0, false},
		{[]string{"ro"}, unix.MS_RDONLY, false},
		{[]string{"noexec,nosuid", "nodev"}, unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV, false},
		{[]string{" noatime ", ""}, unix.MS_NOATIME, false},
		{[]string{"bind", "rw", "defaults"}, 0, false},
		{[]string{"uid=1000"}, 0, true},
		{[]string{"ro", "mand"}, 0, true},
		// A bind remount cannot make one mount synchronous: refused, not ignored.
		{[]string{"sync"}, 0, true},
		{[]string{"dirsync"}, 0, true},
	}
	for _, tc := range tests {
		got, err := ParseFlags(tc.opts)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseFlags(%q) = %#x, %v; want %#x, err=%v", tc.opts, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestBindReadOnlyAndUnmount(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	for _, d := range []string{src, dst} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := IsMountPoint(dst); err != nil || m {
		t.Fatalf("IsMountPoint before mount = %v, %v", m, err)
	}
	if err := Bind(src, dst, true, []string{"noexec"}); err != nil {
		t.Fatal(err)
	}
	if m, err := IsMountPoint(dst); err != nil || !m {
		t.Fatalf("same-filesystem bind mount not seen: %v, %v", m, err)
	}
	if ro, _ := IsReadOnly(dst); !ro {
		t.Fatal("mount is not read-only")
	}
	if err := os.WriteFile(filepath.Join(dst, "f"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write through a read-only bind: %v, want EROFS", err)
	}
	// A second mount stacked on the same path (what a crash between mount
	// and record can leave) is removed too.
	if err := Bind(src, dst, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := Unmount(dst, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("target not removed: %v", err)
	}
	if err := Unmount(dst, true); err != nil {
		t.Fatalf("unmount of a missing path: %v", err)
	}
	if err := Bind(src, dst, false, []string{"bogus"}); err == nil {
		t.Fatal("bogus option accepted")
	}
}

// Every option a publish accepts has its effect on a real bind mount, and a
// bind remount never drops what the data filesystem's mount had: a
// read-only publish of a volume on a nosuid,nodev,noexec filesystem stays
// nosuid,nodev,noexec.
func TestBindFlagsOnRealMounts(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	fsDir := filepath.Join(dir, "fs")
	if err := os.Mkdir(fsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", fsDir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(fsDir, 0)
	src := filepath.Join(fsDir, "vol")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	locked := int64(unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC)
	tests := []struct {
		readOnly bool
		opts     []string
		want     int64 // statfs flags that must be set
		not      int64 // and that must not
	}{
		{false, nil, locked, unix.ST_RDONLY},
		{true, nil, locked | unix.ST_RDONLY, 0},
		{false, []string{"ro"}, locked | unix.ST_RDONLY, 0},
		{false, []string{"noatime"}, locked | unix.ST_NOATIME, unix.ST_RDONLY},
		{true, []string{"nodiratime"}, locked | unix.ST_RDONLY | unix.ST_NODIRATIME, 0},
		{false, []string{"strictatime"}, locked, unix.ST_NOATIME | unix.ST_RELATIME},
		{false, []string{"nosuid,nodev,noexec"}, locked, unix.ST_RDONLY},
	}
	for i, tc := range tests {
		dst := filepath.Join(dir, "dst"+string(rune('a'+i)))
		if err := os.Mkdir(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := Bind(src, dst, tc.readOnly, tc.opts); err != nil {
			t.Fatalf("Bind(ro=%v, %q): %v", tc.readOnly, tc.opts, err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(dst, &st); err != nil {
			t.Fatal(err)
		}
		if st.Flags&tc.want != tc.want || st.Flags&tc.not != 0 {
			t.Errorf("Bind(ro=%v, %q): mount flags %#x, want %#x set and %#x clear", tc.readOnly, tc.opts, st.Flags, tc.want, tc.not)
		}
		if err := Unmount(dst, true); err != nil {
			t.Fatal(err)
		}
	}
}
