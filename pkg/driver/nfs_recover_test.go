package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// The controller Deployment moves to another node: a driver with an empty
// state directory finds every volume and snapshot by ID and by name on the
// export.
func TestNFSStateLivesOnTheExport(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	params := nfsParamsFor(ParamOnDelete, OnDeleteArchive)
	vol := e.createNFS(t, "pv-moved", params)
	writeFile(t, filepath.Join(e.subDirOf(t, vol.GetVolumeId()), "f"), "data")
	snap, err := e.d.CreateSnapshot(ctx, nfsSnapReq("snap-moved", vol.GetVolumeId()))
	if err != nil {
		t.Fatal(err)
	}
	e.d.Close()
	d2 := e.another(t)
	e.d = d2 // the first driver is gone; the env's cleanup closes this one

	if _, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
		t.Fatalf("ControllerGetVolume by ID on a fresh controller: %v", err)
	}
	if _, err := d2.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatalf("GetSnapshot by ID on a fresh controller: %v", err)
	}
	again, err := d2.CreateVolume(ctx, nfsReq("pv-moved", params))
	if err != nil || again.GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("create by name on a fresh controller: %v, %v; want %s", again, err, vol.GetVolumeId())
	}
	sagain, err := d2.CreateSnapshot(ctx, nfsSnapReq("snap-moved", vol.GetVolumeId()))
	if err != nil || sagain.GetSnapshot().GetSnapshotId() != snap.GetSnapshot().GetSnapshotId() {
		t.Fatalf("snapshot by name on a fresh controller: %v, %v", sagain, err)
	}
	lv, err := d2.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(lv.GetEntries()) != 1 || lv.GetEntries()[0].GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("ListVolumes on a fresh controller: %v, %v", lv, err)
	}
	if _, err := d2.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	// onDelete came from the record, not from this process's memory.
	if archived, _ := filepath.Glob(filepath.Join(e.export, "archived-pv-moved-*")); len(archived) != 1 {
		t.Fatalf("archive after a move: %v", archived)
	}
}

// A create interrupted after its intent was recorded (here: its mkdir
// failed, as a kill there would leave it) is finished by the next create
// of the name, on this controller or another.
func TestNFSInterruptedCreateRollsForward(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.d.Close()
	var fail atomic.Bool // read by the first driver's background sweep too
	fail.Store(true)
	e.opts.BeforeFileOp = func(export, op string) error {
		if fail.Load() && strings.HasPrefix(op, "create ") {
			return errors.New("injected: killed before the mkdir")
		}
		return nil
	}
	e.startNFS(t)
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-int", nfsParamsFor()))
	if err == nil {
		t.Fatal("the injected failure did not fail the create")
	}
	fail.Store(false)
	d2 := e.another(t)
	r, err := d2.CreateVolume(ctx, nfsReq("pv-int", nfsParamsFor()))
	if err != nil {
		t.Fatalf("create after an interrupted one: %v", err)
	}
	if fi, err := os.Stat(e.subDirOf(t, r.GetVolume().GetVolumeId())); err != nil || !fi.IsDir() {
		t.Fatalf("subdirectory of the finished volume: %v", err)
	}
	recs, _ := filepath.Glob(filepath.Join(e.export, ".hostpath-csi", "volumes", "*.json"))
	if len(recs) != 1 {
		t.Fatalf("%d volume records, want the one", len(recs))
	}
}

