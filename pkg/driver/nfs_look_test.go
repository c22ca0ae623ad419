package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// One tenant deletes a few large volumes at once (each look for another
// share inside them made slow, as a tree of millions of entries on a real
// server is): another tenant's NFS delete, NFS clone and hostpath snapshot
// are answered as if nothing ran. The looks took the copy slots, and all
// three were ABORTED for as long as they ran.
func TestNFSOneTenantsLooksInsideVolumesHoldUpNoOtherTenant(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	var ended atomic.Bool
	e.opts.BeforeFileOp = func(export, op string) error {
		if strings.HasPrefix(op, "look inside evil") && !ended.Load() {
			time.Sleep(200 * time.Millisecond)
		}
		return nil
	}
	e.restart(t)
	t.Cleanup(func() {
		// The slow steps end before the driver closes and unmounts.
		ended.Store(true)
		time.Sleep(300 * time.Millisecond)
	})
	var evil []string
	for i := 0; i < 4; i++ {
		v := e.createNFS(t, fmt.Sprintf("pv-evil%d", i), nfsParamsFor(ParamSubDir, fmt.Sprintf("evil%d", i), ParamPVCNamespace, "ns-evil", ParamPVCName, fmt.Sprintf("e%d", i)))
		for j := 0; j < 30; j++ {
			if err := os.MkdirAll(filepath.Join(e.export, fmt.Sprintf("evil%d", i), fmt.Sprintf("d%02d", j)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		evil = append(evil, v.GetVolumeId())
	}
	victimParams := func(subDir, claim string) map[string]string {
		return nfsParamsFor(ParamSubDir, subDir, ParamPVCNamespace, "ns-victim", ParamPVCName, claim)
	}
	victim := e.createNFS(t, "pv-victim", victimParams("victim", "v1"))
	victim2 := e.createNFS(t, "pv-victim2", victimParams("victim2", "v2"))
	hp := e.create(t, "hp-victim")

	for _, id := range evil {
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := e.d.DeleteVolume(short, &csi.DeleteVolumeRequest{VolumeId: id})
		cancel()
		if status.Code(err) != codes.Aborted {
			t.Fatalf("delete of a volume whose look takes 6 s, given 100 ms = %v; want ABORTED (the look goes on)", err)
		}
	}
	within := func(what string, call func(context.Context) error) {
		t.Helper()
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		if err := call(c); err != nil {
			t.Errorf("%s while another tenant's looks run: %v; want it done", what, err)
		}
	}
	within("another tenant's NFS delete", func(c context.Context) error {
		_, err := e.d.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: victim.GetVolumeId()})
		return err
	})
	within("another tenant's NFS clone", func(c context.Context) error {
		req := nfsReq("pv-clone", victimParams("clone", "v3"))
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: victim2.GetVolumeId()}}}
		_, err := e.d.CreateVolume(c, req)
		return err
	})
	within("a hostpath snapshot", func(c context.Context) error {
		_, err := e.d.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: "snap-hp", SourceVolumeId: hp})
		return err
	})
	if _, err := os.Stat(filepath.Join(e.export, "victim")); !os.IsNotExist(err) {
		t.Errorf("the other tenant's deleted volume's directory: %v; want it gone", err)
	}
}

// A delete refused because the tree holds another share's records is
// answered FAILED_PRECONDITION at each retry without walking the tree
// again: the provisioner retries for ever, and each walk reads the whole
// tree. Before, every second retry started a fresh walk.
func TestNFSRefusedDeleteIsNotWalkedAgainAtEachRetry(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	var walks atomic.Int32
	e.opts.BeforeFileOp = func(export, op string) error {
		if strings.HasPrefix(op, "look inside held: open") {
			walks.Add(1)
		}
		return nil
	}
	e.restart(t)
	v := e.createNFS(t, "pv-held", nfsParamsFor(ParamSubDir, "held"))
	if err := os.MkdirAll(filepath.Join(e.export, "held", "deep", ids.HiddenDir), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "held/deep") {
			t.Fatalf("delete %d of a volume holding another share's records = %v; want FAILED_PRECONDITION naming held/deep", i+1, err)
		}
	}
	if n := walks.Load(); n != 1 {
		t.Fatalf("5 deletes of a refused tree walked it %d times; want once (the refusal is the answer for a while)", n)
	}
	// Once the backoff has passed, the tree is looked at again: the
	// refusal lifted, the delete goes through.
	e.d.jobs.lookBackoff = 0
	if err := os.RemoveAll(filepath.Join(e.export, "held", "deep", ids.HiddenDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
		t.Fatalf("delete after the share's records were removed and the backoff passed: %v", err)
	}
	if n := walks.Load(); n != 2 {
		t.Fatalf("walks: %d; want 2", n)
	}
}

