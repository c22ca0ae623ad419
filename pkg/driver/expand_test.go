package driver

import (
	"os"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// kill -9 in NodeExpandVolume after the image and its filesystem grew and
// before the new size was recorded. After the restart the pod has the grown
// filesystem, so what it may fill must stay set aside; and the kubelet's
// retry of the expansion (it never got an answer) must succeed, not find
// the room it already uses given to another volume.
func TestExpansionKilledBeforeItsRecordKeepsItsRoom(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	c.GetMount().FsType = "xfs"
	const size = 320 << 20
	req := createReq("grows", size)
	req.Parameters, req.VolumeCapabilities = map[string]string{ParamLayout: LayoutImage}, []*csi.VolumeCapability{c}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	_, target := e.stageAndPublish(t, id, c)
	defer e.unpublishAndUnstage(t, id)
	// What NodeExpandVolume does before it records the size; then the kill.
	if _, err := e.d.hostpath.vols.ExpandImage(id, 2*size); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("the pod's filesystem after the restart: %d MiB", int64(st.Blocks)*st.Bsize>>20)
	capResp, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Another claim takes what GetCapacity offers.
	other := createReq("other", capResp.GetAvailableCapacity()-(8<<20))
	other.Parameters = map[string]string{ParamLayout: LayoutImage}
	if _, err := e.d.CreateVolume(ctx, other); err != nil {
		t.Fatalf("create what GetCapacity offers: %v", err)
	}
	if _, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * size}}); err != nil {
		t.Fatalf("the kubelet's retry of the expansion its filesystem already has: %v", err)
	}
	if g, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	} else if got := g.GetVolume().GetCapacityBytes(); got != 2*size {
		t.Errorf("after the retry the volume's capacity is %d, want %d", got, int64(2*size))
	}
}

// An expansion that fails after it set room aside gives the room back: the
// node's capacity for other claims is what it was before the call. Here the
// image's data is gone (volume health says DATA_LOSS), so the grow fails.
func TestFailedExpansionGivesBackItsRoom(t *testing.T) {
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
	_, target := e.stageAndPublish(t, id, rwo)
	defer e.unpublishAndUnstage(t, id)
	if err := os.RemoveAll(e.d.hostpath.vols.Path(id)); err != nil {
		t.Fatal(err)
	}
	e.d.hostpath.reserved.invalidate() // what is set aside, as the records and the disk say now
	before, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
	if err == nil {
		t.Fatal("an image whose data is gone grew")
	}
	after, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if after.GetAvailableCapacity() != before.GetAvailableCapacity() {
		t.Errorf("capacity for other claims was %d before the failed expansion, %d after", before.GetAvailableCapacity(), after.GetAvailableCapacity())
	}
}

// A kill mid-expansion leaves an image or block file larger than the size on
// record until the kubelet's retry. A snapshot, restore or clone taken in
// that window holds the grown file, so it is sized by it: a restore or clone
// asking for the recorded size used to fail for good ("an image cannot
// shrink"), as the kill storm found.
func TestCopiesOfAVolumeGrownByACutShortExpansion(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	const size, grown = 16 << 20, 24 << 20
	for _, tc := range []struct {
		name   string
		params map[string]string
		caps   []*csi.VolumeCapability
	}{
		{"image", map[string]string{ParamLayout: LayoutImage}, []*csi.VolumeCapability{rwo}},
		{"block", nil, []*csi.VolumeCapability{blockCap}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := createReq("src-"+tc.name, size)
			req.Parameters, req.VolumeCapabilities = tc.params, tc.caps
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			src := r.GetVolume().GetVolumeId()
			// What NodeExpandVolume does before it records the size; then the kill.
			if tc.params == nil {
				err = e.d.hostpath.vols.ExpandBlock(src, grown)
			} else {
				_, err = e.d.hostpath.vols.ExpandImage(src, grown)
			}
			if err != nil {
				t.Fatal(err)
			}
			e.restart(t)
			snap, err := e.d.CreateSnapshot(ctx, snapReq("snap-"+tc.name, src))
			if err != nil {
				t.Fatal(err)
			}
			if got := snap.GetSnapshot().GetSizeBytes(); got != grown {
				t.Errorf("snapshot size %d, want the grown file's %d (the least a restore needs)", got, int64(grown))
			}
			for _, c := range []*csi.CreateVolumeRequest{
				fromSnapshot("restore-"+tc.name, 0, snap.GetSnapshot().GetSnapshotId()),
				fromVolume("clone-"+tc.name, 0, src),
			} {
				c.CapacityRange = nil
				c.Parameters, c.VolumeCapabilities = tc.params, tc.caps
				got, err := e.d.CreateVolume(ctx, c)
				if err != nil {
					t.Fatalf("%s: %v", c.Name, err)
				}
				if n := got.GetVolume().GetCapacityBytes(); n != grown {
					t.Errorf("%s: capacity %d, want %d", c.Name, n, int64(grown))
				}
				if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: got.GetVolume().GetVolumeId()}); err != nil {
					t.Fatal(err)
				}
			}
			// Asking for the size on record is now asking for less than the
			// source holds: OUT_OF_RANGE, not a copy that fails late.
			_, err = e.d.CreateVolume(ctx, func() *csi.CreateVolumeRequest {
				c := fromVolume("small-"+tc.name, size, src)
				c.Parameters, c.VolumeCapabilities = tc.params, tc.caps
				return c
			}())
			wantCode(t, err, codes.OutOfRange)
			if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// NodeExpandVolume's capacity range, against the spec's error table: a
// limit below the volume's size asks for a shrink, and a required size
// above the limit cannot be met: both OUT_OF_RANGE, the table's code for
// an unsupported range. Negative sizes are malformed; a size the volume
// already has is an OK with that size.
func TestNodeExpandCapacityRangeCodes(t *testing.T) {
	e := newEnv(t)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	const size = 4 << 20
	r, err := e.d.CreateVolume(ctx, createReq("range", size))
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	_, target := e.stageAndPublish(t, id, c)
	defer e.unpublishAndUnstage(t, id)
	for _, tc := range []struct {
		name     string
		required int64
		limit    int64
		code     codes.Code
	}{
		{"limit below the size", 0, size / 2, codes.OutOfRange},
		{"required and limit below the size", size / 4, size / 2, codes.OutOfRange},
		{"required above limit", 2 * size, size + 1, codes.OutOfRange},
		{"negative", -1, 0, codes.InvalidArgument},
		{"the size it has", size, size, codes.OK},
		{"nothing asked", 0, 0, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
				CapacityRange: &csi.CapacityRange{RequiredBytes: tc.required, LimitBytes: tc.limit}})
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
			if tc.code == codes.OK && resp.GetCapacityBytes() != size {
				t.Fatalf("capacity %d, want the volume's %d", resp.GetCapacityBytes(), size)
			}
		})
	}
}
