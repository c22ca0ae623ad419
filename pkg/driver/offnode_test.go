package driver

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// offNodeSnapReq is a CreateSnapshot whose VolumeSnapshotClass keeps the
// snapshot on the stand-in's export, with csi-snapshotter's metadata.
func offNodeSnapReq(name, src string) *csi.CreateSnapshotRequest {
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src, Parameters: nfsParamsFor(
		"csi.storage.k8s.io/volumesnapshot/name", name, "csi.storage.k8s.io/volumesnapshot/namespace", "default")}
}

// offNodeRecord reads the export's record of an NFS snapshot as the driver
// wrote it.
func offNodeRecord(t *testing.T, e *nfsEnv, id string) *nfs.SnapshotRecord {
	t.Helper()
	s, err := ids.ParseNFSSnapshotID(id)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(e.export, ids.HiddenDir, "snapshot-records", s.Key+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec nfs.SnapshotRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	return &rec
}

// entriesOf lists what the driver's directory dir on the export holds.
func entriesOf(t *testing.T, e *nfsEnv, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(e.export, ids.HiddenDir, dir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	return names
}

// A snapshot kept on an NFS export survives its node: taken of a directory
// volume and of a mounted ext4 image (frozen while copied), it is restored
// by a second driver on another node, with empty state and data
// directories, after the first node's driver is gone with its data; the
// restore holds the volume as it was when the snapshot was taken. The
// second driver finds, lists and deletes it, data and all.
func TestOffNodeSnapshotSurvivesItsNode(t *testing.T) {
	image := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	image.GetMount().FsType = "ext4"
	for _, tc := range []struct {
		name   string
		params map[string]string
		cap    *csi.VolumeCapability
		size   int64
	}{
		{"directory", nil, rwo, 64 << 20},
		{"ext4 image", map[string]string{ParamLayout: LayoutImage}, image, 64 << 20},
		{"block", nil, blockCap, 16 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			block := tc.cap.GetBlock() != nil
			if tc.params != nil {
				testutil.RequireMkfs(t, "ext4")
			}
			e := newNFSEnv(t, 30*time.Second)
			testutil.CleanupLoopDevices(t, e.dataDir)
			req := createReq("pv-src", tc.size)
			req.Parameters, req.VolumeCapabilities = tc.params, []*csi.VolumeCapability{tc.cap}
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			src := r.GetVolume().GetVolumeId()
			dir, staged := e.d.hostpath.vols.Path(src), false
			if tc.params != nil {
				_, dir = e.stageAndPublish(t, src, tc.cap)
				staged = true
			}
			if block {
				// Published to a pod, a device is written as it is read:
				// a copy to the export, always of every byte, is refused.
				e.stageAndPublish(t, src, tc.cap)
				_, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("snap-1", src))
				wantRefused(t, err, codes.FailedPrecondition, "NFS export")
				e.unpublishAndUnstage(t, src)
				writeAt(t, filepath.Join(dir, "disk.img"), 1<<20, "what the pod wrote")
			} else {
				testutil.WriteSampleTree(t, dir, 30)
			}
			want := testutil.TreeManifest(t, dir)

			resp, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("snap-1", src))
			if err != nil {
				t.Fatal(err)
			}
			snap := resp.GetSnapshot()
			if !ids.IsNFSSnapshotID(snap.GetSnapshotId()) || !snap.GetReadyToUse() || snap.GetSourceVolumeId() != src || snap.GetSizeBytes() != tc.size {
				t.Fatalf("snapshot %v; want a ready NFS snapshot of %s restoring at %d bytes", snap, src, tc.size)
			}
			again, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("snap-1", src))
			if err != nil || again.GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
				t.Fatalf("retry of the name: %v, %v; want %s", again, err, snap.GetSnapshotId())
			}
			rec := offNodeRecord(t, e, snap.GetSnapshotId())
			wantKind := kindOf(&state.Volume{AccessType: map[bool]string{false: "mount", true: "block"}[block], Layout: tc.params[ParamLayout], FSType: tc.cap.GetMount().GetFsType()})
			if !rec.OfHostpath() || rec.SourceNode != "node-1" || rec.SourceCapacity != tc.size || rec.SourceFormatted != (tc.params != nil) ||
				kindOf(&state.Volume{AccessType: rec.SourceAccessType, Layout: rec.SourceLayout, FSType: rec.SourceFSType}) != wantKind {
				t.Fatalf("record %+v; want a %s hostpath volume's of %d bytes from node-1", rec, wantKind, tc.size)
			}
			bySource, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: src})
			if err != nil || len(bySource.GetEntries()) != 1 || bySource.GetEntries()[0].GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
				t.Fatalf("ListSnapshots of the source volume: %v, %v; want the snapshot kept on the export", bySource, err)
			}
			if snaps, _, err := e.d.hostpath.store.ListSnapshots("", 0, nil); err != nil || len(snaps) != 0 {
				t.Fatalf("the node's state has snapshots %v (%v); the snapshot lives on the export only", snaps, err)
			}
			if names, err := e.d.hostpath.vols.ListSnapshots(); err != nil || len(names) != 0 {
				t.Fatalf("the node's data directory has snapshots %v (%v)", names, err)
			}

			// The node goes, with its data.
			if block {
				writeAt(t, filepath.Join(dir, "disk.img"), 1<<20, "after the snapshot")
			} else {
				writeFile(t, filepath.Join(dir, "broken"), "after the snapshot")
			}
			if staged {
				e.unpublishAndUnstage(t, src)
			}
			if err := e.d.Close(); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{e.dataDir, e.stateDir} {
				if err := os.RemoveAll(p); err != nil {
					t.Fatal(err)
				}
			}

			d2 := e.another(t)
			if g, err := d2.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil || g.GetSnapshot().GetSizeBytes() != tc.size {
				t.Fatalf("GetSnapshot on another node: %v, %v", g, err)
			}
			ls, err := d2.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()})
			if err != nil || len(ls.GetEntries()) != 1 {
				t.Fatalf("ListSnapshots on another node: %v, %v", ls, err)
			}
			restore := fromSnapshot("pv-restore", tc.size, snap.GetSnapshotId())
			restore.Parameters, restore.VolumeCapabilities = tc.params, []*csi.VolumeCapability{tc.cap}
			rr, err := d2.CreateVolume(ctx, restore)
			if err != nil {
				t.Fatalf("restore on another node: %v", err)
			}
			v := rr.GetVolume()
			if v.GetCapacityBytes() != tc.size || v.GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() ||
				v.GetAccessibleTopology()[0].GetSegments()[TopologyKeyNode] != "node-2" {
				t.Fatalf("restored volume %v; want %d bytes on node-2 from %s", v, tc.size, snap.GetSnapshotId())
			}
			got := d2.hostpath.vols.Path(v.GetVolumeId())
			if tc.params != nil {
				kubelet := t.TempDir()
				testutil.CleanupMounts(t, kubelet)
				staging, target := filepath.Join(kubelet, "staging"), filepath.Join(kubelet, "target")
				if _, err := d2.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging, VolumeCapability: tc.cap}); err != nil {
					t.Fatal(err)
				}
				defer d2.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: staging})
				if _, err := d2.NodePublishVolume(ctx, publishReq(v.GetVolumeId(), staging, target, false, tc.cap)); err != nil {
					t.Fatal(err)
				}
				defer d2.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: target})
				got = target
			}
			have := testutil.TreeManifest(t, got)
			if block {
				// A restored block volume's file is fitted to its
				// capacity (as after a local restore), which sets its
				// mtime; the bytes are what counts.
				want, have = withoutMtime(want), withoutMtime(have)
			}
			if diff := testutil.DiffManifests(want, have); diff != "" {
				t.Fatalf("restored volume differs from the volume when its snapshot was taken:\n%s", diff)
			}

			if _, err := d2.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
				t.Fatal(err)
			}
			for _, sub := range []string{"snapshots", "snapshot-records", "partial"} {
				if left := entriesOf(t, e, sub); len(left) != 0 {
					t.Errorf("%s left on the export after the delete: %v", sub, left)
				}
			}
			if _, err := d2.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); status.Code(err) != codes.NotFound {
				t.Fatalf("GetSnapshot after the delete: %v; want NOT_FOUND", err)
			}
		})
	}
}

