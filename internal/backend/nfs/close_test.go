package nfs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// gatedMounter holds the first mount of one source in flight: it waits
// until its context ends or the test opens the gate, and then the mount
// lands whatever happened, as mount(2) may finish while mount(8) is being
// killed. It reports the kill (as ExecMounter does once its context ended)
// or success; one that ignores the kill waits for the gate alone. Every
// other mount goes to next.
type gatedMounter struct {
	next          Mounter
	source        string
	reportKill    bool
	ignoresCancel bool
	calls         atomic.Int32
	entered       chan struct{} // closed when the held mount starts
	release       chan struct{} // closed by the test: the held mount goes on
	landed        chan struct{} // closed when the held mount has landed
}

func (m *gatedMounter) Mount(ctx context.Context, source, target, fstype string, options []string) error {
	if source != m.source || m.calls.Add(1) != 1 {
		return m.next.Mount(ctx, source, target, fstype, options)
	}
	close(m.entered)
	if m.ignoresCancel {
		<-m.release
	}
	select {
	case <-ctx.Done():
	case <-m.release:
	}
	err := m.next.Mount(context.Background(), source, target, fstype, options)
	close(m.landed)
	if err == nil && m.reportKill && ctx.Err() != nil {
		err = fmt.Errorf("mount %s at %s: killed after %w", source, target, ctx.Err())
	}
	return err
}

// await waits for ch, or fails the test when it does not come (a hang
// guard, not a timing assertion).
func await[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("%s did not happen within a minute", what)
		panic("unreachable")
	}
}

// Close promises that no mount of this process outlives it. A mount in
// flight when it is called (a sweep or copy job of the driver whose
// context Driver.Close cancelled, whose mount goes on in the background;
// or a call still waiting for its mount) must not land after Close has
// unmounted everything: Close waits for it and unmounts what it mounted.
// One that outlives Close's wait (a mounter that ignores the kill) undoes
// itself when it returns. Nor may a Use after Close mount anything.
func TestCloseLeavesNoMountThatWasInFlight(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name          string
		source        string // the mount held in flight
		callerGivesUp bool
		reportKill    bool
		ignoresCancel bool // Close's wait for it ends first
	}{
		{"mount of the root whose caller gave up, killed as it landed", "s:/e", true, true, false},
		{"mount of the root whose caller gave up, landed", "s:/e", true, false, false},
		{"mount of the root whose caller waits, landed", "s:/e", false, false, false},
		{"look at the export above, whose caller gave up, killed as it landed", "s:/", true, true, false},
		{"mount of the root that ignores the kill, whose caller waits", "s:/e", false, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testutil.RequireRoot(t)
			dir := t.TempDir()
			testutil.CleanupMounts(t, dir)
			standin := testutil.NewNFSStandIn()
			above := standin.AddExport(t, "s", "/", filepath.Join(dir, "export"))
			standin.AddExport(t, "s", "/e", filepath.Join(above, "e"))
			m := &gatedMounter{next: standin, source: tc.source, reportKill: tc.reportKill, ignoresCancel: tc.ignoresCancel,
				entered: make(chan struct{}), release: make(chan struct{}), landed: make(chan struct{})}
			timeout := 5 * time.Second
			if tc.ignoresCancel {
				timeout = 2 * time.Second // how long Close waits for it
			}
			b, err := New(Options{MountDir: filepath.Join(dir, "mnt"), Mounter: m, Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type used struct {
				x   *Export
				err error
			}
			uses := make(chan used, 1)
			go func() {
				x, err := b.Use(ctx, "s", "/e")
				uses <- used{x, err}
			}()
			await(t, "the mount of "+tc.source, m.entered)
			var u used
			if tc.callerGivesUp {
				cancel()
				if u = await(t, "the return of Use", uses); u.err == nil {
					u.x.Release()
					t.Fatalf("Use whose caller gave up while %s was mounting: no error", tc.source)
				}
			}

			closed := make(chan struct{})
			go func() { b.Close(); close(closed) }()
			await(t, "the return of Close", closed)
			close(m.release) // a mount Close did not wait for lands now
			await(t, "the landing of the mount of "+tc.source, m.landed)
			if !tc.callerGivesUp {
				// Use returns once the mount has returned (and, if it
				// returned after Close, undone itself).
				if u = await(t, "the return of Use", uses); u.err == nil {
					defer u.x.Release()
				}
			}
			if left := testutil.MountsUnder(t, dir); len(left) > 0 {
				t.Errorf("a mount of %s in flight when Close was called is left after Close returned (Use: %v): %v", tc.source, u.err, left)
			}

			x, err := b.Use(context.Background(), "s", "/e")
			if err == nil {
				x.Release()
				t.Errorf("Use after Close mounted the export")
			} else if !errors.Is(err, ErrBusy) {
				t.Errorf("Use after Close: %v, want ErrBusy (UNAVAILABLE: the driver is shutting down)", err)
			}
		})
	}
}
