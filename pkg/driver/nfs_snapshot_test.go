package driver

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A snapshot holds the volume as it was; a restore and a clone hold exactly
// their source (every file's sha256, modes, links). The snapshot's copy runs
// detached: a caller whose deadline ends first gets ABORTED, the copy goes
// on, and the retry gets the snapshot.
func TestNFSSnapshotRestoreClone(t *testing.T) {
	// Not parallel: a short deadline of its own must not run out on a
	// machine busy with other tests.
	e := newNFSEnv(t, 10*time.Second)
	src := e.createNFS(t, "pv-src", nfsParamsFor()).GetVolumeId()
	srcDir := e.subDirOf(t, src)
	testutil.WriteSampleTree(t, srcDir, 40)
	want := testutil.TreeManifest(t, srcDir)

	// Hold the snapshot's copy until the first caller has given up.
	release := make(chan struct{})
	e.d.beforeCopy = func(ctx context.Context, id string) error {
		if ids.IsNFSSnapshotID(id) {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := e.d.CreateSnapshot(short, nfsSnapReq("snap-1", src))
	cancel()
	wantCode(t, err, codes.Aborted)
	_, err = e.d.CreateSnapshot(ctx, nfsSnapReq("snap-1", src))
	wantCode(t, err, codes.Aborted) // still copying: answered at once
	close(release)
	var snap *csi.Snapshot
	for i := 0; ; i++ {
		r, err := e.d.CreateSnapshot(ctx, nfsSnapReq("snap-1", src))
		if err == nil {
			snap = r.GetSnapshot()
			break
		}
		wantCode(t, err, codes.Aborted)
		time.Sleep(10 * time.Millisecond)
	}
	if !snap.GetReadyToUse() || snap.GetSourceVolumeId() != src || !ids.IsNFSSnapshotID(snap.GetSnapshotId()) {
		t.Fatalf("snapshot %v", snap)
	}
	s, _ := ids.ParseNFSSnapshotID(snap.GetSnapshotId())
	snapDir := filepath.Join(e.export, ".hostpath-csi", "snapshots", s.Key)
	if diff := testutil.DiffManifests(want, testutil.TreeManifest(t, snapDir)); diff != "" {
		t.Fatalf("snapshot differs from its source:\n%s", diff)
	}
	again, err := e.d.CreateSnapshot(ctx, nfsSnapReq("snap-1", src))
	if err != nil || again.GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("snapshot retry: %v, %v", again, err)
	}

	// Break the source; restore the snapshot; clone the broken source.
	writeFile(t, filepath.Join(srcDir, "broken"), "after the snapshot")
	broken := testutil.TreeManifest(t, srcDir)
	restore := nfsReq("pv-restore", nfsParamsFor())
	restore.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	rr, err := e.d.CreateVolume(ctx, restore)
	if err != nil {
		t.Fatal(err)
	}
	if diff := testutil.DiffManifests(want, testutil.TreeManifest(t, e.subDirOf(t, rr.GetVolume().GetVolumeId()))); diff != "" {
		t.Fatalf("restored volume differs from the snapshot:\n%s", diff)
	}
	if rr.GetVolume().GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("restored volume's content source %v", rr.GetVolume().GetContentSource())
	}
	clone := nfsReq("pv-clone", nfsParamsFor())
	clone.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src}}}
	cr, err := e.d.CreateVolume(ctx, clone)
	if err != nil {
		t.Fatal(err)
	}
	if diff := testutil.DiffManifests(broken, testutil.TreeManifest(t, e.subDirOf(t, cr.GetVolume().GetVolumeId()))); diff != "" {
		t.Fatalf("clone differs from its source:\n%s", diff)
	}

	// Across backends: InvalidArgument.
	hp := e.create(t, "hostpath-vol")
	cross := nfsReq("pv-cross", nfsParamsFor())
	cross.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: hp}}}
	_, err = e.d.CreateVolume(ctx, cross)
	wantCode(t, err, codes.InvalidArgument)
	hpFromNFS := createReq("hp-from-nfs", 1<<20)
	hpFromNFS.VolumeContentSource = restore.VolumeContentSource
	_, err = e.d.CreateVolume(ctx, hpFromNFS)
	wantCode(t, err, codes.InvalidArgument)

	// Listings show NFS and hostpath objects side by side, page by page.
	seen := map[string]bool{}
	token := ""
	for {
		r, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range r.GetEntries() {
			seen[en.GetVolume().GetVolumeId()] = true
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	for _, id := range []string{src, hp, rr.GetVolume().GetVolumeId(), cr.GetVolume().GetVolumeId()} {
		if !seen[id] {
			t.Errorf("ListVolumes misses %s", id)
		}
	}
	ls, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: src})
	if err != nil || len(ls.GetEntries()) != 1 || ls.GetEntries()[0].GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("ListSnapshots by source: %v, %v", ls, err)
	}

	// Deleted, it is gone with its data.
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err == nil {
		t.Fatal("GetSnapshot finds a deleted snapshot")
	}
	if entries := testutil.TreeManifest(t, filepath.Join(e.export, ".hostpath-csi", "snapshots")); len(entries) > 1 {
		t.Fatalf("snapshot data left: %v", entries)
	}
}