// A restore and a snapshot whose controller died mid-copy (here: a first
// controller whose copies never finish) are rolled back and made anew by
// the next create of the name on another controller; the first
// controller's late rollback then removes nothing of the new ones.
func TestNFSInterruptedCopiesRollBack(t *testing.T) {
	// Not parallel: a short deadline of its own must not run out on a
	// machine busy with other tests.
	e := newNFSEnv(t, 10*time.Second)
	src := e.createNFS(t, "pv-src", nfsParamsFor()).GetVolumeId()
	testutil.WriteSampleTree(t, e.subDirOf(t, src), 20)
	want := testutil.TreeManifest(t, e.subDirOf(t, src))
	snap, err := e.d.CreateSnapshot(ctx, nfsSnapReq("snap-base", src))
	if err != nil {
		t.Fatal(err)
	}
	// The first controller's copies stop at their first step.
	e.d.beforeCopy = func(ctx context.Context, id string) error {
		<-ctx.Done()
		return ctx.Err()
	}
	short := func() context.Context {
		c, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	restore := nfsReq("pv-restore", nfsParamsFor())
	restore.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
	_, err = e.d.CreateVolume(short(), restore)
	wantCode(t, err, codes.Aborted)
	_, err = e.d.CreateSnapshot(short(), nfsSnapReq("snap-2", src))
	wantCode(t, err, codes.Aborted)

	d2 := e.another(t)
	rr, err := d2.CreateVolume(ctx, restore)
	if err != nil {
		t.Fatalf("restore on another controller: %v", err)
	}
	sr, err := d2.CreateSnapshot(ctx, nfsSnapReq("snap-2", src))
	if err != nil {
		t.Fatalf("snapshot on another controller: %v", err)
	}
	e.d.Close() // the first controller's copies end and roll back now
	e.d = d2
	if diff := testutil.DiffManifests(want, testutil.TreeManifest(t, e.subDirOf(t, rr.GetVolume().GetVolumeId()))); diff != "" {
		t.Fatalf("restored volume after a rollback by the first controller:\n%s", diff)
	}
	s, _ := ids.ParseNFSSnapshotID(sr.GetSnapshot().GetSnapshotId())
	if diff := testutil.DiffManifests(want, testutil.TreeManifest(t, filepath.Join(e.export, ".hostpath-csi", "snapshots", s.Key))); diff != "" {
		t.Fatalf("snapshot after a rollback by the first controller:\n%s", diff)
	}
	if _, err := d2.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: sr.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: rr.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	partial, _ := os.ReadDir(filepath.Join(e.export, ".hostpath-csi", "partial"))
	if len(partial) != 0 {
		t.Fatalf("partial copies left: %v", partial)
	}
}

// Operations a killed controller left unfinished, and that no retry of
// their names ever came for, are reconciled by the next controller to use
// the export once they are old enough: an empty create rolled back (its
// empty directory removed), a snapshot rolled back, a delete finished.
func TestNFSSweepOfAbandonedOperations(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	keep := e.createNFS(t, "pv-keep", nfsParamsFor())
	doomed := e.createNFS(t, "pv-doomed", nfsParamsFor())
	writeFile(t, filepath.Join(e.subDirOf(t, doomed.GetVolumeId()), "f"), "x")
	e.d.Close()
	// The first controller fails at exact steps, as a kill there would
	// leave things: after each intent was recorded, before its rollback.
	e.opts.BeforeFileOp = func(export, op string) error {
		if op == "create pv-abandoned" || strings.HasPrefix(op, "remove snapshot ") || op == "remove pv-doomed" {
			return errors.New("injected: killed here")
		}
		return nil
	}
	e.startNFS(t)
	e.d.beforeCopy = func(ctx context.Context, id string) error { return errors.New("injected: killed in the copy") }
	if _, err := e.d.CreateVolume(ctx, nfsReq("pv-abandoned", nfsParamsFor())); err == nil {
		t.Fatal("injected create failure did not fail")
	}
	if _, err := e.d.CreateSnapshot(ctx, nfsSnapReq("snap-abandoned", keep.GetVolumeId())); err == nil {
		t.Fatal("injected snapshot failure did not fail")
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: doomed.GetVolumeId()}); err == nil {
		t.Fatal("injected delete failure did not fail")
	}
	os.Mkdir(filepath.Join(e.export, "pv-abandoned"), 0o755) // as if the mkdir had been made
	e.d.Close()
	e.opts.BeforeFileOp = nil

	d2 := e.another(t)
	e.d = d2
	d2.nfs.sweeps.age = time.Nanosecond // everything left is old enough
	if _, err := d2.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: nfsParamsFor()}); err != nil {
		t.Fatal(err)
	}
	d2.nfs.sweeps.wg.Wait()
	d2.nfs.exports.WaitIdle()

	recs, _ := filepath.Glob(filepath.Join(e.export, ".hostpath-csi", "volumes", "*.json"))
	if len(recs) != 1 {
		t.Fatalf("%d volume records after the sweep, want pv-keep's only", len(recs))
	}
	if _, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: keep.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"pv-abandoned", "pv-doomed"} {
		if _, err := os.Stat(filepath.Join(e.export, gone)); !os.IsNotExist(err) {
			t.Errorf("%s still on the export after the sweep: %v", gone, err)
		}
	}
	for _, d := range []string{"snapshot-records", "snapshots", "partial"} {
		if ents, _ := os.ReadDir(filepath.Join(e.export, ".hostpath-csi", d)); len(ents) != 0 {
			t.Errorf(".hostpath-csi/%s holds %d entries after the sweep", d, len(ents))
		}
	}
}

