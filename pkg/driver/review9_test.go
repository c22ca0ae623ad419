package driver

// Reproductions from the adversarial review of the issue 8/9 fixes
// (438ce17..8c85e08). Each test states what a user should see; the ones
// that fail show a finding of the review.

import (
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A clone asked with limit_bytes is never larger than that limit (the spec:
// OUT_OF_RANGE otherwise), even when its source grows while the clone waits
// for a copy slot; and what it takes beyond the room it checked is checked
// too.
func TestReview9CloneOfAGrowingSourceKeepsItsLimit(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	c.GetMount().FsType = "xfs"
	const size = 320 << 20
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
	clone.CapacityRange.LimitBytes = size
	clone.Parameters, clone.VolumeCapabilities = req.Parameters, req.VolumeCapabilities
	type result struct {
		r   *csi.CreateVolumeResponse
		err error
	}
	done := make(chan result, 1)
	go func() { r, err := e.d.CreateVolume(ctx, clone); done <- result{r, err} }()
	g.wait(t) // the clone is accepted and waits at its copy
	if _, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: src, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size + 64<<20}}); err != nil {
		t.Fatalf("expand the source meanwhile: %v", err)
	}
	close(g.open)
	res := <-done
	if res.err == nil {
		defer e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: res.r.GetVolume().GetVolumeId()})
		if got := res.r.GetVolume().GetCapacityBytes(); got > size {
			t.Errorf("clone asked with limit_bytes %d has %d bytes", int64(size), got)
		}
		// The provisioner's retry of the same request is the same volume.
		if _, err := e.d.CreateVolume(ctx, clone); err != nil {
			t.Errorf("the same clone request again: %v", err)
		}
	}
}

// A long copy of a block volume (a snapshot on a data filesystem without
// reflinks copies every byte) must not hold up its pod's mount: node.go's
// lockForNode promises that a copy never holds up its pods' mounts. Here the
// copy is held at its start; the kubelet's publish must not wait for it.
func TestReview9CopyDoesNotHoldUpPublish(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
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
	go func() { _, err := e.d.CreateSnapshot(ctx, snapReq("snap", id)); snapDone <- err }()
	g.wait(t)
	_, perr := e.d.NodePublishVolume(deadline(t, 3*time.Second), publishReq(id, staging, target, false, blockCap))
	close(g.open)
	if err := <-snapDone; err != nil {
		t.Logf("snapshot: %v", err)
	}
	if perr != nil {
		t.Fatalf("publish while a snapshot copies the volume: %v", perr)
	}
}