// What a class or a restore may not do with snapshots kept off the node,
// each refused with the code the spec gives and a message that says why.
func TestOffNodeSnapshotRefusals(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	hp := e.create(t, "hp-a")
	other := e.create(t, "hp-b")
	nfsVol := e.createNFS(t, "pv-nfs", nfsParamsFor()).GetVolumeId()
	off, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("off", hp))
	if err != nil {
		t.Fatal(err)
	}
	offID := off.GetSnapshot().GetSnapshotId()
	ofNFS, err := e.d.CreateSnapshot(ctx, nfsSnapReq("of-nfs", nfsVol))
	if err != nil {
		t.Fatal(err)
	}

	snapshots := []struct {
		name   string
		params map[string]string
		src    string
		want   codes.Code
		names  string
	}{
		{"server without share", map[string]string{ParamServer: testServer}, hp, codes.InvalidArgument, ParamShare},
		{"share without server", map[string]string{ParamShare: testShare}, hp, codes.InvalidArgument, ParamServer},
		{"bad server", map[string]string{ParamServer: "nfs example", ParamShare: testShare}, hp, codes.InvalidArgument, ParamServer},
		{"relative share", map[string]string{ParamServer: testServer, ParamShare: "export"}, hp, codes.InvalidArgument, ParamShare},
		{"share among the driver's records", map[string]string{ParamServer: testServer, ParamShare: "/export/" + ids.HiddenDir}, hp, codes.InvalidArgument, ParamShare},
		{"an NFS class's subDir", nfsParamsFor(ParamSubDir, "x"), hp, codes.InvalidArgument, ParamSubDir},
		{"an unknown key beside them", nfsParamsFor("retention", "7d"), hp, codes.InvalidArgument, "retention"},
		{"of an NFS volume", nfsParamsFor(), nfsVol, codes.InvalidArgument, "NFS volume"},
		{"the same name for another source", nfsParamsFor(), other, codes.AlreadyExists, hp},
		{"a missing source", nfsParamsFor(), "hpv1-0000000000000000000000000000000f", codes.NotFound, ""},
	}
	for _, c := range snapshots {
		t.Run("snapshot/"+c.name, func(t *testing.T) {
			name := "refused-" + strings.ReplaceAll(c.name, " ", "-")
			if c.want == codes.AlreadyExists {
				name = "off"
			}
			_, err := e.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: c.src, Parameters: c.params})
			if status.Code(err) != c.want || !strings.Contains(status.Convert(err).Message(), c.names) {
				t.Fatalf("got %v; want %s naming %q", err, c.want, c.names)
			}
		})
	}

	block := fromSnapshot("hp-as-block", 1<<20, offID)
	block.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	image := fromSnapshot("hp-as-image", 64<<20, offID)
	image.Parameters = map[string]string{ParamLayout: LayoutImage}
	intoNFS := nfsReq("nfs-from-hp", nfsParamsFor())
	intoNFS.VolumeContentSource = fromSnapshot("", 0, offID).VolumeContentSource
	gone, _, err := ids.NewNFSSnapshotID(testServer, testShare)
	if err != nil {
		t.Fatal(err)
	}
	tooSmall := fromSnapshot("hp-too-small", 1<<10, offID)
	tooSmall.CapacityRange.LimitBytes = 1 << 10
	restores := []struct {
		name  string
		req   *csi.CreateVolumeRequest
		want  codes.Code
		names string
	}{
		{"into an NFS class", intoNFS, codes.InvalidArgument, "restore it into a hostpath class"},
		{"an NFS volume's snapshot into a hostpath class", fromSnapshot("hp-from-nfs", 1<<20, ofNFS.GetSnapshot().GetSnapshotId()), codes.InvalidArgument, "NFS class"},
		{"a directory's snapshot as a block volume", block, codes.InvalidArgument, "directory"},
		{"a directory's snapshot as an image", image, codes.InvalidArgument, "directory"},
		{"below the source's size", tooSmall, codes.OutOfRange, "smaller than the source"},
		{"a snapshot gone from the export", fromSnapshot("hp-gone", 1<<20, gone), codes.NotFound, ""},
	}
	for _, c := range restores {
		t.Run("restore/"+c.name, func(t *testing.T) {
			_, err := e.d.CreateVolume(ctx, c.req)
			if status.Code(err) != c.want || !strings.Contains(status.Convert(err).Message(), c.names) {
				t.Fatalf("got %v; want %s naming %q", err, c.want, c.names)
			}
		})
	}
	// The refused restores took nothing: no volume, no partial copy.
	vols, _, err := e.d.hostpath.store.ListVolumes("", 0, nil)
	if err != nil || len(vols) != 2 {
		t.Fatalf("volumes on record after the refusals: %d (%v); want the 2 sources", len(vols), err)
	}
}

