package nfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// useStandInExport opens export s:/e of a backend whose mounter binds a
// local directory (this kernel has no NFS client), and returns it with that
// directory and the stand-in (which records each mount). Everything is
// released and unmounted when the test ends.
func useStandInExport(t testing.TB) (*Export, string, *testutil.NFSStandIn) {
	t.Helper()
	return useStandInExportWith(t, Options{})
}

// useStandInExportWith is useStandInExport of a backend with opts, whose
// MountDir, Mounter and Timeout it sets.
func useStandInExportWith(t testing.TB, opts Options) (*Export, string, *testutil.NFSStandIn) {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	standin := testutil.NewNFSStandIn()
	export := standin.AddExport(t, "s", "/e", filepath.Join(dir, "export"))
	opts.MountDir, opts.Mounter, opts.Timeout = filepath.Join(dir, "mnt"), standin, 5*time.Second
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	x, err := b.Use(context.Background(), "s", "/e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Release)
	return x, export, standin
}

// bindWithOpenFile bind-mounts a fresh directory at a target and holds a
// file open inside it, so that a plain unmount is EBUSY. It returns the
// target and the file; the file is closed and the mount removed when the
// test ends.
func bindWithOpenFile(t *testing.T) (string, *os.File) {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	src, target := filepath.Join(dir, "src"), filepath.Join(dir, "target")
	for _, d := range []string{src, target} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(target, "open"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return target, f
}
