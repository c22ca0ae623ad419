package driver

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Review 2: onDelete: retain keeps team-e/db on the export with no record
// and no index entry; a claim of another tenant whose subDir is team-e is
// then created over it and adopts the directory: its pods read the
// retained data of the other namespace, and the original claim, coming
// back for its retained data, is refused (inside another volume).
func TestReview2RetainedNestedDataIsAdoptedByTheParent(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	inner := e.createNFS(t, "pv-inner", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "team-e", ParamPVCName, "db", ParamOnDelete, OnDeleteRetain))
	writeFile(t, filepath.Join(e.export, "team-e", "db", "secret"), "retained data")
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: inner.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-mallory", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}",
		ParamPVCNamespace, "mallory", ParamPVCName, "team-e")))
	if err == nil {
		if _, serr := os.Stat(filepath.Join(e.export, "team-e", "db", "secret")); serr == nil {
			t.Errorf("a claim of namespace mallory got subDir team-e, which holds team-e/db retained from namespace team-e: its pods read that data")
		}
	}
}

// Review 2: the nested check and the claims it reads are made atomic by
// this process's locks only. Two controllers on one export (the hostpath
// overlay's controller and overlays/nfs's, each with a StorageClass on the
// same server, or a Deployment's old and new pod) check, then write: a
// create of team-f, paused between its check and its claim, and a create
// of team-f/db in the other controller both succeed.
func TestReview2NestedCreatesInTwoControllers(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	var armed atomic.Bool
	paused, resume := make(chan struct{}), make(chan struct{})
	e.opts.BeforeFileOp = func(export, op string) error {
		if op == "write subdirectory index" && armed.CompareAndSwap(true, false) {
			close(paused)
			<-resume
		}
		return nil
	}
	e.restart(t)
	d2 := e.another(t)
	armed.Store(true)
	outerErr := make(chan error, 1)
	go func() {
		_, err := e.d.CreateVolume(ctx, nfsReq("pv-outer", nfsParamsFor(ParamSubDir, "team-f")))
		outerErr <- err
	}()
	<-paused
	_, innerErr := d2.CreateVolume(ctx, nfsReq("pv-inner", nfsParamsFor(ParamSubDir, "team-f/db")))
	close(resume)
	if err := <-outerErr; err == nil && innerErr == nil {
		t.Errorf("team-f (controller 1) and team-f/db (controller 2) were both created: team-f's tenant reads and deletes team-f/db's data")
	}
}