// A copy to the export runs detached: a caller whose deadline ends first
// gets ABORTED, a retry while it runs is ABORTED at once, and the retry
// after it ended gets the snapshot. Until then it is not listed.
func TestOffNodeSnapshotRetryWhileCopyingIsAborted(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	src := e.create(t, "hp-src")
	testutil.WriteSampleTree(t, e.d.hostpath.vols.Path(src), 10)
	g := newGate(e.testEnv)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := e.d.CreateSnapshot(short, offNodeSnapReq("slow", src))
	cancel()
	wantCode(t, err, codes.Aborted)
	id := g.wait(t)
	if !ids.IsNFSSnapshotID(id) {
		t.Fatalf("the copy makes %q; want an NFS snapshot", id)
	}
	_, err = e.d.CreateSnapshot(deadline(t, 5*time.Second), offNodeSnapReq("slow", src))
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "in progress") {
		t.Fatalf("retry while the copy runs: %v; want ABORTED at once", err)
	}
	if ls, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 0 {
		t.Fatalf("listed while copying: %v, %v", ls, err)
	}
	// Its source is held: a delete of it is ABORTED, not queued.
	_, err = e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src})
	wantCode(t, err, codes.Aborted)
	close(g.open)
	for {
		r, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("slow", src))
		if err == nil {
			if r.GetSnapshot().GetSnapshotId() != id || !r.GetSnapshot().GetReadyToUse() {
				t.Fatalf("snapshot %v; want %s ready", r.GetSnapshot(), id)
			}
			break
		}
		wantCode(t, err, codes.Aborted)
		time.Sleep(10 * time.Millisecond)
	}
	if ls, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 1 {
		t.Fatalf("listing after the copy: %v, %v", ls, err)
	}
}

