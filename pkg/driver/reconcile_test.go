package driver

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Each case leaves the state and the disk as a crash at one point would,
// restarts the driver, and checks what reconcile made of it.
func TestReconcileAfterCrash(t *testing.T) {
	e := newEnv(t)
	ready := e.create(t, "ready")
	lost := e.create(t, "lost")
	creating := e.create(t, "creating")
	deleting := e.create(t, "deleting")
	deletingGone := e.create(t, "deleting-gone")
	for id, phase := range map[string]state.Phase{creating: state.PhaseCreating, deleting: state.PhaseDeleting, deletingGone: state.PhaseDeleting} {
		if err := e.d.store.SetVolumePhase(id, phase); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(e.d.hostpath.vols.Path(ready), "keep"), []byte("x"), 0o644)
	os.RemoveAll(e.d.hostpath.vols.Path(lost))
	os.RemoveAll(e.d.hostpath.vols.Path(deletingGone))
	orphan := ids.NewVolumeID()
	os.MkdirAll(filepath.Join(e.d.hostpath.vols.Path(orphan), "sub"), 0o755)
	os.MkdirAll(filepath.Join(e.dataDir, "trash", "old.7", "deep"), 0o755)

	e.restart(t)

	names, _ := e.d.hostpath.vols.List()
	if len(names) != 1 || names[0] != ready {
		t.Fatalf("volume directories after reconcile: %v, want only %s", names, ready)
	}
	if _, err := os.Stat(filepath.Join(e.d.hostpath.vols.Path(ready), "keep")); err != nil {
		t.Fatalf("ready volume lost its data: %v", err)
	}
	for _, id := range []string{creating, deleting, deletingGone} {
		if ok, _ := e.d.store.VolumeExists(id); ok {
			t.Errorf("interrupted volume %s still on record", id)
		}
	}
	// The lost volume stays on record and is reported.
	h, err := e.d.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	if err != nil || len(h.GetEntries()) != 1 || h.GetEntries()[0].GetVolumeId() != lost ||
		h.GetEntries()[0].GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_DATA_LOSS {
		t.Fatalf("volume health list %v %v, want DATA_LOSS for %s", h, err, lost)
	}
	q, _ := os.ReadDir(filepath.Join(e.dataDir, "quarantine"))
	if len(q) != 1 {
		t.Fatalf("quarantine holds %d entries, want the orphan", len(q))
	}
	if _, err := os.Stat(filepath.Join(e.dataDir, "quarantine", q[0].Name(), "sub")); err != nil {
		t.Fatalf("orphan's data not kept: %v", err)
	}
	e.d.hostpath.vols.WaitIdle()
	if tr, _ := os.ReadDir(filepath.Join(e.dataDir, "trash")); len(tr) != 0 {
		t.Fatalf("trash not emptied: %v", tr)
	}
	// The name of a rolled-back create is free for the CO's retry.
	if id := e.create(t, "creating"); id == creating {
		t.Fatal("rolled-back create came back with the same ID")
	}
}

func TestReconcileMounts(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "m")
	staging, target, half := e.dir+"/staging", e.dir+"/target", e.dir+"/half"
	e.stage(t, id, staging)
	if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, rwo)); err != nil {
		t.Fatal(err)
	}
	// A publish cut short after its mount but before its record said so.
	os.MkdirAll(half, 0o750)
	if err := e.d.store.PutPublication(&state.Publication{VolumeID: id, NodeID: "node-1", Kind: state.KindPublish, Path: half, StagingPath: staging, Phase: state.PhaseMounting}); err != nil {
		t.Fatal(err)
	}
	if err := mountutil.Bind(staging, half, false, nil); err != nil {
		t.Fatal(err)
	}
	// A node restart: the real publication's mount is gone.
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}

	e.restart(t)

	if m, _ := mountutil.IsMountPoint(half); m {
		t.Error("half-made mount not undone")
	}
	pubs, _ := e.d.store.PublicationsOf(id)
	if len(pubs) != 1 || pubs[0].Kind != state.KindStage {
		t.Fatalf("publications after reconcile: %+v, want only the staging", pubs)
	}
	if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

// Snapshots and restores cut short by a crash: a snapshot still "creating"
// and its partial copy are removed, a restore still "creating" is rolled
// back, and snapshot data without a record goes to quarantine.
func TestReconcileSnapshotsAfterCrash(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "src")
	os.WriteFile(filepath.Join(e.d.hostpath.vols.Path(src), "f"), []byte("x"), 0o644)
	ready, err := e.d.CreateSnapshot(ctx, snapReq("ready", src))
	if err != nil {
		t.Fatal(err)
	}
	cut, err := e.d.CreateSnapshot(ctx, snapReq("cut", src))
	if err != nil {
		t.Fatal(err)
	}
	cutID := cut.GetSnapshot().GetSnapshotId()
	rec, _ := e.d.store.GetSnapshot(cutID)
	rec.Phase = state.PhaseCreating
	e.d.store.PutSnapshot(rec)
	restoring := e.create(t, "restoring")
	e.d.store.SetVolumePhase(restoring, state.PhaseCreating)
	os.MkdirAll(filepath.Join(e.dataDir, "partial", restoring, "half"), 0o755)
	stray := ids.NewSnapshotID()
	os.MkdirAll(filepath.Join(e.dataDir, "snapshots", stray), 0o755)

	e.restart(t)
	e.d.hostpath.vols.WaitIdle()

	if _, err := e.d.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: ready.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatalf("ready snapshot after restart: %v", err)
	}
	if _, err := e.d.store.GetSnapshot(cutID); err == nil {
		t.Fatal("interrupted snapshot still on record")
	}
	if names, _ := e.d.hostpath.vols.ListSnapshots(); len(names) != 1 || names[0] != ready.GetSnapshot().GetSnapshotId() {
		t.Fatalf("snapshot directories after reconcile: %v", names)
	}
	if ok, _ := e.d.store.VolumeExists(restoring); ok {
		t.Fatal("interrupted restore still on record")
	}
	if left, _ := os.ReadDir(filepath.Join(e.dataDir, "partial")); len(left) != 0 {
		t.Fatalf("partial copies left: %v", left)
	}
	q, _ := os.ReadDir(filepath.Join(e.dataDir, "quarantine"))
	if len(q) != 1 {
		t.Fatalf("quarantine: %v, want the stray snapshot", q)
	}
}

