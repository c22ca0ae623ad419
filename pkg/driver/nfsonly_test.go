package driver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// An NFS-only controller (overlays/nfs runs it in a Deployment with an
// emptyDir) refuses a class without a server instead of making a directory
// in its own pod that no node could mount, and still serves NFS classes.
func TestNFSOnlyRefusesHostpathClasses(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.d.Close()
	cfg := e.config()
	cfg.NFS = e.opts
	cfg.NFSOnly = true
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	ctx := context.Background()
	_, err = d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "plain", VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "NFS classes only") {
		t.Fatalf("hostpath class on an NFS-only driver: got %v, want InvalidArgument saying it serves NFS classes only", err)
	}
	resp, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "shared", Parameters: nfsParamsFor(), VolumeCapabilities: []*csi.VolumeCapability{rwx}})
	if err != nil {
		t.Fatalf("NFS class on an NFS-only driver: %v", err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
}
