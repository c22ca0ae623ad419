package driver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// within fails the test if f does not return in time: a deadlock shows up
// as a failure with a message, not as a hung test binary.
func within(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("not finished within %v: deadlock?", d)
	}
}

func allowed(t *testing.T, op string, err error, codes ...codes.Code) {
	if err == nil {
		return
	}
	for _, c := range codes {
		if status.Code(err) == c {
			return
		}
	}
	t.Errorf("%s: unexpected error %v", op, err)
}

// 64 goroutines create and delete one name at random: every answer is
// coherent, and in the end there is at most one volume of that name and the
// disk holds exactly what the records say.
func TestRaceCreateDeleteOneName(t *testing.T) {
	e := newEnv(t)
	var last atomic.Value
	last.Store("")
	var creates, deletes atomic.Int64
	within(t, 60*time.Second, func() {
		var wg sync.WaitGroup
		for g := 0; g < 64; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 25; i++ {
					if rand.IntN(2) == 0 {
						r, err := e.d.CreateVolume(ctx, createReq("contended", 1<<20))
						allowed(t, "create", err, codes.Aborted)
						if err == nil {
							last.Store(r.GetVolume().GetVolumeId())
							creates.Add(1)
						}
						continue
					}
					if id := last.Load().(string); id != "" {
						_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
						allowed(t, "delete", err)
						deletes.Add(1)
					}
				}
			}()
		}
		wg.Wait()
	})
	e.d.hostpath.vols.WaitIdle()
	vols, _, err := e.d.store.ListVolumes("", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) > 1 {
		t.Fatalf("%d volumes on record for one name", len(vols))
	}
	dirs, _ := e.d.hostpath.vols.List()
	if len(dirs) != len(vols) || (len(vols) == 1 && (dirs[0] != vols[0].ID || vols[0].Phase != "ready")) {
		t.Fatalf("records %v and directories %v disagree", vols, dirs)
	}
	t.Logf("%d creates and %d deletes answered", creates.Load(), deletes.Load())
}

// Deleting a volume while other callers stage and publish it: the delete is
// refused while anything is mounted, succeeds once nothing is, and nothing
// mounts it after that. No mount, record or directory is left.
func TestRaceDeleteWhilePublishing(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "busy")
	var published atomic.Int64
	var deleted atomic.Bool
	within(t, 60*time.Second, func() {
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				staging, target := fmt.Sprintf("%s/s%d", e.dir, g), fmt.Sprintf("%s/t%d", e.dir, g)
				for i := 0; i < 30; i++ {
					_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo})
					if status.Code(err) == codes.NotFound {
						return // deleted: every later call must say so too
					}
					allowed(t, "stage", err)
					if err != nil {
						return
					}
					if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, rwo)); err == nil {
						published.Add(1)
					} else {
						t.Errorf("publish of a staged volume: %v", err)
					}
					_, err = e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
					allowed(t, "unpublish", err)
					_, err = e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
					allowed(t, "unstage", err)
					// Leave windows with nothing mounted, so the delete
					// can win in the middle of the storm.
					time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
				}
			}(g)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !deleted.Load() {
				_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
				allowed(t, "delete", err, codes.FailedPrecondition)
				deleted.Store(err == nil)
			}
		}()
		wg.Wait()
	})
	// After the delete, the volume is gone for every caller.
	_, err := e.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: e.dir + "/late", VolumeCapability: rwo})
	wantCode(t, err, codes.NotFound)
	e.d.hostpath.vols.WaitIdle()
	if left := testutil.MountsUnder(t, e.dir); len(left) != 0 {
		t.Fatalf("mounts left: %v", left)
	}
	if dirs, _ := e.d.hostpath.vols.List(); len(dirs) != 0 {
		t.Fatalf("directories left: %v", dirs)
	}
	t.Logf("%d publishes before the delete went through", published.Load())
}

// Snapshots of a volume racing its deletion: each snapshot either completes
// before the delete (and stays usable after it) or fails with NotFound;
// nothing is half made and nothing deadlocks.
func TestRaceSnapshotWhileDeletingSource(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "source")
	testutil.WriteSampleTree(t, e.d.hostpath.vols.Path(src), 300)
	var made []string
	var mu sync.Mutex
	within(t, 60*time.Second, func() {
		var wg sync.WaitGroup
		deleteVolume := func() {
			defer wg.Done()
			// Refused at once (ABORTED) while a snapshot copies the volume;
			// the CO retries, as here.
			for {
				_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src})
				if status.Code(err) != codes.Aborted {
					allowed(t, "delete", err)
					return
				}
				time.Sleep(time.Millisecond)
			}
		}
		for g := 0; g < 16; g++ {
			if g == 8 { // the delete joins in the middle of the stream
				wg.Add(1)
				go deleteVolume()
			}
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				r, err := e.d.CreateSnapshot(ctx, snapReq(fmt.Sprint("snap-", g), src))
				allowed(t, "snapshot", err, codes.NotFound)
				if err == nil {
					mu.Lock()
					made = append(made, r.GetSnapshot().GetSnapshotId())
					mu.Unlock()
				}
			}(g)
		}
		wg.Wait()
	})
	e.d.hostpath.vols.WaitIdle()
	for _, id := range made {
		if _, err := e.d.CreateVolume(ctx, fromSnapshot("from-"+id, 0, id)); err != nil {
			t.Fatalf("restore from snapshot %s taken before the delete: %v", id, err)
		}
	}
	snaps, _ := e.d.hostpath.vols.ListSnapshots()
	if len(snaps) != len(made) {
		t.Fatalf("%d snapshot directories for %d snapshots", len(snaps), len(made))
	}
	if left, _ := os.ReadDir(filepath.Join(e.dataDir, "partial")); len(left) != 0 {
		t.Fatalf("partial copies left: %v", left)
	}
	t.Logf("%d of 16 snapshots completed before the source was deleted", len(made))
}