// A copy that was renamed into place while its record went ready, but whose
// rename the disk lost in a power cut (the copy is back in partial/): start-up
// moves it into place instead of emptying partial/ of a ready volume's and a
// ready snapshot's only copy.
func TestReconcileAdoptsReadyCopies(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "src")
	os.WriteFile(filepath.Join(e.d.hostpath.vols.Path(src), "data"), []byte("precious"), 0o644)
	r, err := e.d.CreateSnapshot(ctx, snapReq("snap", src))
	if err != nil {
		t.Fatal(err)
	}
	snap := r.GetSnapshot().GetSnapshotId()
	clone, err := e.d.CreateVolume(ctx, fromVolume("clone", 0, src))
	if err != nil {
		t.Fatal(err)
	}
	cloneID := clone.GetVolume().GetVolumeId()
	e.d.Close()
	// What a lost rename leaves: the data back in partial/.
	for _, p := range [][2]string{{e.d.hostpath.vols.SnapshotPath(snap), snap}, {e.d.hostpath.vols.Path(cloneID), cloneID}} {
		if err := os.Rename(p[0], filepath.Join(e.dataDir, "partial", p[1])); err != nil {
			t.Fatal(err)
		}
	}
	// And an unfinished copy nobody owns, which goes.
	os.MkdirAll(filepath.Join(e.dataDir, "partial", ids.NewVolumeID(), "x"), 0o755)
	e.start(t)
	for _, p := range []string{filepath.Join(e.d.hostpath.vols.SnapshotPath(snap), "data"), filepath.Join(e.d.hostpath.vols.Path(cloneID), "data")} {
		if got, err := os.ReadFile(p); err != nil || string(got) != "precious" {
			t.Fatalf("%s after start-up: %q %v", p, got, err)
		}
	}
	if left, _ := os.ReadDir(filepath.Join(e.dataDir, "partial")); len(left) != 0 {
		t.Fatalf("partial/ after start-up: %v", left)
	}
}

// Start-up fails open: a volume whose interrupted create cannot be rolled
// back (a mount inside it blocks the removal) does not stop the driver. It
// serves, reports the problem in NodeGetStorageHealth, and retries until the
// obstacle is gone.
func TestStartupServesDespiteReconcileFailure(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	stuck := e.create(t, "stuck")
	if err := e.d.store.SetVolumePhase(stuck, state.PhaseCreating); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(e.d.hostpath.vols.Path(stuck), "m")
	os.Mkdir(inside, 0o755)
	if err := unix.Mount(t.TempDir(), inside, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(inside, unix.MNT_DETACH)
		}
	}()
	e.d.Close()
	cfg := e.config()
	cfg.ReconcileRetry = 20 * time.Millisecond
	d, err := New(cfg)
	if err != nil {
		t.Fatalf("start-up with something it cannot reconcile: %v", err)
	}
	e.d = d
	e.create(t, "served") // it serves
	h, err := e.d.NodeGetStorageHealth(ctx, nil)
	if err != nil || len(h.GetBackendHealth()) != 1 || h.GetBackendHealth()[0].GetReason() != "ReconcilePending" ||
		!strings.Contains(h.GetBackendHealth()[0].GetMessage(), stuck) {
		t.Fatalf("storage health %v %v, want ReconcilePending naming %s", h, err, stuck)
	}
	if err := unix.Unmount(inside, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, _ := e.d.NodeGetStorageHealth(ctx, nil)
		ok, _ := e.d.store.VolumeExists(stuck)
		if len(h.GetBackendHealth()) == 0 && !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the problem was not retried away: health %v, record still there: %v", h, ok)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill -9 between a snapshot's FIFREEZE and its FITHAW (the freeze and its
// marker made, no thaw): the next start thaws the pod's filesystem before
// anything else it does, so even a start that then fails (here: a state
// database it cannot read) has thawed it.
func TestStartThawsWhatAKilledSnapshotLeftFrozenFirst(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	req := createReq("img", 32<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	staging, target := e.stageAndPublish(t, id, rwo)
	defer e.unpublishAndUnstage(t, id)
	markers := e.d.hostpath.vols.FreezeMarkers()
	killed, err := imagefs.Freeze(markers, staging)
	if err != nil {
		t.Fatal(err)
	}
	defer imagefs.Thaw(staging) // whatever happens
	defer killed.Thaw()         // closes its descriptor, as the kill would have
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(e.stateDir, state.DBFileName)
	saved, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(db, bytes.Repeat([]byte("not a database"), 512), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(e.config()); err == nil {
		t.Fatal("the driver started on a state database it cannot read")
	}
	if was, err := imagefs.Thaw(staging); was || err != nil {
		t.Errorf("the staged filesystem was still frozen after the start (%v)", err)
	}
	if left, _ := os.ReadDir(markers); len(left) != 0 {
		t.Errorf("freeze markers left after the start: %v", left)
	}
	if err := os.WriteFile(db, saved, 0o600); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}
