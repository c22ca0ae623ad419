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