// A controller killed during the background removal of a deleted volume's
// data leaves it in trash/: the next process to use the export removes it,
// without waiting for another delete there (which may never come).
func TestNFSTrashLeftByACrashIsRemovedAtNextUse(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.createNFS(t, "pv-1", nfsParamsFor())
	left := filepath.Join(e.export, ids.HiddenDir, "trash", "v-0123456789abcdef0123456789abcdef")
	writeFile(t, filepath.Join(left, "deleted-tenant-data"), "should be gone")

	d2 := e.another(t) // the controller, restarted elsewhere after the kill
	if _, err := d2.CreateVolume(ctx, nfsReq("pv-2", nfsParamsFor())); err != nil {
		t.Fatal(err)
	}
	d2.nfs.exports.WaitIdle()
	d2.nfs.sweeps.wg.Wait()
	if _, err := os.Stat(left); err == nil {
		t.Errorf("%s, left by a killed delete, is still there after the export was used again", left)
	}
}

// A create whose claim on the subdirectory could not be written (the server
// timed out, or a kill) is finished by the retry of its name without
// checking that the subdirectory is still free: meanwhile another claim
// took it. Both volumes then share one directory, and deleting the first
// removes the second's data.
func TestNFSRetriedCreateDoesNotTakeAnotherVolumesSubDir(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	var claimed atomic.Bool // the first claim on a subdirectory fails
	e.opts.BeforeFileOp = func(export, op string) error {
		if op == "write subdirectory index" && claimed.CompareAndSwap(false, true) {
			return errors.New("injected: server did not answer")
		}
		return nil
	}
	e.restart(t)
	params := func(pv string) map[string]string {
		return nfsParamsFor(ParamSubDir, "shared", ParamPVName, pv)
	}
	if _, err := e.d.CreateVolume(ctx, nfsReq("pv-a", params("pv-a"))); err == nil {
		t.Fatal("the injected failure did not reach CreateVolume")
	}
	b := e.createNFS(t, "pv-b", params("pv-b"))
	writeFile(t, filepath.Join(e.export, "shared", "b-data"), "volume b")

	// The provisioner retries pv-a.
	a, err := e.d.CreateVolume(ctx, nfsReq("pv-a", params("pv-a")))
	if err == nil {
		t.Errorf("retry of pv-a succeeded (%s) on subDir %q, which volume %s owns", a.GetVolume().GetVolumeId(), "shared", b.GetVolumeId())
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: a.GetVolume().GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
		e.d.nfs.exports.WaitIdle()
		if _, err := os.Stat(filepath.Join(e.export, "shared", "b-data")); err != nil {
			t.Errorf("deleting pv-a removed volume pv-b's data: %v", err)
		}
	} else if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("retry of pv-a: %v, want FailedPrecondition (subDir owned by %s)", err, b.GetVolumeId())
	}
}

// Whoever can write in the driver's own directory (another class whose
// share holds this export, another client of the export) must not steer
// the driver's removals and record writes out of the export: a symlink
// planted for .hostpath-csi/tmp, or for .hostpath-csi itself, is never
// followed.
func TestNFSHiddenDirSymlinkNotFollowed(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-1", nfsParamsFor())
	e.d.nfs.exports.WaitIdle()

	victim := filepath.Join(e.dir, "outside-the-export")
	writeFile(t, filepath.Join(victim, "precious"), "not the driver's")
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(victim, "precious"), old, old); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(e.export, ids.HiddenDir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, tmp); err != nil {
		t.Fatal(err)
	}
	// A new process (a moved controller) mounts the export: layout sweeps tmp/.
	d2 := e.another(t)
	_, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vol.GetVolumeId()})
	t.Logf("ControllerGetVolume through a planted symlink: %v", err)
	if _, err := os.Stat(filepath.Join(victim, "precious")); err != nil {
		t.Errorf("a file outside the export, reached through a symlink planted at %s/tmp, was removed: %v", ids.HiddenDir, err)
	}
}

func TestNFSHiddenDirItselfSymlinkRefused(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	victim := filepath.Join(e.dir, "outside-the-export")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(e.export, ids.HiddenDir)); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-1", nfsParamsFor()))
	if err == nil || !strings.Contains(err.Error(), ids.HiddenDir) {
		t.Errorf("CreateVolume with %s a symlink out of the export: %v, want an error naming it", ids.HiddenDir, err)
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Errorf("the driver wrote through a symlink planted at %s: %v", ids.HiddenDir, ents)
	}
}
