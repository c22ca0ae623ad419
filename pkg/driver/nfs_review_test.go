package driver

// Reproductions of the adversarial review of the NFS backend (issue 10).
// Each test asserts what a user should see; they fail on the code as
// reviewed.

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

// The driver's own directory is reached by paths, following symlinks: who
// can write there (another class whose share or subDir is the export's
// root or holds it, another client of the export) steers the driver's
// removals and record writes out of the export. A symlink planted for
// .hostpath-csi/tmp makes the first use of the export remove every regular
// file older than the timeout in the directory it points at.
func TestReviewNFSHiddenDirSymlinkNotFollowed(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-1", nfsParamsFor())
	e.d.nfs.WaitIdle()

	victim := filepath.Join(e.dir, "outside-the-export")
	writeFile(t, filepath.Join(victim, "precious"), "not the driver's")
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(victim, "precious"), old, old); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(e.export, ids.HiddenDir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, tmp); err != nil {
		t.Fatal(err)
	}
	// A new process (a moved controller) mounts the export: layout sweeps tmp/.
	d2 := e.another(t)
	_, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vol.GetVolumeId()})
	t.Logf("ControllerGetVolume through a planted symlink: %v", err)
	if _, err := os.Stat(filepath.Join(victim, "precious")); err != nil {
		t.Errorf("a file outside the export, reached through a symlink planted at %s/tmp, was removed: %v", ids.HiddenDir, err)
	}
}

// CSI: a CreateVolume whose name is taken by a volume with other parameters
// is ALREADY_EXISTS. The NFS name index is per export, so the same name on
// another export (or a hostpath volume of that name) is a second volume.
func TestReviewNFSNameIsOneVolumeAcrossExports(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	e.standin.AddExport(t, "nfs2.example", testShare, filepath.Join(e.dir, "exports", "two"))
	first := e.createNFS(t, "pv-same", nfsParamsFor())
	p2 := nfsParamsFor()
	p2[ParamServer] = "nfs2.example"
	resp, err := e.d.CreateVolume(ctx, nfsReq("pv-same", p2))
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume(pv-same) on another export: %v (volume %s), want AlreadyExists: volume %s has that name",
			err, resp.GetVolume().GetVolumeId(), first.GetVolumeId())
	}
	// The same across backends: the contract says a name is one volume
	// whatever its class.
	hp := e.create(t, "pv-host")
	resp, err = e.d.CreateVolume(ctx, nfsReq("pv-host", nfsParamsFor()))
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("CreateVolume(pv-host) of an NFS class: %v (volume %s), want AlreadyExists: hostpath volume %s has that name",
			err, resp.GetVolume().GetVolumeId(), hp)
	}
}