// On an export that squashes root, a tenant's directory of mode 0700 is
// unreadable to the controller: the delete is FAILED_PRECONDITION naming
// the directory and what to do, the volume stays, and a sweep goes on
// past such a delete to the others. Before, it was INTERNAL for ever, and
// the sweep stopped there.
func TestNFSDeleteOfATreeTheDriverMayNotReadSaysWhatToDo(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.opts.BeforeFileOp = func(_, op string) error {
		if strings.HasPrefix(op, "look inside") {
			return testutil.SquashRootOnThisThread()
		}
		return nil
	}
	e.restart(t)
	v := e.createNFS(t, "pv-private", nfsParamsFor(ParamSubDir, "private"))
	dir := filepath.Join(e.export, "private", "home")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 12345, 12345); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "private/home") || !strings.Contains(err.Error(), "chmod") {
		t.Fatalf("delete of a tree with a directory the driver may not read: %v; want FAILED_PRECONDITION naming private/home and what to do", err)
	}
	if _, err := os.Stat(filepath.Join(e.export, "private", "home")); err != nil {
		t.Fatalf("the volume's data after the refused delete: %v", err)
	}

	// Both deletes interrupted (their records say deleting, an hour ago):
	// another controller's sweep finishes the one after the refused one.
	other := e.createNFS(t, "pv-other", nfsParamsFor(ParamSubDir, "zz-other"))
	for _, id := range []string{v.GetVolumeId(), other.GetVolumeId()} {
		markDeleting(t, e, id)
	}
	d2 := e.another(t)
	d2.nfs.sweeps.age = time.Millisecond
	if _, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: other.GetVolumeId()}); status.Code(err) != codes.Aborted && err != nil {
		t.Fatal(err)
	}
	d2.nfs.sweeps.wg.Wait()
	if _, err := os.Stat(filepath.Join(e.export, "zz-other")); !os.IsNotExist(err) {
		t.Fatalf("the sweep did not finish the delete after one it may not do: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.export, "private", "home")); err != nil {
		t.Fatalf("the refused volume's data after the sweep: %v", err)
	}
}

// markDeleting rewrites an NFS volume's record as a delete a kill cut
// short an hour ago.
func markDeleting(t *testing.T, e *nfsEnv, id string) {
	t.Helper()
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(e.export, ids.HiddenDir, "volumes", v.Key+".json")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	rec["phase"] = nfs.PhaseDeleting
	rec["createdAt"] = time.Now().Add(-time.Hour)
	if data, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// A sweep finishing deletes a kill cut short starts the looks inside all
// their trees before it waits for any: two namespaces' slow looks run side
// by side. Before, the sweep waited for each look in turn.
func TestNFSSweepLooksInsideTreesSideBySide(t *testing.T) {
	e := newNFSEnv(t, 30*time.Second)
	var ended atomic.Bool
	e.opts.BeforeFileOp = func(_, op string) error {
		if strings.HasPrefix(op, "look inside slow") && !ended.Load() {
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	e.restart(t)
	t.Cleanup(func() { ended.Store(true); time.Sleep(200 * time.Millisecond) })
	var vols []string
	for i := 1; i <= 2; i++ {
		sub := fmt.Sprintf("slow%d", i)
		v := e.createNFS(t, "pv-"+sub, nfsParamsFor(ParamSubDir, sub, ParamPVCNamespace, fmt.Sprintf("ns-%d", i), ParamPVCName, "c"))
		for j := 0; j < 5; j++ {
			if err := os.MkdirAll(filepath.Join(e.export, sub, fmt.Sprintf("d%d", j)), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		vols = append(vols, v.GetVolumeId())
	}
	for _, id := range vols {
		markDeleting(t, e, id)
	}
	d2 := e.another(t)
	d2.nfs.sweeps.age = time.Millisecond
	start := time.Now()
	if _, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vols[0]}); err != nil && status.Code(err) != codes.Aborted {
		t.Fatal(err)
	}
	d2.nfs.sweeps.wg.Wait()
	took := time.Since(start)
	for i := 1; i <= 2; i++ {
		if _, err := os.Stat(filepath.Join(e.export, fmt.Sprintf("slow%d", i))); !os.IsNotExist(err) {
			t.Fatalf("slow%d after the sweep: %v; want it deleted", i, err)
		}
	}
	// Each look: 6 directories, 2 slowed steps each (a read, an open) and
	// the end of each read: about 1.7 s; one after the other, 3.4 s.
	t.Logf("sweep of two deletes with slow looks: %s", took.Round(time.Millisecond))
	if took > 2800*time.Millisecond {
		t.Fatalf("the sweep took %s for two looks of about 1.7 s each; want them side by side", took.Round(time.Millisecond))
	}
}
