package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Snapshot, break the data, restore, clone: on ext4 (copy), xfs and btrfs
// (reflink), the restored and cloned volumes hold exactly what their source
// held, metadata included.
func TestSnapshotRestoreCloneOnEachFilesystem(t *testing.T) {
	tests := []struct {
		fs        string
		mkfs      []string
		mechanism string
	}{
		{"ext4", nil, "copy"},
		{"xfs", []string{"-m", "reflink=1"}, "reflink"},
		{"btrfs", nil, "btrfs-snapshot"},
	}
	for _, tc := range tests {
		t.Run(tc.fs, func(t *testing.T) {
			e := newEnvOn(t, testutil.LoopFS(t, tc.fs, 512, tc.mkfs...))
			src := e.create(t, "src")
			srcDir := e.d.hostpath.vols.Path(src)
			testutil.WriteSampleTree(t, srcDir, 100)
			atSnapshot := testutil.TreeManifest(t, srcDir)

			resp, err := e.d.CreateSnapshot(ctx, snapReq("snap", src))
			if err != nil {
				t.Fatal(err)
			}
			snap := resp.GetSnapshot()
			if !snap.GetReadyToUse() || snap.GetSourceVolumeId() != src || snap.GetSizeBytes() <= 0 || snap.GetSizeBytes() >= 1<<20*32 {
				t.Fatalf("snapshot %+v: want ready, from %s, size of the data held", snap, src)
			}
			if rec, _ := e.d.store.GetSnapshot(snap.GetSnapshotId()); rec.Mechanism != tc.mechanism {
				t.Errorf("mechanism %q, want %q", rec.Mechanism, tc.mechanism)
			}
			again, err := e.d.CreateSnapshot(ctx, snapReq("snap", src))
			if err != nil || again.GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
				t.Fatalf("repeated CreateSnapshot: %v %v", again, err)
			}

			// Break the source: the snapshot must not change.
			os.RemoveAll(filepath.Join(srcDir, "db"))
			os.WriteFile(filepath.Join(srcDir, "new"), []byte("after"), 0o644)
			afterBreak := testutil.TreeManifest(t, srcDir)

			_, err = e.d.CreateVolume(ctx, fromSnapshot("too-small", 1<<10, snap.GetSnapshotId()))
			wantCode(t, err, codes.OutOfRange)
			restored, err := e.d.CreateVolume(ctx, fromSnapshot("restored", 0, snap.GetSnapshotId()))
			if err != nil {
				t.Fatal(err)
			}
			rv := restored.GetVolume()
			if rv.GetCapacityBytes() != 1<<20 || rv.GetContentSource().GetSnapshot().GetSnapshotId() != snap.GetSnapshotId() {
				t.Fatalf("restored volume %+v: want the source's capacity and the content source", rv)
			}
			if got := testutil.TreeManifest(t, e.d.hostpath.vols.Path(rv.GetVolumeId())); testutil.DiffManifests(atSnapshot, got) != "" {
				t.Fatalf("restore differs from the volume at snapshot time:\n%s", testutil.DiffManifests(atSnapshot, got))
			}
			bigger, err := e.d.CreateVolume(ctx, fromSnapshot("bigger", 4<<20, snap.GetSnapshotId()))
			if err != nil || bigger.GetVolume().GetCapacityBytes() != 4<<20 {
				t.Fatalf("restore into a larger volume: %v %v", bigger, err)
			}

			clone, err := e.d.CreateVolume(ctx, fromVolume("clone", 0, src))
			if err != nil {
				t.Fatal(err)
			}
			if got := testutil.TreeManifest(t, e.d.hostpath.vols.Path(clone.GetVolume().GetVolumeId())); testutil.DiffManifests(afterBreak, got) != "" {
				t.Fatalf("clone differs from its source:\n%s", testutil.DiffManifests(afterBreak, got))
			}
			_, err = e.d.CreateVolume(ctx, fromVolume("clone", 0, rv.GetVolumeId()))
			wantCode(t, err, codes.AlreadyExists) // same name, other source

			// The source can go; its snapshot stays usable.
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.d.CreateVolume(ctx, fromSnapshot("after-source-gone", 0, snap.GetSnapshotId())); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
					t.Fatal(err)
				}
			}
			_, err = e.d.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
			wantCode(t, err, codes.NotFound)
			e.d.hostpath.vols.WaitIdle()
			if left, _ := e.d.hostpath.vols.ListSnapshots(); len(left) != 0 {
				t.Fatalf("snapshot data left: %v", left)
			}
			// Deleted volumes and snapshots (btrfs: subvolumes) are gone.
			if left, _ := os.ReadDir(filepath.Join(e.dataDir, "trash")); len(left) != 0 {
				t.Fatalf("trash not emptied: %v", left)
			}
		})
	}
}

