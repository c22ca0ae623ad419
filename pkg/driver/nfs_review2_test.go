package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

func review2Hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Review 2: an export an older driver used (no nested index yet) with one
// damaged entry in subdirs/ (a truncated file, a disk error): the first
// use by a newer driver indexes the existing volumes, fails on that one
// entry, and with it every call on the export, unrelated ones included, at
// every use: a record that is corrupt is left out of listings (d5bb1e2),
// the same damage in the index takes the whole export down.
func TestReview2CorruptSubDirEntryTakesTheExportDown(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	good := e.createNFS(t, "pv-good", nfsParamsFor(ParamSubDir, "good"))
	e.createNFS(t, "pv-damaged", nfsParamsFor(ParamSubDir, "damaged"))
	e.d.nfsSweep.wg.Wait()
	// What an older driver left: no nested index; one index entry damaged.
	if err := os.RemoveAll(filepath.Join(e.export, ids.HiddenDir, "nested")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.export, ids.HiddenDir, "subdirs", review2Hash("damaged")), []byte("{trunc"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := e.another(t)
	if _, err := d2.CreateVolume(ctx, nfsReq("pv-fresh", nfsParamsFor(ParamSubDir, "fresh"))); err != nil {
		t.Errorf("CreateVolume of an unrelated subDir on an export with one damaged index entry: %v", err)
	}
	if _, err := d2.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: good.GetVolumeId()}); err != nil {
		t.Errorf("DeleteVolume of an unrelated volume on an export with one damaged index entry: %v", err)
	}
}

// Review 2: one damaged entry of the nested index (a volume that may be
// long gone) refuses every create of the directory above it, forever,
// with DATA_LOSS; the nfsCheckSubDirFree comment says a corrupt entry is
// replaced by a new claim, but only an unparsable ID is skipped, an
// unreadable entry fails the whole check.
func TestReview2CorruptNestedEntryBlocksTheParent(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	e.createNFS(t, "pv-inner", nfsParamsFor(ParamSubDir, "team-d/db"))
	entry := filepath.Join(e.export, ids.HiddenDir, "nested", review2Hash("team-d"), review2Hash("team-d/db"))
	if _, err := os.Stat(entry); err != nil {
		t.Fatalf("nested index entry not where expected: %v", err)
	}
	// The inner volume goes, its entry is damaged instead of removed
	// (a kill mid-way cannot do this, a disk or a hand can).
	resp, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(resp.GetEntries()) != 1 {
		t.Fatalf("ListVolumes: %v %v", resp, err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetEntries()[0].GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(entry), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entry, []byte("\x00\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.CreateVolume(ctx, nfsReq("pv-team", nfsParamsFor(ParamSubDir, "team-d"))); err != nil {
		t.Errorf("CreateVolume of team-d, whose only nested entry is damaged and names no live volume: %v", err)
	}
}

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
