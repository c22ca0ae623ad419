package driver

import (
	"sync/atomic"
	"testing"
	"time"
)

// The in-process locks do not reach another controller on the same export
// (the hostpath overlay's controller and overlays/nfs's, each with a
// StorageClass on the same server, or a Deployment's old and new pod): a
// create of team-f, paused between its check and its claim, and a create
// of team-f/db (or of team-f, another name) in the other controller never
// both succeed: each claims first, then reads the claims around it.
func TestNestedOrIdenticalCreatesInTwoControllers(t *testing.T) {
	for _, other := range []string{"team-f/db", "team-f"} {
		t.Run(other, func(t *testing.T) { testCreatesInTwoControllers(t, other) })
	}
}

func testCreatesInTwoControllers(t *testing.T, other string) {
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
	_, innerErr := d2.CreateVolume(ctx, nfsReq("pv-inner", nfsParamsFor(ParamSubDir, other)))
	close(resume)
	if err := <-outerErr; err == nil && innerErr == nil {
		t.Errorf("team-f (controller 1) and %s (controller 2) were both created: one tenant reads and deletes the other's data", other)
	}
}
