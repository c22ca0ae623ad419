package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// onDelete: retain keeps team-e/db on the export with no record; its
// subdirectory claim stays, marked retained. A claim of another tenant
// whose subDir is team-e (around the retained data) is refused, so is one
// inside retained data, and a claim of the same subDir takes the retained
// data over, as docs/nfs.md documents.
func TestRetainedNestedDataIsNotAdoptedByAnotherSubDir(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	inner := e.createNFS(t, "pv-inner", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "team-e", ParamPVCName, "db", ParamOnDelete, OnDeleteRetain))
	writeFile(t, filepath.Join(e.export, "team-e", "db", "secret"), "retained data")
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: inner.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-mallory", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}",
		ParamPVCNamespace, "mallory", ParamPVCName, "team-e")))
	if status.Code(err) != codes.FailedPrecondition || strings.Contains(err.Error(), "team-e/db") {
		t.Errorf("a claim of namespace mallory with subDir team-e, which holds team-e/db retained from namespace team-e: %v, want FAILED_PRECONDITION naming not team-e/db", err)
	}
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-below", nfsParamsFor(ParamSubDir, "team-e/db/x")))
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a claim with subDir team-e/db/x, inside retained team-e/db: %v, want FAILED_PRECONDITION", err)
	}
	// The claim coming back for its retained data gets it.
	back := e.createNFS(t, "pv-back", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "team-e", ParamPVCName, "db"))
	if got, err := os.ReadFile(filepath.Join(e.export, "team-e", "db", "secret")); err != nil || string(got) != "retained data" {
		t.Errorf("retained data after a volume of the same subDir took it over: %q %v", got, err)
	}
	// Once it is deleted (onDelete: delete), the parent is free.
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: back.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	e.d.nfs.exports.WaitIdle()
	if _, err := e.d.CreateVolume(ctx, nfsReq("pv-mallory", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}",
		ParamPVCNamespace, "mallory", ParamPVCName, "team-e"))); err != nil {
		t.Errorf("subDir team-e once the volume inside it is deleted: %v", err)
	}
}
