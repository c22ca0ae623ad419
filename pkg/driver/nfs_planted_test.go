package driver

import (
	"context"
	"encoding/json"
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
)

// plantRecord writes, as a tenant or someone with a shell on the server
// can, a volume record to the driver's taste into dir (a .hostpath-csi
// directory) under file name file.
func plantRecord(t *testing.T, dir, file string, rec nfs.VolumeRecord) {
	t.Helper()
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "volumes", file), string(data))
}

// A tenant of class A's volume team (onDelete: retain) makes a
// .hostpath-csi in its own volume, with a record of a delete to finish on
// subDir ns-b. Its data retained, an administrator sets class B up with
// share /export/team: refused, whatever the retained data holds. Before,
// the share passed ("its root already holds .hostpath-csi"), B ran on the
// tenant's records, and another controller's sweep removed B's namespace
// directory with every B volume in it.
func TestNFSShareOverRetainedDataIsRefusedWhateverTheDataHolds(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	aVol := e.createNFS(t, "pv-a", classA("ns-a", "team", ParamOnDelete, OnDeleteRetain))
	plantRecord(t, filepath.Join(e.export, "team", ids.HiddenDir), "0123456789abcdef.json", nfs.VolumeRecord{Version: 1,
		ID: "nfs1:" + testServer + ":/export/team:ns-b:0123456789abcdef", Name: "bogus", SubDir: "ns-b", OnDelete: OnDeleteDelete,
		Phase: nfs.PhaseDeleting, CreatedAt: time.Now().Add(-time.Hour), Exclusive: true})
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: aVol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	bParams := map[string]string{ParamServer: testServer, ParamShare: "/export/team", ParamSubDir: "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace: "ns-b", ParamPVCName: "db"}
	for _, d := range []*Driver{e.d, e.another(t)} {
		_, err := d.CreateVolume(ctx, nfsReq("pv-b1", bParams))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "retained") {
			t.Fatalf("class B over data retained from class A's volume, holding a tenant's .hostpath-csi: %v; want FAILED_PRECONDITION saying the data is retained", err)
		}
		if strings.Contains(err.Error(), "ns-a") || strings.Contains(err.Error(), aVol.GetVolumeId()) {
			t.Errorf("the refusal, which reaches class B's claims, names class A's namespace or volume: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.export, "team", "ns-b")); !os.IsNotExist(err) {
		t.Fatalf("class B made a volume in the retained data: %v", err)
	}
}

// A record of a delete whose subDir holds live volumes (written by hand,
// or by a tenant whose tree became a share's root) is not acted on: a
// sweep leaves those volumes' data. Before, it moved the parent directory,
// and every volume in it, to the trash.
func TestNFSSweepLeavesLiveVolumesBelowARecordsSubDir(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	b := e.createNFS(t, "pv-db", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}", ParamPVCNamespace, "ns-b", ParamPVCName, "db"))
	data := filepath.Join(e.export, "ns-b", "db", "b-data")
	writeFile(t, data, "B's data")
	hid := filepath.Join(e.export, ids.HiddenDir)
	forged := nfs.VolumeRecord{Version: 1, ID: "nfs1:" + testServer + ":/export:ns-b:0123456789abcdef", Name: "bogus", SubDir: "ns-b",
		OnDelete: OnDeleteDelete, Phase: nfs.PhaseDeleting, CreatedAt: time.Now().Add(-time.Hour), Exclusive: true}
	plantRecord(t, hid, "0123456789abcdef.json", forged)
	// The same record under another file name is no record at all.
	forged.ID = "nfs1:" + testServer + ":/export:ns-b:fedcba9876543210"
	plantRecord(t, hid, "0000000000000000.json", forged)

	d2 := e.another(t)
	d2.nfs.sweeps.age = time.Millisecond
	if _, err := d2.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: b.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	d2.nfs.sweeps.wg.Wait()
	d2.nfs.exports.WaitIdle()
	if got, err := os.ReadFile(data); err != nil || string(got) != "B's data" {
		t.Fatalf("a live volume's data after a sweep acted on a record of its parent directory: %q, %v", got, err)
	}
	_, err := d2.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: forged.ID[:len(forged.ID)-16] + "0123456789abcdef"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteVolume of the record of a parent of a live volume: %v; want FAILED_PRECONDITION", err)
	}
	if strings.Contains(err.Error(), "ns-b/db") || strings.Contains(err.Error(), b.GetVolumeId()) {
		t.Errorf("the refusal names the other volume: %v", err)
	}
}

// While the export above a share is busy (a caller gave up on one of its
// steps a moment ago), the share is not passed: its calls are UNAVAILABLE,
// nothing is written, and once the export answers the look is made and
// refuses it. Before, the look was skipped and the share passed for the
// life of the process, its records made inside a tenant's volume.
func TestNFSShareIsNotPassedWhileTheExportAboveIsBusy(t *testing.T) {
	// Not parallel: a short deadline of its own must not run out on a
	// machine busy with other tests.
	e := newNFSEnv(t, 10*time.Second)
	var slow atomic.Bool
	e.opts.BeforeFileOp = func(export, op string) error {
		if slow.Load() && export == testServer+":/export" && op == "read volume record" {
			time.Sleep(2 * time.Second)
		}
		return nil
	}
	e.restart(t)
	aVol := e.createNFS(t, "pv-a", classA("ns-a", "team"))
	slowEnds := time.Now().Add(2500 * time.Millisecond)
	t.Cleanup(func() { time.Sleep(time.Until(slowEnds)) }) // the slow step ends before the driver unmounts
	slow.Store(true)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := e.d.ControllerGetVolume(short, &csi.ControllerGetVolumeRequest{VolumeId: aVol.GetVolumeId()})
	cancel()
	slow.Store(false)
	if err == nil {
		t.Fatal("a call on the export above, given 100 ms for a 2 s step, succeeded")
	}
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-b1", classB()))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("class B inside class A's live volume, while the export above is busy: %v; want UNAVAILABLE", err)
	}
	if _, err := os.Stat(filepath.Join(e.export, "team", ids.HiddenDir)); !os.IsNotExist(err) {
		t.Fatalf("class B's records in class A's volume: %v", err)
	}
	time.Sleep(time.Until(slowEnds)) // the step ends; the export answers
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-b1", classB()))
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("class B inside class A's live volume, the export above answering again: %v; want FAILED_PRECONDITION", err)
	}
}

// A directory made at a new volume's subDir between the create's look
// for it and its mkdir (another share's root being made, say) is not
// taken, even empty: the create is FAILED_PRECONDITION and the directory
// left to whoever made it. Before, an empty one was taken.
func TestNFSCreateDoesNotTakeADirectoryMadeMeanwhile(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.opts.BeforeFileOp = func(_, op string) error {
		if op == "create race" {
			if err := os.Mkdir(filepath.Join(e.export, "race"), 0o755); err != nil && !os.IsExist(err) {
				return err
			}
		}
		return nil
	}
	e.restart(t)
	for _, try := range []string{"create", "its retry"} {
		_, err := e.d.CreateVolume(ctx, nfsReq("pv-race", nfsParamsFor(ParamSubDir, "race")))
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("%s, whose subDir was made by someone else just before its mkdir: %v; want FAILED_PRECONDITION", try, err)
		}
	}
	if _, err := os.Stat(filepath.Join(e.export, "race")); err != nil {
		t.Fatalf("the directory someone else made: %v; want it left", err)
	}
}
