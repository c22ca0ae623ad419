package driver

import (
	"os"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

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
	if _, err := e.d.vols.ExpandImage(id, 2*size); err != nil {
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
	if err := os.RemoveAll(e.d.vols.Path(id)); err != nil {
		t.Fatal(err)
	}
	e.d.reserved.invalidate() // what is set aside, as the records and the disk say now
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
