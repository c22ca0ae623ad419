package driver

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var ctx = context.Background()

type testEnv struct {
	d        *Driver
	dir      string
	stateDir string
	dataDir  string
	// tweak, when set, changes the configuration of every (re)start.
	tweak func(*Config)
}

func newEnv(t testing.TB) *testEnv {
	t.Helper()
	dir := t.TempDir()
	e := &testEnv{dir: dir, stateDir: filepath.Join(dir, "state"), dataDir: filepath.Join(dir, "data")}
	e.start(t)
	t.Cleanup(func() { e.d.Close() })
	return e
}

// newEnvWith is a driver on dir (state and data under it) whose
// configuration tweak changes, at every (re)start.
func newEnvWith(t testing.TB, dir string, tweak func(*Config)) *testEnv {
	t.Helper()
	e := &testEnv{dir: dir, stateDir: filepath.Join(dir, "state"), dataDir: filepath.Join(dir, "data"), tweak: tweak}
	e.start(t)
	t.Cleanup(func() { e.d.Close() })
	return e
}

func (e *testEnv) config() Config {
	c := Config{DriverName: DefaultDriverName, NodeID: "node-1", StateDir: e.stateDir, DataDir: e.dataDir,
		Controller: true, Node: true, MaxVolumeSize: 1 << 40}
	if e.tweak != nil {
		e.tweak(&c)
	}
	return c
}

// start (re)starts the driver on the same directories, as a restart would.
func (e *testEnv) start(t testing.TB) {
	t.Helper()
	d, err := New(e.config())
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
}

func (e *testEnv) restart(t *testing.T) {
	t.Helper()
	if err := e.d.Close(); err != nil {
		t.Fatal(err)
	}
	e.start(t)
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
	}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

var blockCap = &csi.VolumeCapability{AccessMode: rwo.AccessMode, AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}

func createReq(name string, size int64) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}}
}

func (e *testEnv) create(t testing.TB, name string) string {
	t.Helper()
	resp, err := e.d.CreateVolume(ctx, createReq(name, 1<<20))
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return resp.GetVolume().GetVolumeId()
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
}
