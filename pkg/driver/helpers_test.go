package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
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

// newEnvOn runs the driver with its state and data on the filesystem at dir.
func newEnvOn(t *testing.T, dir string) *testEnv {
	t.Helper()
	e := &testEnv{dir: dir, stateDir: filepath.Join(dir, "state"), dataDir: filepath.Join(dir, "data")}
	e.start(t)
	t.Cleanup(func() { e.d.Close() })
	return e
}

// cleanupUnder fails the test if a loop device or a mount of the driver's is
// left on the data filesystem at mnt (and removes them anyway).
func cleanupUnder(t *testing.T, mnt string) {
	testutil.CleanupLoopDevices(t, filepath.Join(mnt, "data"))
	testutil.CleanupMounts(t, filepath.Join(mnt, "kubelet"))
}

// kubeletPaths are where a kubelet stages and publishes a volume.
func kubeletPaths(e *testEnv, id string) (staging, target string) {
	return filepath.Join(e.dir, "kubelet", "staging", id), filepath.Join(e.dir, "kubelet", "pods", id, "mount")
}

func (e *testEnv) stageAndPublish(t *testing.T, id string, c *csi.VolumeCapability) (staging, target string) {
	t.Helper()
	staging, target = kubeletPaths(e, id)
	if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, c)); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	return staging, target
}

func (e *testEnv) unpublishAndUnstage(t *testing.T, id string) {
	t.Helper()
	staging, target := kubeletPaths(e, id)
	if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

func (e *testEnv) stage(t *testing.T, id, path string) {
	t.Helper()
	if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: path, VolumeCapability: rwo}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
}

func publishReq(id, staging, target string, ro bool, c *csi.VolumeCapability) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, Readonly: ro, VolumeCapability: c}
}

func snapReq(name, src string) *csi.CreateSnapshotRequest {
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src}
}

func fromSnapshot(name string, size int64, snapID string) *csi.CreateVolumeRequest {
	r := createReq(name, size)
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}}
	return r
}

func fromVolume(name string, size int64, volID string) *csi.CreateVolumeRequest {
	r := createReq(name, size)
	r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: volID}}}
	return r
}

// gate holds every copy job at its start until opened, and counts how many
// are held at once.
type gate struct {
	open    chan struct{}
	entered chan string
	mu      sync.Mutex
	inside  int
	most    int
	fail    error // returned instead of waiting, when set
}

func newGate(e *testEnv) *gate {
	g := &gate{open: make(chan struct{}), entered: make(chan string, 100)}
	e.d.beforeCopy = g.hook
	return g
}

func (g *gate) hook(ctx context.Context, id string) error {
	g.mu.Lock()
	g.inside++
	g.most = max(g.most, g.inside)
	fail := g.fail
	g.mu.Unlock()
	defer func() { g.mu.Lock(); g.inside--; g.mu.Unlock() }()
	g.entered <- id
	if fail != nil {
		return fail
	}
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// peak is the most copies held at once so far.
func (g *gate) peak() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.most
}

func (g *gate) wait(t *testing.T) string {
	t.Helper()
	select {
	case id := <-g.entered:
		return id
	case <-time.After(30 * time.Second):
		t.Fatal("no copy started")
		return ""
	}
}

// deadline is a call's context with a timeout, released when the test ends.
func deadline(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func inlineReq(handle, target string, attrs map[string]string) *csi.NodePublishVolumeRequest {
	ctx := map[string]string{ephemeralContextKey: "true", "csi.storage.k8s.io/pod.name": "web", "csi.storage.k8s.io/pod.namespace": "default",
		"csi.storage.k8s.io/pod.uid": "1234", "csi.storage.k8s.io/serviceAccount.name": "default"}
	for k, v := range attrs {
		ctx[k] = v
	}
	return &csi.NodePublishVolumeRequest{VolumeId: handle, TargetPath: target, VolumeCapability: rwo, VolumeContext: ctx}
}

// nodeBoundsOnly bounds inline volumes on the node alone, not per
// namespace, for tests of the node's bounds.
func nodeBoundsOnly(c *EphemeralConfig) {
	if c.MaxCount == 0 {
		c.MaxCount = DefaultEphemeralMaxCount
	}
	c.MaxSharePerNamespacePercent, c.MaxCountPerNamespace = 100, c.MaxCount
}

func wantRefused(t *testing.T, err error, code codes.Code, flag string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), flag) {
		t.Fatalf("got %v; want %s naming %s", err, code, flag)
	}
}

// scrape returns what /metrics serves.
func scrape(t *testing.T, d *Driver) string {
	t.Helper()
	rec := httptest.NewRecorder()
	d.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d %s", rec.Code, body)
	}
	return string(body)
}

func nfsSnapReq(name, src string) *csi.CreateSnapshotRequest {
	return &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src}
}

func (e *nfsEnv) subDirOf(t *testing.T, id string) string {
	t.Helper()
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(e.export, v.SubDir)
}

// classA is a class on the whole export with one subdirectory per claim
// name; classB a class whose share is /export/team on the same server.
func classA(ns, claim string, extra ...string) map[string]string {
	return nfsParamsFor(append([]string{ParamSubDir, "${pvc.metadata.name}", ParamPVCNamespace, ns, ParamPVCName, claim}, extra...)...)
}

func classB() map[string]string {
	return map[string]string{ParamServer: testServer, ParamShare: "/export/team"}
}

// indexEntryName is the name of a subDir's entry in the export's indexes.
func indexEntryName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
