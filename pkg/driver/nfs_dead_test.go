package driver

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A dead server never hangs the driver: a mount that does not finish and a
// file operation that does not return both fail with DEADLINE_EXCEEDED
// naming the server after the configured timeout; later calls on the same
// export fail at once (UNAVAILABLE) while the stuck operation is still in
// the kernel; calls on other exports and hostpath volumes go on meanwhile.
func TestNFSDeadServer(t *testing.T) {
	e := newNFSEnv(t, time.Second)
	e.standin.AddExport(t, "slow.example", "/export", filepath.Join(e.dir, "exports", "slow"))
	e.standin.AddExport(t, "dead.example", "/export", filepath.Join(e.dir, "exports", "dead"))
	e.d.Close()
	unblock := make(chan struct{})
	var hanging atomic.Bool
	e.opts.BeforeFileOp = func(export, op string) error {
		if export == "slow.example:/export" && hanging.Load() {
			<-unblock
		}
		return nil
	}
	e.startNFS(t)
	defer func() {
		select {
		case <-unblock:
		default:
			close(unblock)
		}
	}()
	slow := map[string]string{ParamServer: "slow.example", ParamShare: "/export"}
	e.createNFS(t, "before", slow)

	// A mount that never finishes (mount.nfs against a dead server).
	e.standin.Hang("dead.example")
	_, err := e.d.CreateVolume(ctx, nfsReq("on-dead", map[string]string{ParamServer: "dead.example", ParamShare: "/export"}))
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "dead.example") {
		t.Fatalf("create on a dead server: %v; want DeadlineExceeded naming dead.example", err)
	}
	// Not tried again at once: the next call fails without a mount.
	mounts := len(e.standin.Calls())
	_, err = e.d.CreateVolume(ctx, nfsReq("on-dead-2", map[string]string{ParamServer: "dead.example", ParamShare: "/export"}))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "dead.example") {
		t.Fatalf("second create on a dead server: %v; want Unavailable naming dead.example", err)
	}
	if n := len(e.standin.Calls()); n != mounts {
		t.Fatalf("the second create on a dead server mounted again: %+v", e.standin.Calls()[mounts:])
	}

	// A file operation that never returns (a hard mount of a server that
	// went away after the mount).
	hanging.Store(true)
	_, err = e.d.CreateVolume(ctx, nfsReq("stuck", slow))
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "slow.example") {
		t.Fatalf("create with a stuck file operation: %v; want DeadlineExceeded naming slow.example", err)
	}
	// The stuck operation is still blocked (unblock is open): the same
	// export fails at once...
	_, err = e.d.CreateVolume(ctx, nfsReq("stuck-2", slow))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "slow.example") {
		t.Fatalf("second create on the stuck export: %v; want Unavailable naming slow.example", err)
	}
	// ...while other exports and hostpath volumes are served.
	e.create(t, "hostpath-meanwhile")
	healthy := e.createNFS(t, "healthy-meanwhile", nfsParamsFor())
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: healthy.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}

	// The server answers again: the stuck operation returns, the export
	// is served again.
	hanging.Store(false)
	close(unblock)
	for {
		_, err := e.d.CreateVolume(ctx, nfsReq("after", slow))
		if err == nil {
			break
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("create after the server came back: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if m := testutil.MountsUnder(t, filepath.Join(e.dir, "exports")); len(m) != 0 {
		t.Fatalf("mounts on the exports: %v", m)
	}
}

// csi-provisioner gives each call 10 s, far less than the NFS timeout: a
// call that gives up on a mount of a dead server does not kill it, and
// does not leave the export looking healthy. Until the mount ends (at the
// timeout at most), the retries fail at once with UNAVAILABLE naming the
// server, without running mount.nfs again.
func TestNFSCallerDeadlineShorterThanTimeout(t *testing.T) {
	e := newNFSEnv(t, 3*time.Second)
	e.standin.AddExport(t, "dead.example", "/export", filepath.Join(e.dir, "exports", "dead"))
	e.standin.Hang("dead.example")
	dead := map[string]string{ParamServer: "dead.example", ParamShare: "/export"}

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := e.d.CreateVolume(short, nfsReq("pv-1", dead))
	cancel()
	if err == nil {
		t.Fatal("create on a dead server succeeded")
	}
	mounts := len(e.standin.Calls())
	for _, name := range []string{"pv-1", "pv-2"} {
		_, err = e.d.CreateVolume(ctx, nfsReq(name, dead))
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "dead.example") {
			t.Errorf("retry of %s after the caller gave up: %v; want Unavailable naming dead.example", name, err)
		}
	}
	if n := len(e.standin.Calls()); n != mounts {
		t.Errorf("retries ran mount.nfs again while the first mount still hung: %+v", e.standin.Calls()[mounts:])
	}
}
