package nfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A tenant makes, deep in its volume (a path of about 3,800 bytes), tens
// of thousands of subdirectories side by side: the look for another share
// before its delete holds memory for the depth of the tree, not for each
// entry (it held a path string per subdirectory found and not yet entered:
// about 7 KB each, 400 MiB for 60,000).
func TestLookInsideAVolumeHoldsMemoryByDepthNotEntries(t *testing.T) {
	x, export, _ := useStandInExport(t)
	const n = 20000
	deep := filepath.Join(export, "vol")
	if err := os.Mkdir(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(deep, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	comp := strings.Repeat("a", 250)
	for i := 0; i < 15; i++ {
		if err := unix.Mkdirat(fd, comp, 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, comp, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	for i := 0; i < n; i++ {
		if err := unix.Mkdirat(fd, fmt.Sprintf("%06d", i), 0o755); err != nil {
			unix.Close(fd)
			t.Fatal(err)
		}
	}
	unix.Close(fd)

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	start := time.Now()
	err = x.CheckNoShareInside(context.Background(), "vol")
	close(stop)
	<-stopped
	grew := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("walk of %d subdirectories in %s; heap grew by at most %d KiB", n, time.Since(start).Round(time.Millisecond), grew>>10)
	if err != nil {
		t.Fatalf("CheckNoShareInside = %v; want nil", err)
	}
	if grew > 32<<20 {
		t.Fatalf("the walk of %d subdirectories grew the heap by %d MiB; want it bounded by the tree's depth (< 32 MiB)", n, grew>>20)
	}
}

// On an export that squashes root, a directory its tenant made unreadable
// to others stops the look with ErrCannotLook naming that directory, not
// with an error that says nothing of what to do.
func TestLookInsideAVolumeNamesADirectoryItMayNotRead(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	standin := testutil.NewNFSStandIn()
	export := standin.AddExport(t, "s", "/e", filepath.Join(dir, "export"))
	// What root_squash does to the controller (nobody, not the owner):
	// each step of the look runs without CAP_DAC_OVERRIDE and
	// CAP_DAC_READ_SEARCH.
	b, err := New(Options{MountDir: filepath.Join(dir, "mnt"), Mounter: standin, Timeout: 5 * time.Second,
		BeforeFileOp: func(_, op string) error {
			if strings.HasPrefix(op, "look inside") {
				return testutil.SquashRootOnThisThread()
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	x, err := b.Use(context.Background(), "s", "/e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Release)
	private := filepath.Join(export, "vol", "home", "private")
	if err := os.MkdirAll(private, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(private, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	err = x.CheckNoShareInside(context.Background(), "vol")
	if !errors.Is(err, ErrCannotLook) || !strings.Contains(err.Error(), "vol/home/private") {
		t.Fatalf("CheckNoShareInside of a tree with a directory the driver may not read = %v; want ErrCannotLook naming vol/home/private", err)
	}
}