// A copy that fails midway leaves nothing: no record listed, no data on
// the export. What a kill midway leaves (the record of the intent, a
// partial copy) is undone by the same machinery as an NFS snapshot's: a
// retry of the name takes it anew, and the export's sweep in another
// driver removes it when nobody retries.
func TestOffNodeSnapshotCutShortLeavesNothing(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	src := e.create(t, "hp-src")
	testutil.WriteSampleTree(t, e.d.hostpath.vols.Path(src), 10)
	hidden := filepath.Join(e.export, ids.HiddenDir)

	// What the export holds when the copy starts, kept to play a kill.
	var killed map[string][]byte
	var killedID string
	e.d.beforeCopy = func(ctx context.Context, id string) error {
		killed, killedID = map[string][]byte{}, id
		for _, dir := range []string{"snapshot-records", "names"} {
			for _, n := range entriesOf(t, e, dir) {
				data, err := os.ReadFile(filepath.Join(hidden, dir, n))
				if err != nil {
					return err
				}
				killed[filepath.Join(dir, n)] = data
			}
		}
		s, _ := ids.ParseNFSSnapshotID(id)
		killed[filepath.Join("partial", "s-"+s.Key, "half")] = []byte("copied so far")
		return errors.New("the copy failed midway")
	}
	_, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("cut", src))
	if err == nil || !strings.Contains(err.Error(), "failed midway") {
		t.Fatalf("snapshot whose copy failed: %v", err)
	}
	empty := func(when string) {
		t.Helper()
		if ls, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 0 {
			t.Fatalf("%s: listed %v, %v", when, ls, err)
		}
		for _, sub := range []string{"snapshots", "snapshot-records", "partial", "names"} {
			if left := entriesOf(t, e, sub); len(left) != 0 {
				t.Fatalf("%s: %s holds %v", when, sub, left)
			}
		}
	}
	empty("after the failed copy")
	if len(killed) < 3 {
		t.Fatalf("the copy started with %v on the export; want the record and the name", killed)
	}
	kill := func() {
		t.Helper()
		for rel, data := range killed {
			writeFile(t, filepath.Join(hidden, rel), string(data))
		}
	}

	// Killed midway, then the name retried: undone and taken anew.
	kill()
	e.d.beforeCopy = nil
	r, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("cut", src))
	if err != nil {
		t.Fatalf("retry after a kill: %v", err)
	}
	if n := entriesOf(t, e, "snapshot-records"); len(n) != 1 || len(entriesOf(t, e, "partial")) != 0 {
		t.Fatalf("after the retry the export holds records %v, partial %v; want the new snapshot's alone", n, entriesOf(t, e, "partial"))
	}
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: r.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	empty("after the delete")

	// Killed midway, and nobody retried: not listed, and another
	// driver's sweep of the export removes it.
	kill()
	if ls, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 0 {
		t.Fatalf("a killed snapshot is listed: %v, %v", ls, err)
	}
	d2 := e.another(t)
	d2.nfs.sweeps.age = time.Millisecond
	// Its first call on the export starts the sweep; the snapshot is
	// never ready meanwhile.
	if _, err := d2.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: killedID}); status.Code(err) != codes.Aborted && status.Code(err) != codes.NotFound {
		t.Fatalf("GetSnapshot of a killed snapshot: %v; want ABORTED or NOT_FOUND", err)
	}
	d2.nfs.sweeps.wg.Wait()
	empty("after another driver's sweep")
}

