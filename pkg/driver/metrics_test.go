package driver

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func wantMetric(t *testing.T, body, pattern string) {
	t.Helper()
	if !regexp.MustCompile(`(?m)^` + pattern + `$`).MatchString(body) {
		t.Errorf("no metric line matches %s", pattern)
	}
}

// Calls made over the socket are counted by method and code with their
// latency; volumes and snapshots by phase, provisioned bytes and copies by
// mechanism are served; start-up's reconcile actions are counted.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(e.dir, "csi.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := e.d.NewGRPCServer()
	go srv.Serve(l)
	defer srv.Stop()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl := csi.NewControllerClient(conn)

	var id string
	for _, name := range []string{"a", "b"} {
		r, err := ctrl.CreateVolume(ctx, createReq(name, 3<<20))
		if err != nil {
			t.Fatal(err)
		}
		id = r.GetVolume().GetVolumeId()
	}
	os.WriteFile(filepath.Join(e.d.hostpath.vols.Path(id), "f"), make([]byte, 4096), 0o644)
	if _, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "bad"}); err == nil {
		t.Fatal("a create without capabilities succeeded")
	}
	s, err := ctrl.CreateSnapshot(ctx, snapReq("s", id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.CreateVolume(ctx, fromSnapshot("r", 0, s.GetSnapshot().GetSnapshotId())); err != nil {
		t.Fatal(err)
	}

	body := scrape(t, e.d)
	wantMetric(t, body, `csi_plugin_operations_seconds_count\{driver_name="hostpath-csi.github.io",grpc_status_code="OK",method_name="/csi.v1.Controller/CreateVolume"\} 3`)
	wantMetric(t, body, `csi_plugin_operations_seconds_count\{driver_name="hostpath-csi.github.io",grpc_status_code="InvalidArgument",method_name="/csi.v1.Controller/CreateVolume"\} 1`)
	wantMetric(t, body, `hostpath_csi_volumes\{kind="persistent",phase="ready"\} 3`)
	wantMetric(t, body, `hostpath_csi_volumes\{kind="inline",phase="ready"\} 0`)
	wantMetric(t, body, `hostpath_csi_snapshots\{phase="ready"\} 1`)
	wantMetric(t, body, `hostpath_csi_provisioned_bytes 9\.437184e\+06`)
	wantMetric(t, body, `hostpath_csi_copy_duration_seconds_count\{mechanism="(copy|reflink|btrfs-snapshot)",operation="snapshot"\} 1`)
	wantMetric(t, body, `hostpath_csi_copy_duration_seconds_count\{mechanism="(copy|reflink|btrfs-snapshot)",operation="restore"\} 1`)
	wantMetric(t, body, `hostpath_csi_copies_in_progress 0`)
	wantMetric(t, body, `hostpath_csi_data_filesystem_bytes\{kind="available"\} [0-9.e+]+`)

	os.MkdirAll(filepath.Join(e.dataDir, "volumes", "stray"), 0o700)
	e.restart(t)
	wantMetric(t, scrape(t, e.d), `hostpath_csi_reconcile_actions_total\{action="quarantined"\} 1`)
}
