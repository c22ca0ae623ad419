package driver

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// retry calls f as csi-provisioner and csi-snapshotter do: each attempt
// gets a short deadline, and ABORTED or DEADLINE_EXCEEDED means "again".
// It returns the attempts made.
func retry(t *testing.T, perCall time.Duration, f func(context.Context) error) int {
	t.Helper()
	for n := 1; n <= 5000; n++ {
		err := f(deadline(t, perCall))
		switch status.Code(err) {
		case codes.OK:
			return n
		case codes.Aborted, codes.DeadlineExceeded:
			time.Sleep(perCall)
		default:
			t.Fatalf("attempt %d: %v", n, err)
		}
	}
	t.Fatal("never completed in 5000 attempts")
	return 0
}

func writeRandom(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// A snapshot, a restore and a clone whose copies take many times the
// caller's deadline complete through the caller's retries, as on a cluster
// where csi-snapshotter and csi-provisioner give each call 10 s and a copy
// of tens of GiB takes minutes. Each copy is a real in-kernel copy of
// 256 MiB on ext4; every call has 20 ms.
func TestCopyOutlivesItsCaller(t *testing.T) {
	e := newEnvOn(t, testutil.LoopFS(t, "ext4", 3072))
	src := e.create(t, "src")
	writeRandom(t, filepath.Join(e.d.hostpath.vols.Path(src), "data"), 256<<20)
	want := testutil.TreeManifest(t, e.d.hostpath.vols.Path(src))
	const perCall = 20 * time.Millisecond

	var snapID string
	n := retry(t, perCall, func(c context.Context) error {
		r, err := e.d.CreateSnapshot(c, snapReq("snap", src))
		snapID = r.GetSnapshot().GetSnapshotId()
		return err
	})
	t.Logf("snapshot completed at attempt %d", n)
	if n < 2 {
		t.Fatalf("the snapshot fit in one %v call: the test proves nothing", perCall)
	}
	for _, tc := range []struct {
		name string
		req  *csi.CreateVolumeRequest
	}{
		{"restore", fromSnapshot("restored", 0, snapID)},
		{"clone", fromVolume("cloned", 0, src)},
	} {
		var id string
		n := retry(t, perCall, func(c context.Context) error {
			r, err := e.d.CreateVolume(c, tc.req)
			id = r.GetVolume().GetVolumeId()
			return err
		})
		t.Logf("%s completed at attempt %d", tc.name, n)
		if n < 2 {
			t.Fatalf("the %s fit in one %v call: the test proves nothing", tc.name, perCall)
		}
		if got := testutil.TreeManifest(t, e.d.hostpath.vols.Path(id)); testutil.DiffManifests(want, got) != "" {
			t.Fatalf("%s differs from the source:\n%s", tc.name, testutil.DiffManifests(want, got))
		}
	}
	if got := testutil.TreeManifest(t, e.d.hostpath.vols.SnapshotPath(snapID)); testutil.DiffManifests(want, got) != "" {
		t.Fatalf("snapshot differs from the source:\n%s", testutil.DiffManifests(want, got))
	}
	vols, _ := e.d.hostpath.vols.List()
	snaps, _ := e.d.hostpath.vols.ListSnapshots()
	if len(vols) != 3 || len(snaps) != 1 {
		t.Fatalf("%d volume and %d snapshot directories, want 3 and 1 (one copy each, never a second)", len(vols), len(snaps))
	}
}

// While a snapshot copies a volume: a second call for the same snapshot
// name is answered at once with ABORTED (no second copy), 200 other volumes
// are created, the volume's pod can be stopped and started (unpublish,
// unstage, stage, publish), another snapshot of the same volume copies at
// the same time, and a delete of the volume is refused at once (ABORTED)
// rather than queued behind the copy. Once the copy ends, the first retry
// gets the snapshot.
func TestSnapshotDoesNotBlockOthers(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	g := newGate(e)
	src := e.create(t, "busy")
	staging, target := e.dir+"/staging", e.dir+"/pod/mount"
	e.stage(t, src, staging)
	if _, err := e.d.NodePublishVolume(ctx, publishReq(src, staging, target, false, rwo)); err != nil {
		t.Fatal(err)
	}

	_, err := e.d.CreateSnapshot(deadline(t, 50*time.Millisecond), snapReq("long", src))
	wantCode(t, err, codes.Aborted)
	first := g.wait(t)
	_, err = e.d.CreateSnapshot(ctx, snapReq("long", src)) // no deadline: must not wait
	wantCode(t, err, codes.Aborted)

	for i := 0; i < 200; i++ {
		e.create(t, fmt.Sprint("other-", i))
	}
	if _, err := e.d.NodeUnpublishVolume(deadline(t, 5*time.Second), &csi.NodeUnpublishVolumeRequest{VolumeId: src, TargetPath: target}); err != nil {
		t.Fatalf("pod stop while its volume is snapshotted: %v", err)
	}
	if _, err := e.d.NodeUnstageVolume(deadline(t, 5*time.Second), &csi.NodeUnstageVolumeRequest{VolumeId: src, StagingTargetPath: staging}); err != nil {
		t.Fatalf("unstage while the volume is snapshotted: %v", err)
	}
	e.stage(t, src, staging)
	if _, err := e.d.NodePublishVolume(deadline(t, 5*time.Second), publishReq(src, staging, target, false, rwo)); err != nil {
		t.Fatalf("pod start while its volume is snapshotted: %v", err)
	}

	second := make(chan error, 1)
	go func() {
		_, err := e.d.CreateSnapshot(ctx, snapReq("other", src))
		second <- err
	}()
	g.wait(t)
	if g.peak() != 2 {
		t.Fatalf("%d copies of the volume at once, want 2", g.peak())
	}
	_, err = e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src})
	wantCode(t, err, codes.Aborted)

	close(g.open)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	var got string
	retry(t, time.Second, func(c context.Context) error {
		r, err := e.d.CreateSnapshot(c, snapReq("long", src))
		got = r.GetSnapshot().GetSnapshotId()
		return err
	})
	if got != first {
		t.Fatalf("the retry got snapshot %q, the copy made %q", got, first)
	}
	if snaps, _ := e.d.hostpath.vols.ListSnapshots(); len(snaps) != 2 {
		t.Fatalf("%d snapshot directories, want 2", len(snaps))
	}
	for _, p := range []string{target} {
		if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: src, TargetPath: p}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: src, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

