package driver

import (
	"bytes"
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// serveFetch makes a clone's point-in-time copy before it sends the answer
// header (a whole copy of an image where the data filesystem has no
// reflinks). A copy that takes longer than the fetching node's idle timeout
// (--transfer-idle-timeout) must not fail the clone: the server tells the
// client it is alive meanwhile. Here the idle timeout is 200ms and the copy
// 768 MiB: the same as 1m against a volume of some tens of GiB.
func TestCloneWhoseCopyOutlastsTheIdleTimeout(t *testing.T) {
	idle := func(c *Config) { c.Transfer.IdleTimeout = 200 * time.Millisecond }
	n := newTwoNodes(t, "", idle, idle)
	if n.a.d.hostpath.vols.CanReflink() {
		t.Skip("the temporary directory's filesystem reflinks: the copy to send is instant")
	}
	req := createReq("src", 1<<30)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	src, err := n.a.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	srcID := src.GetVolume().GetVolumeId()
	dir := n.a.d.hostpath.vols.Path(srcID)
	f, err := os.OpenFile(filepath.Join(dir, imageFileOf(t, dir)), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB, no holes
	for i := 0; i < 768; i++ {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	clone := fromVolume("cloned", 1<<30, srcID)
	clone.Parameters = req.Parameters
	_, err = createOn(t, n.b, clone)
	if err != nil {
		t.Fatalf("clone from node-a after %s: %v (a source being copied is not a vanished peer)", time.Since(start), err)
	}
}

// A lookup takes no transfer slot: while the holder serves its only
// transfer (MaxTransfers 1), another restore is still located, and its
// fetch waits its turn (the call answers that it runs on) instead of the
// restore failing UNAVAILABLE; both then finish.
func TestStatAnsweredWhileTransfersBusy(t *testing.T) {
	n := newTwoNodes(t, "", func(c *Config) {
		c.Transfer.RateBytesPerSec = 2 << 20
		c.Transfer.MaxTransfers = 1
	}, nil)
	src, err := n.a.d.CreateVolume(ctx, createReq("src", 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	srcID := src.GetVolume().GetVolumeId()
	data := bytes.Repeat([]byte("x"), 32<<20)
	if err := os.WriteFile(filepath.Join(n.a.d.hostpath.vols.Path(srcID), "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	big, err := n.a.d.CreateSnapshot(ctx, snapReq("big", srcID))
	if err != nil {
		t.Fatal(err)
	}
	small, err := n.a.d.CreateSnapshot(ctx, snapReq("small", n.a.create(t, "small-src")))
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = n.b.d.CreateVolume(short, fromSnapshot("restored-big", 64<<20, big.GetSnapshot().GetSnapshotId()))
	cancel()
	wantPending(t, err) // 32 MiB at 2 MiB/s: 16 s
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	smallReq := fromSnapshot("restored-small", 1<<20, small.GetSnapshot().GetSnapshotId())
	_, err = n.b.d.CreateVolume(c, smallReq)
	wantPending(t, err) // located, and waiting for the only transfer slot
	for _, req := range []*csi.CreateVolumeRequest{smallReq, fromSnapshot("restored-big", 64<<20, big.GetSnapshot().GetSnapshotId())} {
		if _, err := createOn(t, n.b, req); err != nil {
			t.Fatalf("%s: %v", req.GetName(), err)
		}
	}
}
