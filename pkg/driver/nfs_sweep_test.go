package driver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// The trash purge a process's first use of an export runs, and the
// background purge after a delete, run each step under the guard: a server
// that stops answering during the purge (here: the export's filesystem is
// frozen, so unlinks block as on a dead hard mount) costs one timeout, and
// Driver.Close, which waits for the sweeps at most the timeout, returns:
// a graceful shutdown stays graceful.
func TestTrashPurgeOnAServerThatStopsAnsweringDoesNotHoldClose(t *testing.T) {
	testutil.RequireCommand(t, "fsfreeze")
	e := newNFSEnv(t, 2*time.Second)
	mnt := testutil.LoopFS(t, "ext4", 256)
	exp := e.standin.AddExport(t, "frozen.example", testShare, filepath.Join(mnt, "export"))
	params := map[string]string{ParamServer: "frozen.example", ParamShare: testShare}

	d1 := e.another(t)
	if _, err := d1.CreateVolume(ctx, nfsReq("pv-1", params)); err != nil {
		t.Fatal(err)
	}
	d1.nfs.sweeps.wg.Wait()
	d1.nfs.exports.WaitIdle()
	// What a delete killed mid-purge left.
	left := filepath.Join(exp, ids.HiddenDir, "trash", "v-0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(left, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20000; i++ {
		if err := os.WriteFile(filepath.Join(left, fmt.Sprintf("f%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var armed atomic.Bool
	armed.Store(true)
	thaw := func() { _ = exec.Command("fsfreeze", "-u", mnt).Run() }
	t.Cleanup(thaw) // runs before d1's Close and the loop filesystem's unmount
	// The server stops answering right after the process's first use of
	// the export has started its sweep.
	opts := e.opts
	opts.BeforeFileOp = func(export, op string) error {
		if export == "frozen.example:"+testShare && op == "read name index" && armed.CompareAndSwap(true, false) {
			if out, err := exec.Command("fsfreeze", "-f", mnt).CombinedOutput(); err != nil {
				return fmt.Errorf("fsfreeze: %v %s", err, out)
			}
		}
		return nil
	}
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	cfg := Config{DriverName: DefaultDriverName, NodeID: "node-3", StateDir: filepath.Join(dir, "state"), DataDir: filepath.Join(dir, "data"),
		Controller: true, Node: true, MaxVolumeSize: 1 << 40, NFS: opts}
	cfg.NFS.MountDir = filepath.Join(dir, "nfs-mounts")
	d2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d2.CreateVolume(ctx, nfsReq("pv-2", params))
	t.Logf("CreateVolume on the frozen export: %v", err)

	closed := make(chan struct{})
	go func() { d2.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		buf := make([]byte, 1<<20)
		t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
		t.Errorf("Driver.Close has not returned 30s after the export's server stopped answering (--nfs-timeout 2s): the trash purge of the first use's sweep runs outside the guard and Close waits for it without a bound")
	}
	thaw()
	<-closed
}
