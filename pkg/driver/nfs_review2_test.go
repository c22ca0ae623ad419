package driver

import (
	"sync/atomic"
	"testing"
	"time"
)

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