// Restores from one snapshot run side by side, and a delete of the snapshot
// is refused while they copy.
func TestRestoresShareTheirSnapshot(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "src")
	r, err := e.d.CreateSnapshot(ctx, snapReq("snap", src))
	if err != nil {
		t.Fatal(err)
	}
	snap := r.GetSnapshot().GetSnapshotId()
	g := newGate(e)
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func(i int) {
			_, err := e.d.CreateVolume(ctx, fromSnapshot(fmt.Sprint("restore-", i), 0, snap))
			errs <- err
		}(i)
	}
	for i := 0; i < 3; i++ {
		g.wait(t)
	}
	if g.peak() != 3 {
		t.Fatalf("%d restores copied at once, want 3", g.peak())
	}
	_, err = e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap})
	wantCode(t, err, codes.Aborted)
	close(g.open)
	for i := 0; i < 3; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap}); err != nil {
		t.Fatal(err)
	}
}

// A copy that fails after its caller gave up: the first retry gets the
// failure (with its code), and the retry after that starts a fresh copy.
// Nothing of the failed copy is left.
func TestFailedCopyIsReportedOnce(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "src")
	g := newGate(e)
	g.fail = fmt.Errorf("copy: %w", unix.ENOSPC)
	_, err := e.d.CreateVolume(deadline(t, time.Millisecond), fromVolume("clone", 0, src))
	if c := status.Code(err); c != codes.Aborted && c != codes.ResourceExhausted {
		t.Fatalf("first call: %v", err)
	}
	g.wait(t)
	for e.d.jobs.running() > 0 {
		time.Sleep(time.Millisecond)
	}
	if status.Code(err) == codes.Aborted { // the caller gave up before the failure
		_, err = e.d.CreateVolume(ctx, fromVolume("clone", 0, src))
		wantCode(t, err, codes.ResourceExhausted)
	}
	if vols, _ := e.d.hostpath.vols.List(); len(vols) != 1 {
		t.Fatalf("a failed clone left %d volume directories", len(vols)-1)
	}
	g.fail = nil
	close(g.open)
	if _, err := e.d.CreateVolume(ctx, fromVolume("clone", 0, src)); err != nil {
		t.Fatalf("the retry after the failure: %v", err)
	}
}