// writeAt writes data at offset off of the file at path.
func writeAt(t *testing.T, path string, off int64, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte(data), off); err != nil {
		t.Fatal(err)
	}
}

// withoutMtime drops the mtimes from a tree manifest.
func withoutMtime(m []string) []string {
	out := make([]string, len(m))
	for i, l := range m {
		f := strings.Fields(l)
		f = slices.DeleteFunc(f, func(w string) bool { return strings.HasPrefix(w, "mtime=") })
		out[i] = strings.Join(f, " ")
	}
	return out
}

// The freeze of a mounted image lasts only for the copy on the node: while
// the copy to the export is held at the server (the first file operation
// of the copy into partial/, as a slow server holds it), the image's
// filesystem is not frozen (no freeze marker, and a write to the mounted
// image and its sync complete), and the copy's record gets its heartbeat.
func TestOffNodeSnapshotCopyToTheExportHoldsNoFreeze(t *testing.T) {
	testutil.RequireMkfs(t, "ext4")
	e := newNFSEnv(t, 30*time.Second)
	testutil.CleanupLoopDevices(t, e.dataDir)
	e.d.Close()
	held := make(chan struct{})
	release := make(chan struct{})
	var holding atomic.Bool
	e.opts.BeforeFileOp = func(_, op string) error {
		if strings.HasPrefix(op, "clear partial/s-") && holding.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
		return nil
	}
	e.startNFS(t)
	e.d.hostpath.offNodeBeat = 20 * time.Millisecond

	image := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	image.GetMount().FsType = "ext4"
	req := createReq("pv-img", 64<<20)
	req.Parameters, req.VolumeCapabilities = map[string]string{ParamLayout: LayoutImage}, []*csi.VolumeCapability{image}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	src := r.GetVolume().GetVolumeId()
	_, target := e.stageAndPublish(t, src, image)
	defer e.unpublishAndUnstage(t, src)
	testutil.WriteSampleTree(t, target, 10)

	holding.Store(true)
	type result struct {
		resp *csi.CreateSnapshotResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("snap-img", src))
		done <- result{resp, err}
	}()
	select {
	case <-held:
	case r := <-done:
		t.Fatalf("the snapshot ended (%v, %v) before its copy reached the export", r.resp, r.err)
	case <-time.After(20 * time.Second):
		t.Fatal("the copy never reached the export")
	}
	func() {
		defer close(release)
		if m, err := os.ReadDir(e.d.hostpath.vols.FreezeMarkers()); err != nil || len(m) != 0 {
			t.Errorf("while the copy to the export is held, freeze markers %v (%v); want the image thawed", m, err)
		}
		wrote := make(chan error, 1)
		go func() {
			f, err := os.Create(filepath.Join(target, "during-the-copy"))
			if err == nil {
				_, err = f.WriteString("written while the export is slow")
				if err == nil {
					err = f.Sync()
				}
				f.Close()
			}
			wrote <- err
		}()
		select {
		case err := <-wrote:
			if err != nil {
				t.Errorf("write to the mounted image during the copy: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("a write to the mounted image has not completed in 5s while the copy to the export is held: the image is frozen for the copy over NFS")
		}
		// The heartbeat goes on while the copy is held.
		ls, err := os.ReadDir(filepath.Join(e.export, ids.HiddenDir, "snapshot-records"))
		if err != nil || len(ls) != 1 {
			t.Fatalf("records %v (%v); want the creating snapshot's", ls, err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			data, err := os.ReadFile(filepath.Join(e.export, ids.HiddenDir, "snapshot-records", ls[0].Name()))
			if err != nil {
				t.Fatal(err)
			}
			var rec nfs.SnapshotRecord
			if err := json.Unmarshal(data, &rec); err != nil {
				t.Fatal(err)
			}
			if rec.UpdatedAt.After(rec.CreatedAt) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("record %+v has no heartbeat after 5s of a copy beating every 20ms", rec)
				break
			}
		}
	}()
	res := <-done
	if res.err != nil || !res.resp.GetSnapshot().GetReadyToUse() {
		t.Fatalf("snapshot: %v, %v", res.resp, res.err)
	}
	if left := entriesOf(t, e, "partial"); len(left) != 0 {
		t.Errorf("partial/ on the export holds %v", left)
	}
	if left, err := os.ReadDir(filepath.Join(e.dataDir, "partial")); err != nil || len(left) != 0 {
		t.Errorf("the node's partial/ holds %v (%v); want the local copy released", left, err)
	}
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: res.resp.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
}

// A copy whose record a sweep on another node undid meanwhile (it took the
// copy for one a kill abandoned) never brings the record back as ready
// with no data: the ready write finds it gone, the job rolls back and the
// caller gets ABORTED; the export holds nothing of it.
func TestOffNodeSnapshotReadyWriteAfterASweepUndidIt(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	src := e.create(t, "hp-src")
	testutil.WriteSampleTree(t, e.d.hostpath.vols.Path(src), 10)
	e.d.beforeCopy = func(ctx context.Context, id string) error {
		// What another node's sweep does (sweepExport): the data, then
		// the record and its name.
		x, err := e.d.nfs.useExport(ctx, testServer, testShare)
		if err != nil {
			return err
		}
		defer x.Release()
		s, _ := ids.ParseNFSSnapshotID(id)
		rec, err := x.GetSnapshot(ctx, s.Key)
		if err != nil {
			return err
		}
		return e.d.nfs.nfsUndoSnapshot(ctx, x, rec, s.Key)
	}
	_, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("swept", src))
	wantCode(t, err, codes.Aborted)
	for _, sub := range []string{"snapshots", "snapshot-records", "partial", "names"} {
		if left := entriesOf(t, e, sub); len(left) != 0 {
			t.Errorf("%s holds %v after a copy whose record was swept", sub, left)
		}
	}
	if ls, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{}); err != nil || len(ls.GetEntries()) != 0 {
		t.Fatalf("listed: %v, %v", ls, err)
	}
}

