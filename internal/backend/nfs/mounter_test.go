package nfs

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A call whose caller gave up marks its export busy until the operation
// returns, even on a healthy server (a kubelet or sidecar deadline, a slow
// listing). An unmount on that export must not force (MNT_FORCE|MNT_DETACH)
// for that alone: on the kernel's NFS client MNT_FORCE runs
// nfs_umount_begin on the superblock, which -EIOs every pending RPC of that
// superblock: the I/O of every other pod whose volume is a subdirectory of
// the same export on that node. Here: a healthy mount with a file open (a
// plain unmount says EBUSY) stays mounted, and once the file is closed a
// plain unmount removes it, though the export is still busy.
func TestUnmountAfterACallerGaveUpOnAHealthyExportIsNotForced(t *testing.T) {
	target, f := bindWithOpenFile(t)
	g := newGuard(time.Minute)

	// The healthy case: a plain unmount, refused while a file is open.
	if err := unmount(context.Background(), g, "healthy:/x", target); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("unmount of a busy healthy mount: %v, want EBUSY from a plain unmount", err)
	}

	// A statfs (say) whose caller gave up after a short deadline; the
	// server answers it a moment later: nothing is wrong with it.
	release := make(chan struct{})
	defer close(release)
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	g.do(cctx, "healthy:/x", "statfs", func() error { <-release; return nil })

	err := unmount(context.Background(), g, "healthy:/x", target)
	if m, _ := isMounted(target); !m {
		t.Errorf("unmount of a healthy export's mount, right after a caller of another operation gave up: %v, and the mount was forced and detached (on NFS: MNT_FORCE fails the pending I/O of every mount of that export on the node)", err)
	} else if !errors.Is(err, unix.EBUSY) {
		t.Errorf("unmount of a busy healthy mount while a caller's operation is held: %v, want EBUSY from a plain unmount", err)
	}
	f.Close()
	if err := unmount(context.Background(), g, "healthy:/x", target); err != nil {
		t.Errorf("plain unmount once nothing is open, while the export is held by an operation whose caller gave up: %v", err)
	}
}

// An unmount retried while the forced unmount of the same target has not
// returned (a teardown blocked on a dead server) joins it: one umount2 per
// target in flight, however often kubelet retries; once it returns, the
// next forced unmount starts a new one.
func TestForcedUnmountsOfOneTargetRunOneAtATime(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	release := make(chan struct{})
	g := newGuard(time.Minute)
	g.forceUnmount = func(string) error { calls.Add(1); <-release; return nil }
	target := filepath.Join(t.TempDir(), "never-mounted") // out of the mount table at once

	for i := 0; i < 3; i++ {
		if err := detach(context.Background(), g, "dead:/x", target); err != nil {
			t.Fatalf("detach %d: %v", i, err)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("three forced unmounts of one target while the first has not returned made %d umount2 calls, want 1", n)
	}
	close(release)
	// The first returns; the next forced unmount is a new call.
	for g.detaching(target) {
		time.Sleep(time.Millisecond)
	}
	if err := detach(context.Background(), g, "dead:/x", target); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("a forced unmount after the first returned: %d umount2 calls in all, want 2", n)
	}
	for g.detaching(target) { // nothing of the test outlives it
		time.Sleep(time.Millisecond)
	}
}