// A volume, a snapshot and a group snapshot still being copied are deleted
// by their IDs: the copy stops and nothing of it is left. (A caller that
// went away for good leaves a volume that the usual delete removes.)
func TestDeleteStopsACopy(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "src")
	g := newGate(e)
	go e.d.CreateVolume(ctx, fromVolume("clone", 0, src))
	cloneID := g.wait(t)
	go e.d.CreateSnapshot(ctx, snapReq("snap", src))
	snapID := g.wait(t)
	go e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "group", SourceVolumeIds: []string{src}})
	g.wait(t)
	groups, _ := e.d.store.Groups()
	if len(groups) != 1 {
		t.Fatalf("%d group records", len(groups))
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: cloneID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: groups[0].ID}); err != nil {
		t.Fatal(err)
	}
	e.d.hostpath.vols.WaitIdle()
	vols, _ := e.d.hostpath.vols.List()
	snaps, _ := e.d.hostpath.vols.ListSnapshots()
	recs, _, _ := e.d.store.ListSnapshots("", 0, nil)
	groups, _ = e.d.store.Groups()
	if len(vols) != 1 || len(snaps) != 0 || len(recs) != 0 || len(groups) != 0 {
		t.Fatalf("left after deleting copies in progress: %d volumes (want 1), %d snapshot dirs, %d snapshot records, %d groups", len(vols), len(snaps), len(recs), len(groups))
	}
	if _, err := e.d.store.GetVolume(cloneID); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("clone record: %v", err)
	}
}

// A shutdown while copies run rolls them back; after the restart nothing
// of them is left and a retry makes them afresh.
func TestShutdownRollsBackCopies(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "src")
	g := newGate(e)
	go e.d.CreateVolume(ctx, fromVolume("clone", 0, src))
	g.wait(t)
	go e.d.CreateSnapshot(ctx, snapReq("snap", src))
	g.wait(t)
	e.restart(t)
	vols, _ := e.d.hostpath.vols.List()
	snaps, _ := e.d.hostpath.vols.ListSnapshots()
	recs, _, _ := e.d.store.ListSnapshots("", 0, nil)
	if len(vols) != 1 || len(snaps) != 0 || len(recs) != 0 {
		t.Fatalf("after a shutdown mid-copy: %d volumes (want 1), %d snapshot dirs, %d snapshot records", len(vols), len(snaps), len(recs))
	}
	if _, err := e.d.CreateVolume(ctx, fromVolume("clone", 0, src)); err != nil {
		t.Fatal(err)
	}
}

// Copies beyond --max-concurrent-copies wait their turn (a retry meanwhile
// is ABORTED), so callers that give up cannot pile up copies without bound.
func TestCopiesWaitForASlot(t *testing.T) {
	e := newEnv(t)
	e.d.Close()
	cfg := e.config()
	cfg.MaxConcurrentCopies = 1
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	src := e.create(t, "src")
	g := newGate(e)
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		go func(i int) {
			_, err := e.d.CreateSnapshot(ctx, snapReq(fmt.Sprint("s", i), src))
			errs <- err
		}(i)
	}
	g.wait(t)
	for e.d.jobs.running() < 3 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // time for a second copy to start, were it allowed to
	if g.peak() != 1 {
		t.Fatalf("%d copies at once with a limit of 1", g.peak())
	}
	close(g.open)
	for i := 0; i < 3; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A copy whose caller never comes back (the claim was deleted while it
// copied) is removed once its result has waited long enough: nobody has its
// ID to delete it. One whose caller comes back in time is kept.
func TestAbandonedCopiesAreRemoved(t *testing.T) {
	e := newEnv(t)
	e.d.jobs.keep = 100 * time.Millisecond
	src := e.create(t, "src")
	g := newGate(e)
	for _, name := range []string{"abandoned", "collected"} {
		_, err := e.d.CreateVolume(deadline(t, time.Millisecond), fromVolume(name, 0, src))
		wantCode(t, err, codes.Aborted)
		g.wait(t)
		_, err = e.d.CreateSnapshot(deadline(t, time.Millisecond), snapReq("snap-"+name, src))
		wantCode(t, err, codes.Aborted)
		g.wait(t)
	}
	close(g.open)
	for e.d.jobs.running() > 0 {
		time.Sleep(time.Millisecond)
	}
	if _, err := e.d.CreateVolume(ctx, fromVolume("collected", 0, src)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.CreateSnapshot(ctx, snapReq("snap-collected", src)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := e.d.store.GetVolumeByName("abandoned"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("abandoned clone: %v, want removed", err)
	}
	if _, err := e.d.store.GetSnapshotByName("snap-abandoned"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("abandoned snapshot: %v, want removed", err)
	}
	if _, err := e.d.store.GetVolumeByName("collected"); err != nil {
		t.Fatalf("collected clone: %v", err)
	}
	if _, err := e.d.store.GetSnapshotByName("snap-collected"); err != nil {
		t.Fatalf("collected snapshot: %v", err)
	}
}