// A missing source is NOT_FOUND even when the class's export does not
// answer: the source is checked before the export is mounted.
func TestOffNodeSnapshotOfAMissingSourceOnADeadExport(t *testing.T) {
	e := newNFSEnv(t, time.Second)
	e.standin.AddExport(t, "dead.example", "/export", filepath.Join(e.dir, "exports", "dead"))
	e.standin.Hang("dead.example")
	for _, src := range []string{"hpv1-0000000000000000000000000000000f", "not-a-volume-id"} {
		_, err := e.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-of-missing", SourceVolumeId: src,
			Parameters: map[string]string{ParamServer: "dead.example", ParamShare: "/export"}})
		wantCode(t, err, codes.NotFound)
	}
}

// Where the data filesystem cannot reflink, the copy on the node that the
// freeze lasts for is a whole copy of the image: one the node has no room
// for is refused with RESOURCE_EXHAUSTED, and nothing is left of it, on the
// node or on the export.
func TestOffNodeSnapshotWithoutRoomForTheCopyOnTheNode(t *testing.T) {
	testutil.RequireMkfs(t, "ext4")
	e := newNFSEnv(t, 30*time.Second)
	e.d.Close()
	mnt := testutil.LoopFS(t, "ext4", 160) // ext4: no reflinks
	e.dataDir = filepath.Join(mnt, "data")
	testutil.CleanupLoopDevices(t, e.dataDir)
	e.startNFS(t)
	if e.d.hostpath.vols.CanReflink() {
		t.Skip("the data filesystem reflinks")
	}
	req := createReq("pv-img", 100<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	src := r.GetVolume().GetVolumeId()
	_, err = e.d.CreateSnapshot(ctx, offNodeSnapReq("snap-big", src))
	wantCode(t, err, codes.ResourceExhausted)
	for _, sub := range []string{"snapshots", "snapshot-records", "partial", "names"} {
		if left := entriesOf(t, e, sub); len(left) != 0 {
			t.Errorf("%s holds %v after the refusal", sub, left)
		}
	}
	if left, err := os.ReadDir(filepath.Join(e.dataDir, "partial")); err != nil || len(left) != 0 {
		t.Errorf("the node's partial/ holds %v (%v)", left, err)
	}
}
