package driver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
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

// A sweep undoes a creating snapshot only when nobody has vouched for it
// for nfsSweepAge: every node copies snapshots of its hostpath volumes to
// the export, in jobs the sweeping process does not know of, and such a
// job refreshes its record's heartbeat (UpdatedAt) while it copies. A
// record old by its creation but with a fresh heartbeat is a long copy in
// flight and stays; one whose heartbeat is stale, or that has none and is
// old, is undone.
func TestNFSSweepOfCreatingSnapshotsByHeartbeat(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	x, err := e.d.nfs.useExport(ctx, testServer, testShare)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Release()
	e.d.nfs.sweeps.wg.Wait() // e.d's own sweep, before the records below exist

	now := time.Now().UTC()
	cases := []struct {
		name               string
		created, heartbeat time.Duration // ago; heartbeat 0: none
		kept               bool
	}{
		{"fresh heartbeat of a long copy", 2 * time.Hour, time.Minute, true},
		{"stale heartbeat", 2 * time.Hour, 20 * time.Minute, false},
		{"no heartbeat, old", 2 * time.Hour, 0, false},
		{"no heartbeat, young", time.Minute, 0, true},
	}
	keys := make([]string, len(cases))
	for i, c := range cases {
		id, key, err := e.d.nfs.nfsNewSnapshotKey(ctx, x, testServer, testShare)
		if err != nil {
			t.Fatal(err)
		}
		rec := &nfs.SnapshotRecord{ID: id, Name: fmt.Sprintf("snap-%d", i), SourceVolumeID: "hpv1-0000000000000000000000000000000f",
			Phase: nfs.PhaseCreating, CreatedAt: now.Add(-c.created), SourceFamily: nfs.FamilyHostpath, SourceNode: "node-9"}
		if c.heartbeat != 0 {
			rec.UpdatedAt = now.Add(-c.heartbeat)
		}
		if err := e.d.nfs.nfsRecordNewSnapshot(ctx, x, rec, key); err != nil {
			t.Fatal(err)
		}
		keys[i] = key
	}

	d2 := e.another(t) // another node's driver, whose first use sweeps
	x2, err := d2.nfs.useExport(ctx, testServer, testShare)
	if err != nil {
		t.Fatal(err)
	}
	x2.Release()
	d2.nfs.sweeps.wg.Wait()
	for i, c := range cases {
		_, err := x.GetSnapshot(ctx, keys[i])
		switch {
		case c.kept && err != nil:
			t.Errorf("%s: swept (%v); want it left to the job that copies it", c.name, err)
		case !c.kept && !errors.Is(err, nfs.ErrNotFound):
			t.Errorf("%s: %v after the sweep; want it undone", c.name, err)
		}
	}
}
