package driver

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// An export an older driver used (no nested index yet) with one damaged
// entry in subdirs/ (a truncated file, a disk error): the first use by a
// newer driver indexes the existing volumes and leaves that one entry out
// (logged), as a listing leaves a corrupt record out; the export, and
// unrelated calls on it, go on working.
func TestCorruptSubDirEntryDoesNotTakeTheExportDown(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	good := e.createNFS(t, "pv-good", nfsParamsFor(ParamSubDir, "good"))
	e.createNFS(t, "pv-damaged", nfsParamsFor(ParamSubDir, "damaged"))
	e.d.nfs.sweeps.wg.Wait()
	// What an older driver left: no nested index; one index entry damaged.
	if err := os.RemoveAll(filepath.Join(e.export, ids.HiddenDir, "nested")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.export, ids.HiddenDir, "subdirs", indexEntryName("damaged")), []byte("{trunc"), 0o600); err != nil {
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

// One damaged entry of the nested index (a volume that may be long gone)
// names no volume: it is treated as absent (logged) and does not refuse
// every create of the directory above it, forever.
func TestCorruptNestedEntryDoesNotBlockTheParent(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.createNFS(t, "pv-inner", nfsParamsFor(ParamSubDir, "team-d/db"))
	entry := filepath.Join(e.export, ids.HiddenDir, "nested", indexEntryName("team-d"), indexEntryName("team-d/db"))
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