func TestListSnapshotsFilters(t *testing.T) {
	e := newEnv(t)
	a, b := e.create(t, "a"), e.create(t, "b")
	var ofA []string
	for i := 0; i < 3; i++ {
		r, err := e.d.CreateSnapshot(ctx, snapReq(fmt.Sprint("a-", i), a))
		if err != nil {
			t.Fatal(err)
		}
		ofA = append(ofA, r.GetSnapshot().GetSnapshotId())
	}
	if _, err := e.d.CreateSnapshot(ctx, snapReq("b-0", b)); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateSnapshot(ctx, snapReq("b-0", a))
	wantCode(t, err, codes.AlreadyExists)
	_, err = e.d.CreateSnapshot(ctx, snapReq("x", "hpv1-00000000000000000000000000000000"))
	wantCode(t, err, codes.NotFound)
	_, err = e.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "x", SourceVolumeId: a, Parameters: map[string]string{"bogus": "1"}})
	wantCode(t, err, codes.InvalidArgument)

	var got []string
	token := ""
	for {
		r, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: a, MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range r.GetEntries() {
			got = append(got, en.GetSnapshot().GetSnapshotId())
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	if len(got) != 3 {
		t.Fatalf("listed %d snapshots of a, want 3", len(got))
	}
	one, _ := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: ofA[1]})
	if len(one.GetEntries()) != 1 || one.GetEntries()[0].GetSnapshot().GetSnapshotId() != ofA[1] {
		t.Fatalf("list by ID: %v", one)
	}
	none, _ := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: ofA[1], SourceVolumeId: b})
	if len(none.GetEntries()) != 0 {
		t.Fatalf("list by ID and another source: %v", none)
	}
	_, err = e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted)
}

// Snapshots of a volume that is being written: the source is never
// corrupted, and every file a snapshot captured is complete (the writer
// renames whole files into place, as databases and editors do).
func TestSnapshotOfVolumeBeingWritten(t *testing.T) {
	e := newEnv(t)
	src := e.create(t, "busy")
	dir := e.d.hostpath.vols.Path(src)
	content := func(i int) []byte { return []byte(fmt.Sprintf("file %d %s", i, strings.Repeat("x", i%4096))) }
	stop := make(chan struct{})
	written := make(chan int, 1)
	stopWriter := sync.OnceValue(func() int { close(stop); return <-written })
	t.Cleanup(func() { stopWriter() }) // also when the test fails half way
	go func() {
		i := 0
		for ; ; i++ {
			select {
			case <-stop:
				written <- i
				return
			default:
			}
			// At most 3000 names: past them the writer replaces whole
			// files (same content), so the volume stays bounded however
			// long the snapshots take.
			n := i % 3000
			tmp := filepath.Join(dir, fmt.Sprintf(".tmp-%d", n))
			if err := os.WriteFile(tmp, content(n), 0o644); err != nil {
				t.Error(err)
			}
			if err := os.Rename(tmp, filepath.Join(dir, fmt.Sprint(n))); err != nil {
				t.Error(err)
			}
		}
	}()
	var snaps []string
	for k := 0; k < 5; k++ {
		r, err := e.d.CreateSnapshot(ctx, snapReq(fmt.Sprint("s", k), src))
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, r.GetSnapshot().GetSnapshotId())
	}
	n := stopWriter()
	for i := 0; i < min(n, 3000); i++ {
		if got, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(i))); err != nil || string(got) != string(content(i)) {
			t.Fatalf("source file %d damaged: %v", i, err)
		}
	}
	captured := 0
	for _, id := range snaps {
		entries, err := os.ReadDir(e.d.hostpath.vols.SnapshotPath(id))
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range entries {
			i, err := strconv.Atoi(en.Name())
			if err != nil {
				continue // a temporary file caught mid-write: the writer's own business
			}
			got, err := os.ReadFile(filepath.Join(e.d.hostpath.vols.SnapshotPath(id), en.Name()))
			if err != nil || string(got) != string(content(i)) {
				t.Fatalf("snapshot %s holds a broken copy of file %d: %v", id, i, err)
			}
			captured++
		}
	}
	t.Logf("%d files written during 5 snapshots; %d complete copies captured", n, captured)
}

