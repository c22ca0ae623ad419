package driver

// Reproductions of the adversarial review of the NFS backend (issue 10).
// Each test asserts what a user should see; they fail on the code as
// reviewed.

import (
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

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
