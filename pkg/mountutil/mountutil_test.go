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