// A pod swaps a directory of its NFS volume for a symlink to outside, in a
// loop, while the driver snapshots and clones the volume: nothing outside
// the volume is read, nothing outside the copy written.
func TestNFSCopiesStayInsideUnderSwapAttack(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	victim := e.createNFS(t, "victim", nfsParamsFor()).GetVolumeId()
	attack := testutil.NewSwapAttack(t, e.subDirOf(t, victim), filepath.Join(e.dir, "outside"))
	before := attack.OutsideState(t)
	attack.Start()
	defer attack.Stop(t)
	var copies []string
	for i := 0; i < 6; i++ {
		r, err := e.d.CreateSnapshot(ctx, nfsSnapReq("attacked-"+string(rune('a'+i)), victim))
		if err != nil {
			t.Fatalf("snapshot under attack: %v", err)
		}
		s, _ := ids.ParseNFSSnapshotID(r.GetSnapshot().GetSnapshotId())
		copies = append(copies, filepath.Join(e.export, ".hostpath-csi", "snapshots", s.Key))
		clone := nfsReq("clone-"+string(rune('a'+i)), nfsParamsFor())
		clone.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: victim}}}
		cr, err := e.d.CreateVolume(ctx, clone)
		if err != nil {
			t.Fatalf("clone under attack: %v", err)
		}
		copies = append(copies, e.subDirOf(t, cr.GetVolume().GetVolumeId()))
	}
	swaps := attack.Stop(t)
	if diff := testutil.OutsideChanged(before, attack.OutsideState(t)); diff != "" {
		t.Fatalf("copies (%d swaps) changed files outside:\n%s", swaps, diff)
	}
	for _, c := range copies {
		if _, _, err := attack.CheckCopy(c); err != nil {
			t.Fatalf("copy %s (%d swaps): %v", c, swaps, err)
		}
	}
}

// A content source with an empty ID is a malformed request in an NFS class
// as in a hostpath one: INVALID_ARGUMENT, not a missing snapshot or volume.
func TestNFSContentSourceWithoutAnID(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	for _, tc := range []struct {
		name string
		cs   *csi.VolumeContentSource
	}{
		{"snapshot", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{}}}},
		{"volume", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, req := range []*csi.CreateVolumeRequest{nfsReq("pv-"+tc.name, nfsParamsFor()), createReq("hp-"+tc.name, 1<<20)} {
				req.VolumeContentSource = tc.cs
				_, err := e.d.CreateVolume(ctx, req)
				wantCode(t, err, codes.InvalidArgument)
			}
		})
	}
}
