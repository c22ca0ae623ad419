package driver

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// A controller alone (overlays/nfs) answers NodeGetCapabilities with no
// capability, as csi-resizer needs to start beside it, and nothing else of
// the node service.
func TestControllerAloneAnswersNodeCapabilities(t *testing.T) {
	e := newEnvWith(t, t.TempDir(), func(c *Config) { c.Node = false })
	sock := filepath.Join(t.TempDir(), "csi.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	e.d.Register(srv)
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	node := csi.NewNodeClient(conn)
	caps, err := node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 0 {
		t.Fatalf("NodeGetCapabilities of a controller alone: %v %v, want none", caps, err)
	}
	if _, err := node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("NodeGetInfo of a controller alone: %v, want UNIMPLEMENTED", err)
	}
	if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "x", TargetPath: "/x"}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("NodePublishVolume of a controller alone: %v, want UNIMPLEMENTED", err)
	}
}
