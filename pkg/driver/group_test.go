package driver

import (
	"google.golang.org/grpc/status"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

func TestGroupSnapshot(t *testing.T) {
	e := newEnv(t)
	var vols []string
	for _, n := range []string{"db-0", "db-1", "db-2"} {
		id := e.create(t, n)
		testutil.WriteSampleTree(t, e.d.hostpath.vols.Path(id), 20)
		vols = append(vols, id)
	}
	wantFirst := testutil.TreeManifest(t, e.d.hostpath.vols.Path(vols[0]))
	req := &csi.CreateVolumeGroupSnapshotRequest{Name: "nightly", SourceVolumeIds: vols}
	r, err := e.d.CreateVolumeGroupSnapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	g := r.GetGroupSnapshot()
	if !g.GetReadyToUse() || len(g.GetSnapshots()) != 3 {
		t.Fatalf("group %+v: want ready with 3 members", g)
	}
	for i, s := range g.GetSnapshots() {
		if s.GetSourceVolumeId() != vols[i] || s.GetGroupSnapshotId() != g.GetGroupSnapshotId() || !s.GetReadyToUse() {
			t.Fatalf("member %d: %+v", i, s)
		}
	}
	again, err := e.d.CreateVolumeGroupSnapshot(ctx, req)
	if err != nil || again.GetGroupSnapshot().GetGroupSnapshotId() != g.GetGroupSnapshotId() {
		t.Fatalf("repeated create: %v %v", again, err)
	}
	_, err = e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "nightly", SourceVolumeIds: vols[:2]})
	wantCode(t, err, codes.AlreadyExists)
	_, err = e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "dup", SourceVolumeIds: []string{vols[0], vols[0]}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "gone", SourceVolumeIds: []string{vols[0], "hpv1-00000000000000000000000000000000"}})
	wantCode(t, err, codes.NotFound)
	if snaps, _ := e.d.hostpath.vols.ListSnapshots(); len(snaps) != 3 {
		t.Fatalf("refused group snapshots left data: %d snapshot directories", len(snaps))
	}

	// Members are ordinary snapshots for restore, but are deleted only with
	// their group.
	member := g.GetSnapshots()[0].GetSnapshotId()
	restored, err := e.d.CreateVolume(ctx, fromSnapshot("restored", 0, member))
	if err != nil {
		t.Fatal(err)
	}
	if got := testutil.TreeManifest(t, e.d.hostpath.vols.Path(restored.GetVolume().GetVolumeId())); testutil.DiffManifests(wantFirst, got) != "" {
		t.Fatalf("restore from a member differs:\n%s", testutil.DiffManifests(wantFirst, got))
	}
	_, err = e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: member})
	wantCode(t, err, codes.InvalidArgument) // the spec's code for "part of a group"

	got, err := e.d.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId()})
	if err != nil || len(got.GetGroupSnapshot().GetSnapshots()) != 3 {
		t.Fatalf("GetVolumeGroupSnapshot: %v %v", got, err)
	}
	_, err = e.d.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId(), SnapshotIds: []string{member}})
	wantCode(t, err, codes.InvalidArgument)
	e.restart(t) // a ready group survives a restart
	for i := 0; i < 2; i++ {
		if _, err := e.d.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId()}); err != nil {
			t.Fatalf("delete #%d: %v", i, err)
		}
	}
	_, err = e.d.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: g.GetGroupSnapshotId()})
	wantCode(t, err, codes.NotFound)
	e.d.hostpath.vols.WaitIdle()
	if snaps, _ := e.d.hostpath.vols.ListSnapshots(); len(snaps) != 0 {
		t.Fatalf("members left after deleting the group: %v", snaps)
	}
}

// A group snapshot cut short by a crash is removed with all its members.
func TestReconcileGroupAfterCrash(t *testing.T) {
	e := newEnv(t)
	a, b := e.create(t, "a"), e.create(t, "b")
	os.WriteFile(filepath.Join(e.d.hostpath.vols.Path(a), "f"), []byte("x"), 0o644)
	r, err := e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{a, b}})
	if err != nil {
		t.Fatal(err)
	}
	g, _ := e.d.store.GetGroup(r.GetGroupSnapshot().GetGroupSnapshotId())
	g.Phase = state.PhaseCreating
	e.d.store.PutGroup(g)
	e.restart(t)
	e.d.hostpath.vols.WaitIdle()
	if _, err := e.d.store.GetGroup(g.ID); err == nil {
		t.Fatal("interrupted group still on record")
	}
	for _, id := range g.SnapshotIDs {
		if _, err := e.d.store.GetSnapshot(id); err == nil {
			t.Fatalf("member %s of an interrupted group still on record", id)
		}
	}
	if snaps, _ := e.d.hostpath.vols.ListSnapshots(); len(snaps) != 0 {
		t.Fatalf("member data left: %v", snaps)
	}
}

// The spec says a group snapshot MUST be write-order consistent or fail.
// Members are copied one after the other, so a group is refused while a
// member is published writable (FAILED_PRECONDITION, the spec's "cannot
// snapshot multiple volumes together"), allowed when members are published
// read-only, and while a group is taken no member can be published
// writable (ABORTED: the kubelet retries).
func TestGroupSnapshotRefusesWriters(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	a, b := e.create(t, "a"), e.create(t, "b")
	staging, target := e.dir+"/staging-a", e.dir+"/pod/a"
	e.stage(t, a, staging)
	groupReq := &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{a, b}}

	if _, err := e.d.NodePublishVolume(ctx, publishReq(a, staging, target, false, rwo)); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateVolumeGroupSnapshot(ctx, groupReq)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), target) {
		t.Errorf("the refusal does not say where the volume is written: %v", err)
	}
	if snaps, _ := e.d.hostpath.vols.ListSnapshots(); len(snaps) != 0 {
		t.Fatalf("a refused group left %d snapshots", len(snaps))
	}
	if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: a, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.NodePublishVolume(ctx, publishReq(a, staging, target, true, rwo)); err != nil {
		t.Fatal(err)
	}

	g := newGate(e)
	done := make(chan error, 1)
	go func() { _, err := e.d.CreateVolumeGroupSnapshot(ctx, groupReq); done <- err }()
	g.wait(t)
	_, err = e.d.NodePublishVolume(ctx, publishReq(b, staging, e.dir+"/pod/b", false, rwo))
	wantCode(t, err, codes.FailedPrecondition) // b is not staged there: a plain refusal first
	e.stage(t, b, e.dir+"/staging-b")
	_, err = e.d.NodePublishVolume(ctx, publishReq(b, e.dir+"/staging-b", e.dir+"/pod/b", false, rwo))
	wantCode(t, err, codes.Aborted)
	if _, err := e.d.NodePublishVolume(ctx, publishReq(b, e.dir+"/staging-b", e.dir+"/pod/b-ro", true, rwo)); err != nil {
		t.Fatalf("a read-only publish during a group snapshot: %v", err)
	}
	close(g.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.NodePublishVolume(ctx, publishReq(b, e.dir+"/staging-b", e.dir+"/pod/b", false, rwo)); err != nil {
		t.Fatalf("a writable publish after the group snapshot: %v", err)
	}
	for _, u := range []struct{ id, path string }{{a, target}, {b, e.dir + "/pod/b"}, {b, e.dir + "/pod/b-ro"}} {
		if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: u.id, TargetPath: u.path}); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []struct{ id, path string }{{a, staging}, {b, e.dir + "/staging-b"}} {
		if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: u.id, StagingTargetPath: u.path}); err != nil {
			t.Fatal(err)
		}
	}
}
