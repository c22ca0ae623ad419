package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

// The controller Deployment moves to another node: a driver with an empty
// state directory finds every volume and snapshot by ID and by name on the
// export.
func TestNFSStateLivesOnTheExport(t *testing.T) {
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
	e := newNFSEnv(t, 10*time.Second)
	e.d.Close()
	fail := true
	e.opts.BeforeFileOp = func(export, op string) error {
		if fail && strings.HasPrefix(op, "create ") {
			return errors.New("injected: killed before the mkdir")
		}
		return nil
	}
	e.startNFS(t)
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-int", nfsParamsFor()))
	if err == nil {
		t.Fatal("the injected failure did not fail the create")
	}
	fail = false
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
	if diff := testutil.DiffManifests(want, testutil.TreeManifest(t, filepath.Join(e.export, ".hostpath-csi", "snapshots", s.Hex))); diff != "" {
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
	d2.nfsSweep.age = time.Nanosecond // everything left is old enough
	if _, err := d2.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: nfsParamsFor()}); err != nil {
		t.Fatal(err)
	}
	d2.nfsSweep.wg.Wait()
	d2.nfs.WaitIdle()

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