// On btrfs a pod can make a subvolume inside its volume; a subvolume
// snapshot would leave it out and still report ready. Such a snapshot or
// clone is refused (FAILED_PRECONDITION, saying what to do); once the nested
// subvolume is gone it works.
func TestNestedSubvolumeIsNotSilentlyLeftOut(t *testing.T) {
	e := newEnvOn(t, testutil.LoopFS(t, "btrfs", 512))
	src := e.create(t, "src")
	inner := filepath.Join(e.d.hostpath.vols.Path(src), "inner")
	if err := btrfs.CreateSubvolume(inner); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(inner, "data"), []byte("in a nested subvolume"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateSnapshot(ctx, snapReq("s", src))
	wantCode(t, err, codes.FailedPrecondition)
	_, err = e.d.CreateVolume(ctx, fromVolume("c", 0, src))
	wantCode(t, err, codes.FailedPrecondition)
	if err := btrfs.DeleteSubvolume(inner); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.CreateSnapshot(ctx, snapReq("s", src)); err != nil {
		t.Fatal(err)
	}
}

// A clone holds its source whole, even when the source grows while the
// clone waits for a copy slot: it takes the source's new size, with the
// room for it checked and set aside; but a clone asked with limit_bytes is
// never larger than that limit (the spec: OUT_OF_RANGE), and the
// provisioner's retries get the same answer.
func TestCloneOfASourceThatGrew(t *testing.T) {
	const size, grown = 320 << 20, 384 << 20
	for _, tc := range []struct {
		name  string
		limit int64
	}{{"within no limit takes the new size", 0}, {"past its limit_bytes is OUT_OF_RANGE", size}} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, "ext4", 1024)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)
			c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			c.GetMount().FsType = "xfs"
			req := createReq("src", size)
			req.Parameters, req.VolumeCapabilities = map[string]string{ParamLayout: LayoutImage}, []*csi.VolumeCapability{c}
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			src := r.GetVolume().GetVolumeId()
			_, target := e.stageAndPublish(t, src, c)
			defer e.unpublishAndUnstage(t, src)

			g := newGate(e)
			clone := fromVolume("clone", size, src)
			clone.CapacityRange.LimitBytes = tc.limit
			clone.Parameters, clone.VolumeCapabilities = req.Parameters, req.VolumeCapabilities
			type result struct {
				r   *csi.CreateVolumeResponse
				err error
			}
			done := make(chan result, 1)
			go func() { r, err := e.d.CreateVolume(ctx, clone); done <- result{r, err} }()
			g.wait(t) // the clone is accepted and waits at its copy
			if _, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: src, VolumePath: target,
				CapacityRange: &csi.CapacityRange{RequiredBytes: grown}}); err != nil {
				t.Fatalf("expand the source meanwhile: %v", err)
			}
			close(g.open)
			res := <-done
			if res.err == nil {
				defer e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: res.r.GetVolume().GetVolumeId()})
			}
			if tc.limit == 0 {
				if res.err != nil {
					t.Fatal(res.err)
				}
				if got := res.r.GetVolume().GetCapacityBytes(); got != grown {
					t.Errorf("clone of a source grown to %d bytes has %d bytes", int64(grown), got)
				}
				again, err := e.d.CreateVolume(ctx, clone)
				if err != nil || again.GetVolume().GetVolumeId() != res.r.GetVolume().GetVolumeId() {
					t.Errorf("the same clone request again: %v, %v", again.GetVolume(), err)
				}
				return
			}
			if res.err == nil {
				t.Fatalf("clone asked with limit_bytes %d of a source now %d bytes: made with %d bytes", tc.limit, int64(grown), res.r.GetVolume().GetCapacityBytes())
			}
			wantCode(t, res.err, codes.OutOfRange)
			// The same answer to the provisioner's retries, and nothing
			// of the clone is left.
			for range 2 {
				_, err := e.d.CreateVolume(ctx, clone)
				wantCode(t, err, codes.OutOfRange)
			}
			if vols, _, err := e.d.store.ListVolumes("", 0, nil); err != nil {
				t.Fatal(err)
			} else if len(vols) != 1 {
				t.Errorf("%d volume records after the refused clone, want only its source", len(vols))
			}
		})
	}
}

