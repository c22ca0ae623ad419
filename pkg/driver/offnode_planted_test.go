package driver

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Whoever can write the export (its server, another NFS client of it) can
// replace an image snapshot's disk.img with a symlink; the restore copies
// the symlink as it is, and without a check the node would then open, grow
// (and loop-mount for the pod) whatever file of the node it names. The
// restore refuses an image that is not a plain file of its own, and leaves
// the node's file alone.
func TestOffNodeRestoreRefusesAPlantedImageSymlink(t *testing.T) {
	image := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	image.GetMount().FsType = "ext4"
	params := map[string]string{ParamLayout: LayoutImage}
	e := newNFSEnv(t, 30*time.Second)
	testutil.CleanupLoopDevices(t, e.dataDir)
	req := createReq("pv-src", 64<<20)
	req.Parameters, req.VolumeCapabilities = params, []*csi.VolumeCapability{image}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.d.CreateSnapshot(ctx, offNodeSnapReq("snap-1", r.GetVolume().GetVolumeId()))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ids.ParseNFSSnapshotID(resp.GetSnapshot().GetSnapshotId())
	if err != nil {
		t.Fatal(err)
	}
	// A file of the node that no tenant should reach.
	victim := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(victim, []byte("root:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(e.export, ids.HiddenDir, "snapshots", s.Key, "disk.img")
	if err := os.Remove(img); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, img); err != nil {
		t.Fatal(err)
	}

	d2 := e.another(t)
	restore := fromSnapshot("pv-restore", 64<<20, resp.GetSnapshot().GetSnapshotId())
	restore.Parameters, restore.VolumeCapabilities = params, []*csi.VolumeCapability{image}
	rr, err := d2.CreateVolume(ctx, restore)
	fi, serr := os.Stat(victim)
	if serr != nil {
		t.Fatal(serr)
	}
	if status.Code(err) != codes.DataLoss {
		t.Errorf("restore of a snapshot whose disk.img is a symlink: %v, want DataLoss", err)
	}
	if err == nil {
		lfi, _ := os.Lstat(d2.hostpath.vols.ImagePath(rr.GetVolume().GetVolumeId()))
		t.Errorf("restore of a snapshot whose disk.img is a symlink succeeded; the new volume's disk.img has mode %v", lfi.Mode())
	}
	if fi.Size() != int64(len("root:secret\n")) {
		t.Errorf("the node's file %s named by the planted symlink was grown to %d bytes by the restore", victim, fi.Size())
	}
}
