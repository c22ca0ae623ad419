package driver

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

const (
	testServer = "nfs.example"
	testShare  = "/export"
)

// nfsEnv is a driver whose NFS exports are local directories behind the
// bind-mounting stand-in (this kernel has no NFS client).
type nfsEnv struct {
	*testEnv
	standin *testutil.NFSStandIn
	export  string // local directory behind testServer:testShare
	opts    nfs.Options
}

func newNFSEnv(t *testing.T, timeout time.Duration) *nfsEnv {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	e := &nfsEnv{testEnv: &testEnv{dir: dir, stateDir: filepath.Join(dir, "state"), dataDir: filepath.Join(dir, "data")},
		standin: testutil.NewNFSStandIn()}
	e.export = e.standin.AddExport(t, testServer, testShare, filepath.Join(dir, "exports", "one"))
	// The kernel's NFS client refuses renameat2 flags: every delete,
	// archive, snapshot, restore and clone here takes the path it takes
	// on real NFS.
	e.opts = nfs.Options{Mounter: e.standin, Timeout: timeout, MountDir: filepath.Join(dir, "nfs-mounts"), RefuseRenameFlags: true}
	e.startNFS(t)
	t.Cleanup(func() { e.d.Close() })
	return e
}

func (e *nfsEnv) startNFS(t *testing.T) {
	t.Helper()
	cfg := e.config()
	cfg.NFS = e.opts
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
}

// another starts a second driver on the same exports with its own, empty
// state and mount directories: the controller Deployment moved to another
// node.
func (e *nfsEnv) another(t *testing.T) *Driver {
	t.Helper()
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	cfg := Config{DriverName: DefaultDriverName, NodeID: "node-2", StateDir: filepath.Join(dir, "state"), DataDir: filepath.Join(dir, "data"),
		Controller: true, Node: true, MaxVolumeSize: 1 << 40, NFS: e.opts}
	cfg.NFS.MountDir = filepath.Join(dir, "nfs-mounts")
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

var rwx = mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)

func nfsParamsFor(extra ...string) map[string]string {
	p := map[string]string{ParamServer: testServer, ParamShare: testShare}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

func nfsReq(name string, params map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwx},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, Parameters: params}
}

func (e *nfsEnv) createNFS(t *testing.T, name string, params map[string]string) *csi.Volume {
	t.Helper()
	resp, err := e.d.CreateVolume(ctx, nfsReq(name, params))
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return resp.GetVolume()
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// restart restarts the driver on the same directories and exports.
func (e *nfsEnv) restart(t *testing.T) {
	t.Helper()
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}
	e.startNFS(t)
}