// A long copy (a snapshot on a data filesystem without reflinks copies every
// byte) does not hold its volume's node lock: the kubelet's calls answer at
// once instead of waiting for it until their deadline. A block volume's
// publish is refused with ABORTED (a pod writing the device would tear the
// copy; a read-only bind of a device does not stop writes), and so are an
// expansion and an unstage; an image volume's publish goes through (its
// filesystem is frozen for the copy: the pod's writes wait, not fail). Here
// each copy is held at its start.
func TestNodeCallsDuringAFullCopyAnswerAtOnce(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	if e.d.hostpath.vols.CanReflink() {
		// Not a failure in CI: ext4 has no reflinks there; this guards
		// against a kernel whose ext4 gains them.
		t.Skip("the data filesystem reflinks: copies are instant and hold the node lock")
	}
	// answeredAtOnce: the call returned before its (long) deadline, so its
	// answer is not the deadline's.
	answeredAtOnce := func(t *testing.T, c context.Context, err error, want codes.Code) {
		t.Helper()
		if c.Err() != nil {
			t.Fatalf("the call waited for its deadline: %v", err)
		}
		wantCode(t, err, want)
	}
	t.Run("block", func(t *testing.T) {
		req := createReq("blk", 16<<20)
		req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
		r, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		id := r.GetVolume().GetVolumeId()
		staging, target := kubeletPaths(e, id)
		if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap}); err != nil {
			t.Fatal(err)
		}
		defer e.unpublishAndUnstage(t, id)
		g := newGate(e)
		snapDone := make(chan error, 1)
		go func() { _, err := e.d.CreateSnapshot(ctx, snapReq("blk-snap", id)); snapDone <- err }()
		g.wait(t)
		c := deadline(t, time.Minute)
		_, err = e.d.NodePublishVolume(c, publishReq(id, staging, target, false, blockCap))
		answeredAtOnce(t, c, err, codes.Aborted)
		_, err = e.d.NodeExpandVolume(c, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: staging,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
		answeredAtOnce(t, c, err, codes.Aborted)
		_, err = e.d.NodeUnstageVolume(c, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		answeredAtOnce(t, c, err, codes.Aborted)
		close(g.open)
		if err := <-snapDone; err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		// The copy over, the kubelet's retry of the publish succeeds.
		if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, blockCap)); err != nil {
			t.Fatalf("publish after the copy: %v", err)
		}
	})
	t.Run("image", func(t *testing.T) {
		e.d.beforeCopy = nil
		req := createReq("img", 32<<20)
		req.Parameters = map[string]string{ParamLayout: LayoutImage}
		r, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		id := r.GetVolume().GetVolumeId()
		staging, target := kubeletPaths(e, id)
		e.stage(t, id, staging)
		defer e.unpublishAndUnstage(t, id)
		g := newGate(e)
		snapDone := make(chan error, 1)
		go func() { _, err := e.d.CreateSnapshot(ctx, snapReq("img-snap", id)); snapDone <- err }()
		g.wait(t)
		c := deadline(t, time.Minute)
		if _, err := e.d.NodePublishVolume(c, publishReq(id, staging, target, false, rwo)); err != nil {
			t.Errorf("publish while the image is copied: %v", err)
		}
		close(g.open)
		if err := <-snapDone; err != nil {
			t.Fatalf("snapshot: %v", err)
		}
	})
}
