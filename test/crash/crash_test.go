// Package crash kills the real driver binary with SIGKILL at random moments
// under a mixed workload, restarts it on the same directories, and checks
// after every restart that nothing acknowledged was lost and nothing was
// left behind.
package crash

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

var rwo = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

var rwoBlock = &csi.VolumeCapability{
	AccessMode: rwo.AccessMode,
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
}

// Kinds of volume the workload makes: a directory, an ext4 image, a block
// volume.
const (
	kindDir   = "directory"
	kindImage = "image"
	kindBlock = "block"
)

func capFor(kind string) *csi.VolumeCapability {
	if kind == kindBlock {
		return rwoBlock
	}
	return rwo
}

// blockData is how much a write puts at the start of a block volume.
const blockData = 64 << 10

// volume is what the client was told about one volume.
type volume struct {
	id       string
	capacity int64 // the largest capacity acknowledged
	kind     string
	sum      []byte // checksum of the data file once a write was acknowledged
	// maybeMounted: a stage or publish may have been cut short, so the
	// next check unpublishes and unstages, as a kubelet would retry.
	maybeMounted bool
}

// snap is what the client was told about one snapshot.
type snap struct {
	id   string
	kind string
	sum  []byte // the source's data checksum when the snapshot was taken
}

// source is what a volume is made from: nothing, a snapshot or a volume
// (by name in the model).
type source struct{ snapName, volName string }

// model is the client's knowledge. Each worker owns the volumes it created,
// so there are no races within the model itself.
type model struct {
	mu            sync.Mutex
	acked         map[string]*volume // by name
	maybeCreated  map[string]source  // names whose CreateVolume got no answer, with what they were made from
	maybeDeleted  map[string]bool    // names whose DeleteVolume got no answer
	deleted       map[string]bool    // IDs whose delete was acknowledged
	recent        []string           // IDs deleted since the last check
	snaps         map[string]*snap   // acknowledged snapshots, by name
	maybeSnap     map[string]string  // snapshot names without an answer -> source volume name
	maybeSnapDel  map[string]bool    // snapshot names whose delete got no answer
	deletedSnaps  map[string]bool    // snapshot IDs whose delete was acknowledged
	maybeInline   map[string]string  // inline volume handles published or unpublished without an answer -> target
	ops, restarts int
	checks        int // invariant assertions made
}

type harness struct {
	t   *testing.T
	bin string
	// env is added to the driver's environment (the NFS test puts its
	// mount(8) stand-in first on PATH).
	env []string
	// args are added to the driver's command line.
	args    []string
	nodeID  string // default crash-node
	dir     string
	socket  string
	cmd     *exec.Cmd
	logFile *os.File
	conn    *grpc.ClientConn
	ctrl    csi.ControllerClient
	node    csi.NodeClient
}

func TestKillStorm(t *testing.T) {
	testutil.RequireRoot(t) // stage and publish make bind mounts
	kills := 50
	if s := os.Getenv("HOSTPATH_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	h := &harness{t: t, dir: dir, socket: filepath.Join(dir, "csi.sock"), bin: buildPlugin(t)}
	t.Cleanup(h.kill)
	m := &model{acked: map[string]*volume{}, maybeCreated: map[string]source{}, maybeDeleted: map[string]bool{}, deleted: map[string]bool{},
		snaps: map[string]*snap{}, maybeSnap: map[string]string{}, maybeSnapDel: map[string]bool{}, deletedSnaps: map[string]bool{},
		maybeInline: map[string]string{}}

	for k := 0; k < kills; k++ {
		h.start()
		h.check(m)
		const workers = 6
		owned := make([][]string, workers)      // surviving volumes, shared out
		ownedSnaps := make([][]string, workers) // and snapshots
		i := 0
		for name := range m.acked {
			owned[i%workers] = append(owned[i%workers], name)
			i++
		}
		for name := range m.snaps {
			ownedSnaps[i%workers] = append(ownedSnaps[i%workers], name)
			i++
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				h.work(m, fmt.Sprintf("k%d-w%d", k, w), owned[w], ownedSnaps[w], stop)
			}(w)
		}
		time.Sleep(time.Duration(10+mrand.IntN(150)) * time.Millisecond)
		h.kill() // SIGKILL while the workers are mid-call
		close(stop)
		wg.Wait()
	}
	h.start()
	h.check(m)
	t.Logf("%d kills, %d restarts checked, %d acknowledged operations, %d invariant checks, %d volumes alive, %d deleted, %d snapshots alive, %d deleted",
		kills, m.restarts, m.ops, m.checks, len(m.acked), len(m.deleted), len(m.snaps), len(m.deletedSnaps))
	h.cleanupAll(m)
	h.stop() // SIGTERM: waits for the background removal of deleted data
	for _, sub := range []string{"volumes", "snapshots", "partial", "trash", "quarantine"} {
		if left := dirSet(t, filepath.Join(dir, "data", sub)); len(left) != 0 {
			t.Errorf("%d entries left in data/%s once every volume was deleted", len(left), sub)
		}
	}
	if left := testutil.MountsUnder(t, dir); len(left) != 0 {
		t.Errorf("mounts left once every volume was deleted: %v", left)
	}
}

func buildPlugin(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "hostpath-plugin")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/hostpath-csi/hostpath-csi/cmd/hostpath-plugin").CombinedOutput()
	if err != nil {
		t.Fatalf("build plugin: %v\n%s", err, out)
	}
	return bin
}

func (h *harness) start() {
	t := h.t
	var err error
	h.logFile, err = os.OpenFile(filepath.Join(h.dir, "plugin.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	nodeID := h.nodeID
	if nodeID == "" {
		nodeID = "crash-node"
	}
	h.cmd = exec.Command(h.bin, "--endpoint=unix://"+h.socket, "--nodeid="+nodeID,
		"--state-dir="+filepath.Join(h.dir, "state"), "--data-dir="+filepath.Join(h.dir, "data"), "-v=2")
	h.cmd.Args = append(h.cmd.Args, h.args...)
	h.cmd.Stdout, h.cmd.Stderr = h.logFile, h.logFile
	if h.env != nil {
		h.cmd.Env = append(os.Environ(), h.env...)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Retry the dial quickly: the socket appears a few ms after the start,
	// and gRPC's default first backoff is a whole second.
	h.conn, err = grpc.NewClient("unix://"+h.socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: time.Second,
			Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 100 * time.Millisecond}}))
	if err != nil {
		t.Fatal(err)
	}
	h.ctrl, h.node = csi.NewControllerClient(h.conn), csi.NewNodeClient(h.conn)
	id := csi.NewIdentityClient(h.conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		r, err := id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			return
		}
		if h.cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("driver did not become ready: %v (log: %s)", err, filepath.Join(h.dir, "plugin.log"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kill sends SIGKILL to the process this harness started, and only to it.
func (h *harness) kill() {
	if h.cmd == nil || h.cmd.Process == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	_ = h.cmd.Wait()
	h.conn.Close()
	h.logFile.Close()
	h.cmd = nil
}

func (h *harness) stop() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	if err := h.cmd.Wait(); err != nil {
		h.t.Errorf("driver exit after SIGTERM: %v", err)
	}
	h.conn.Close()
	h.logFile.Close()
	h.cmd = nil
	if _, err := os.Stat(h.socket); !errors.Is(err, os.ErrNotExist) {
		h.t.Errorf("socket left after SIGTERM: %v", err)
	}
}

func ctx5() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// work runs random operations on the worker's own volumes (mine) and
// snapshots (snaps) until stop.
func (h *harness) work(m *model, prefix string, mine, snaps []string, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		var err error
		name := fmt.Sprintf("%s-%d", prefix, i)
		r := mrand.IntN(14)
		// Keep the live sets small so each check stays quick.
		if len(mine) > 6 {
			r = 9 // delete a volume
		}
		if len(snaps) > 4 {
			r = 13 // delete a snapshot
		}
		switch {
		case r < 4 || len(mine) == 0:
			if err = h.create(m, name, source{}); err == nil {
				mine = append(mine, name)
			}
		case r < 5:
			err = h.write(m, mine[mrand.IntN(len(mine))])
		case r < 6:
			err = h.inline(m, "csi-"+name)
		case r < 7:
			// A caller with a deadline far shorter than the copy, retrying
			// as csi-snapshotter and csi-provisioner do.
			if mrand.IntN(2) == 0 {
				if err = h.snapshotImpatient(m, "s"+name, mine[mrand.IntN(len(mine))]); err == nil {
					snaps = append(snaps, "s"+name)
				}
			} else if err = h.createImpatient(m, name, source{volName: mine[mrand.IntN(len(mine))]}); err == nil {
				mine = append(mine, name)
			}
		case r < 8:
			err = h.inspect(mine[mrand.IntN(len(mine))], m)
		case r < 10:
			j := mrand.IntN(len(mine))
			err = h.delete(m, mine[j])
			if err == nil {
				mine = slices.Delete(mine, j, j+1)
			}
		case r < 11:
			if err = h.snapshot(m, "s"+name, mine[mrand.IntN(len(mine))]); err == nil {
				snaps = append(snaps, "s"+name)
			}
		case r < 12 && len(snaps) > 0:
			if err = h.create(m, name, source{snapName: snaps[mrand.IntN(len(snaps))]}); err == nil {
				mine = append(mine, name)
			}
		case r < 13:
			if err = h.create(m, name, source{volName: mine[mrand.IntN(len(mine))]}); err == nil {
				mine = append(mine, name)
			}
		case len(snaps) > 0:
			j := mrand.IntN(len(snaps))
			if err = h.deleteSnapshot(m, snaps[j]); err == nil {
				snaps = slices.Delete(snaps, j, j+1)
			}
		}
		if err != nil {
			if !driverGone(err) {
				h.t.Errorf("workload call failed while the driver was up: %v", err)
			}
			return
		}
	}
}

// driverGone tells the errors a kill causes from answers the driver gave.
func driverGone(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled, codes.DeadlineExceeded:
		return true
	}
	return false
}

// create makes a volume, empty or from a source; the model records the
// data checksum the new volume must hold.
func (h *harness) create(m *model, name string, src source) error {
	return h.createWith(m, name, src, once)
}

// createImpatient is create by a caller whose every call has 1-20 ms.
func (h *harness) createImpatient(m *model, name string, src source) error {
	return h.createWith(m, name, src, impatient)
}

// once makes one call with 5 s; impatient makes calls of 1-20 ms, retrying
// on ABORTED (a copy in progress) and DEADLINE_EXCEEDED until an answer,
// as the sidecars do. A call the kill cut short ends either way.
func once(call func(context.Context) error) error {
	ctx, cancel := ctx5()
	defer cancel()
	return call(ctx)
}

func impatient(call func(context.Context) error) error {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+mrand.IntN(20))*time.Millisecond)
		err := call(ctx)
		cancel()
		switch status.Code(err) {
		case codes.Aborted, codes.DeadlineExceeded:
			time.Sleep(time.Duration(1+mrand.IntN(10)) * time.Millisecond)
			continue
		}
		return err
	}
}

func (h *harness) createWith(m *model, name string, src source, calls func(func(context.Context) error) error) error {
	m.mu.Lock()
	m.maybeCreated[name] = src
	req, sum, kind := m.createRequest(name, src)
	m.mu.Unlock()
	var r *csi.CreateVolumeResponse
	err := calls(func(ctx context.Context) (err error) {
		r, err = h.ctrl.CreateVolume(ctx, req)
		return err
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.maybeCreated, name)
	m.acked[name] = &volume{id: r.GetVolume().GetVolumeId(), capacity: r.GetVolume().GetCapacityBytes(), sum: sum, kind: kind}
	m.ops++
	m.mu.Unlock()
	return nil
}

// createRequest builds the CreateVolume for a name and source, and the
// checksum the volume will hold. m.mu must be held.
func (m *model) createRequest(name string, src source) (*csi.CreateVolumeRequest, []byte, string) {
	kind := kindOfName(name)
	var sum []byte
	switch {
	case src.snapName != "":
		kind, sum = m.snaps[src.snapName].kind, m.snaps[src.snapName].sum
	case src.volName != "":
		kind, sum = m.acked[src.volName].kind, m.acked[src.volName].sum
	}
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{capFor(kind)},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}
	if kind == kindImage {
		req.Parameters = map[string]string{"layout": "image"}
		req.CapacityRange.RequiredBytes = 8 << 20 // ext4's least
	}
	switch {
	case src.snapName != "":
		req.CapacityRange = nil // the snapshot's source size
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: m.snaps[src.snapName].id}}}
	case src.volName != "":
		req.CapacityRange = nil
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: m.acked[src.volName].id}}}
	}
	return req, sum, kind
}

// kindOfName picks the kind of a new empty volume from its name, so that a
// retried create asks for the same: mostly directories, some images and
// block volumes.
func kindOfName(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	switch h.Sum32() % 10 {
	case 0, 1:
		return kindImage
	case 2, 3:
		return kindBlock
	}
	return kindDir
}

func (h *harness) snapshot(m *model, name, volName string) error {
	return h.snapshotWith(m, name, volName, once)
}

func (h *harness) snapshotImpatient(m *model, name, volName string) error {
	return h.snapshotWith(m, name, volName, impatient)
}

func (h *harness) snapshotWith(m *model, name, volName string, calls func(func(context.Context) error) error) error {
	m.mu.Lock()
	m.maybeSnap[name] = volName
	v := m.acked[volName]
	m.mu.Unlock()
	var r *csi.CreateSnapshotResponse
	err := calls(func(ctx context.Context) (err error) {
		r, err = h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: v.id})
		return err
	})
	if err != nil {
		return err
	}
	if !r.GetSnapshot().GetReadyToUse() {
		h.t.Errorf("snapshot %s answered but not ready", name)
	}
	m.mu.Lock()
	delete(m.maybeSnap, name)
	m.snaps[name] = &snap{id: r.GetSnapshot().GetSnapshotId(), sum: v.sum, kind: v.kind}
	m.ops++
	m.mu.Unlock()
	return nil
}

func (h *harness) deleteSnapshot(m *model, name string) error {
	m.mu.Lock()
	s := m.snaps[name]
	m.maybeSnapDel[name] = true
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	if _, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.id}); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.maybeSnapDel, name)
	delete(m.snaps, name)
	m.deletedSnaps[s.id] = true
	m.ops++
	m.mu.Unlock()
	return nil
}

// write stages and publishes the volume, writes a fresh data file through
// the target, fsyncs it, unpublishes and unstages.
func (h *harness) write(m *model, name string) error {
	m.mu.Lock()
	v := m.acked[name]
	v.maybeMounted = true
	m.mu.Unlock()
	staging, target := h.paths(v.id)
	ctx, cancel := ctx5()
	defer cancel()
	if err := os.MkdirAll(staging, 0o750); err != nil {
		h.t.Error(err)
		return err
	}
	c := capFor(v.kind)
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
		return err
	}
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
		return err
	}
	if _, err := h.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: target}); err != nil {
		return err
	}
	// Grow it by a MiB, online. An ext4 image cannot grow while mounted on
	// this machine (no CAP_SYS_RESOURCE): FAILED_PRECONDITION, and the
	// next stage grows it.
	m.mu.Lock()
	grown := v.capacity + 1<<20
	m.mu.Unlock()
	r, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: target, StagingTargetPath: staging,
		CapacityRange: &csi.CapacityRange{RequiredBytes: grown}, VolumeCapability: c})
	switch {
	case err == nil:
		m.mu.Lock()
		v.capacity = r.GetCapacityBytes()
		m.mu.Unlock()
	case status.Code(err) == codes.FailedPrecondition && v.kind == kindImage:
	default:
		return err
	}
	if r, err := h.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.id, VolumePublishPath: target, StagingTargetPath: staging}); err != nil {
		return err
	} else if len(r.GetVolumeHealth().GetHealthStatuses()) > 0 {
		h.t.Errorf("a freshly published volume is unhealthy: %v", r)
	}
	data := make([]byte, 4096+mrand.IntN(60000))
	if v.kind == kindBlock {
		data = make([]byte, blockData)
	}
	rand.Read(data)
	if err := writeData(target, data, v.kind); err != nil {
		h.t.Errorf("write through a published target: %v", err)
		return err
	}
	sum := sha256.Sum256(data)
	// The file is durable now, whatever happens to the driver.
	m.mu.Lock()
	v.sum = sum[:]
	m.mu.Unlock()
	if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target}); err != nil {
		return err
	}
	if _, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
		return err
	}
	m.mu.Lock()
	v.maybeMounted = false
	m.ops += 8
	m.mu.Unlock()
	return nil
}

// inline publishes a CSI inline volume as the kubelet does for a pod's
// csi: volume, writes to it and unpublishes it, which removes it.
func (h *harness) inline(m *model, handle string) error {
	target := filepath.Join(h.dir, "pods", handle, "mount")
	m.mu.Lock()
	m.maybeInline[handle] = target
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	// What the kubelet sends with podInfoOnMount (a pod of its own
	// namespace each: the node's bounds are what this exercises).
	vctx := map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "1Mi",
		"csi.storage.k8s.io/pod.name": "pod", "csi.storage.k8s.io/pod.namespace": "ns-" + handle,
		"csi.storage.k8s.io/pod.uid": handle, "csi.storage.k8s.io/serviceAccount.name": "default"}
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: handle, TargetPath: target, VolumeCapability: rwo, VolumeContext: vctx}); err != nil {
		return err
	}
	if err := writeSync(filepath.Join(target, "scratch"), []byte(handle)); err != nil {
		h.t.Errorf("write to an inline volume: %v", err)
		return err
	}
	if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target}); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.maybeInline, handle)
	m.ops += 2
	m.mu.Unlock()
	return nil
}

// writeData writes data where the volume at target keeps it: a data file,
// or the start of a block device; fsync'd.
func writeData(target string, data []byte, kind string) error {
	if kind != kindBlock {
		return writeSync(filepath.Join(target, "data"), data)
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func writeSync(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// inspect makes the read-only controller calls on one of the worker's
// volumes; they must answer while other calls change things.
func (h *harness) inspect(name string, m *model) error {
	m.mu.Lock()
	id, kind := m.acked[name].id, m.acked[name].kind
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	if _, err := h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		return err
	}
	r, err := h.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{capFor(kind)}})
	if err != nil {
		return err
	}
	if r.GetConfirmed() == nil {
		h.t.Errorf("ValidateVolumeCapabilities refused the capability a volume was made with: %s", r.GetMessage())
	}
	if _, err := h.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 5}); err != nil {
		return err
	}
	if _, err := h.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{}); err != nil {
		return err
	}
	if _, err := h.ctrl.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{}); err != nil {
		return err
	}
	m.mu.Lock()
	m.ops += 5
	m.mu.Unlock()
	return nil
}

func (h *harness) delete(m *model, name string) error {
	m.mu.Lock()
	v := m.acked[name]
	m.maybeDeleted[name] = true
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	if _, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.maybeDeleted, name)
	delete(m.acked, name)
	m.deleted[v.id] = true
	m.recent = append(m.recent, v.id)
	m.ops++
	m.mu.Unlock()
	return nil
}

func (h *harness) paths(id string) (staging, target string) {
	return filepath.Join(h.dir, "staging", id), filepath.Join(h.dir, "pods", id, "mount")
}

// check runs right after a restart, before any new work: it settles what
// the kill left uncertain the way a CO would (retrying calls), then checks
// every invariant.
func (h *harness) check(m *model) {
	t := h.t
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.restarts++
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A create without an answer is retried by name now for half of them;
	// the other half are left alone until the invariants below have been
	// checked, so a create the crash cut short must already have been rolled
	// back (or finished) by the restart itself, not by the retry.
	var later []string
	for name := range m.maybeCreated {
		if mrand.IntN(2) == 0 {
			later = append(later, name)
			continue
		}
		h.retryCreate(ctx, m, name)
	}
	// Snapshot calls without an answer are retried, as the snapshotter does.
	for name, volName := range m.maybeSnap {
		v := m.acked[volName]
		r, err := h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: v.id})
		if err != nil || !r.GetSnapshot().GetReadyToUse() {
			t.Fatalf("restart %d: retried CreateSnapshot(%s): %v %v", m.restarts, name, r, err)
		}
		m.snaps[name] = &snap{id: r.GetSnapshot().GetSnapshotId(), sum: v.sum, kind: v.kind}
		delete(m.maybeSnap, name)
	}
	for name := range m.maybeSnapDel {
		sn := m.snaps[name]
		if _, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sn.id}); err != nil {
			t.Fatalf("restart %d: retried DeleteSnapshot(%s): %v", m.restarts, sn.id, err)
		}
		delete(m.snaps, name)
		delete(m.maybeSnapDel, name)
		m.deletedSnaps[sn.id] = true
	}
	h.checkSnapshots(ctx, m)
	// A delete without an answer is retried: it must succeed.
	for name := range m.maybeDeleted {
		v := m.acked[name]
		h.unmountAll(ctx, v)
		if _, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
			t.Fatalf("restart %d: retried DeleteVolume(%s): %v", m.restarts, v.id, err)
		}
		delete(m.acked, name)
		delete(m.maybeDeleted, name)
		m.deleted[v.id] = true
	}
	// The kubelet retries the unpublish of an inline volume whose pod it
	// tore down without an answer: afterwards nothing of it is left (the
	// disk check below counts every volume directory).
	for handle, target := range m.maybeInline {
		if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target}); err != nil {
			t.Fatalf("restart %d: retried NodeUnpublishVolume of inline volume %s: %v", m.restarts, handle, err)
		}
		delete(m.maybeInline, handle)
		m.checks++
	}
	alive := map[string]bool{}
	for name, v := range m.acked {
		h.unmountAll(ctx, v)
		alive[v.id] = true
		m.checks += 3 // exists, capacity, health
		r, err := h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.id})
		if err != nil {
			t.Fatalf("restart %d: acknowledged volume %s (%s) is gone: %v", m.restarts, v.id, name, err)
		}
		if got := r.GetVolume().GetCapacityBytes(); got < v.capacity {
			t.Fatalf("restart %d: volume %s capacity %d, acknowledged %d", m.restarts, v.id, got, v.capacity)
		}
		hr, err := h.ctrl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.id})
		if err != nil || len(hr.GetVolumeHealth().GetHealthStatuses()) > 0 {
			t.Fatalf("restart %d: volume %s health %v %v", m.restarts, v.id, hr, err)
		}
		m.checks++
		if v.sum != nil {
			data, err := h.volumeData(ctx, v)
			if sum := sha256.Sum256(data); err != nil || !bytes.Equal(sum[:], v.sum) {
				t.Fatalf("restart %d: %s volume %s lost its acknowledged data: %v", m.restarts, v.kind, v.id, err)
			}
		}
	}
	m.checks += len(m.recent) + len(m.deleted) + 4 // deletes stay deleted; listed, disk, quarantine, trash
	for _, id := range m.recent {
		if _, err := h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); status.Code(err) != codes.NotFound {
			t.Fatalf("restart %d: deleted volume %s: %v, want NotFound", m.restarts, id, err)
		}
	}
	m.recent = nil
	// The driver lists exactly the volumes the client knows of, and the
	// disk holds exactly those: no orphan, no quarantine, no trash.
	listed := h.listAll(ctx)
	unknown := 0
	for id := range listed {
		if !alive[id] {
			unknown++ // a create not yet retried that had completed
		}
	}
	for id := range alive {
		if !listed[id] {
			t.Fatalf("restart %d: acknowledged volume %s is not listed", m.restarts, id)
		}
	}
	if unknown > len(later) {
		t.Fatalf("restart %d: %d listed volumes the client never asked for (only %d creates unanswered)", m.restarts, unknown, len(later))
	}
	for id := range m.deleted {
		if listed[id] {
			t.Fatalf("restart %d: deleted volume %s is listed again", m.restarts, id)
		}
	}
	onDisk := dirSet(t, filepath.Join(h.dir, "data", "volumes"))
	if !sameSet(onDisk, listed) {
		t.Fatalf("restart %d: %d volume directories on disk, %d volumes listed: a crash left data without a ready volume", m.restarts, len(onDisk), len(listed))
	}
	for _, sub := range []string{"quarantine", "trash", "partial"} {
		if n := len(dirSet(t, filepath.Join(h.dir, "data", sub))); n != 0 {
			t.Fatalf("restart %d: %d entries in %s", m.restarts, n, sub)
		}
	}
	if left := testutil.MountsUnder(t, h.dir); len(left) != 0 {
		t.Fatalf("restart %d: mounts left after every publication was undone: %v", m.restarts, left)
	}
	for _, name := range later {
		h.retryCreate(ctx, m, name)
	}
}

// retryCreate repeats an unanswered CreateVolume, as the provisioner does;
// it must succeed with one volume for the name.
func (h *harness) retryCreate(ctx context.Context, m *model, name string) {
	req, sum, kind := m.createRequest(name, m.maybeCreated[name])
	r, err := h.ctrl.CreateVolume(ctx, req)
	if err != nil {
		h.t.Fatalf("restart %d: retried CreateVolume(%s): %v", m.restarts, name, err)
	}
	m.acked[name] = &volume{id: r.GetVolume().GetVolumeId(), capacity: r.GetVolume().GetCapacityBytes(), sum: sum, kind: kind}
	delete(m.maybeCreated, name)
}

// checkSnapshots: every acknowledged snapshot is ready and holds the data
// its source had; deleted ones stay deleted; listed snapshots, snapshot
// directories and the client's knowledge agree.
func (h *harness) checkSnapshots(ctx context.Context, m *model) {
	t := h.t
	want := map[string]bool{}
	for name, sn := range m.snaps {
		want[sn.id] = true
		r, err := h.ctrl.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: sn.id})
		if err != nil || !r.GetSnapshot().GetReadyToUse() {
			t.Fatalf("restart %d: acknowledged snapshot %s (%s): %v %v", m.restarts, sn.id, name, r, err)
		}
		data, err := h.snapshotData(sn)
		switch {
		case sn.sum == nil && sn.kind == kindDir && !os.IsNotExist(err):
			t.Fatalf("restart %d: snapshot %s has a data file its source did not have (%v)", m.restarts, sn.id, err)
		case sn.sum != nil:
			if sum := sha256.Sum256(data); err != nil || !bytes.Equal(sum[:], sn.sum) {
				t.Fatalf("restart %d: snapshot %s does not hold its source's data: %v", m.restarts, sn.id, err)
			}
		}
		m.checks += 2
	}
	listed := map[string]bool{}
	token := ""
	for {
		r, err := h.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 50, StartingToken: token})
		if err != nil {
			t.Fatalf("ListSnapshots: %v", err)
		}
		for _, e := range r.GetEntries() {
			listed[e.GetSnapshot().GetSnapshotId()] = true
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	if !sameSet(listed, want) {
		t.Fatalf("restart %d: %d snapshots listed, the client knows %d", m.restarts, len(listed), len(want))
	}
	if onDisk := dirSet(t, filepath.Join(h.dir, "data", "snapshots")); !sameSet(onDisk, want) {
		t.Fatalf("restart %d: %d snapshot directories, %d snapshots known", m.restarts, len(onDisk), len(want))
	}
	for id := range m.deletedSnaps {
		if listed[id] {
			t.Fatalf("restart %d: deleted snapshot %s is listed again", m.restarts, id)
		}
	}
	m.checks += 2 + len(m.deletedSnaps)
}

// volumeData reads what a volume holds: its data file, the start of its
// block file, or, for an image, its data file through a stage and publish
// as a kubelet would.
func (h *harness) volumeData(ctx context.Context, v *volume) ([]byte, error) {
	dir := filepath.Join(h.dir, "data", "volumes", v.id)
	switch v.kind {
	case kindBlock:
		return readHead(filepath.Join(dir, "disk.img"))
	case kindImage:
		staging, target := h.paths(v.id)
		v.maybeMounted = true
		c := capFor(v.kind)
		if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
			return nil, err
		}
		if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c}); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(filepath.Join(target, "data"))
		h.unmountAll(ctx, v)
		return data, err
	}
	return os.ReadFile(filepath.Join(dir, "data"))
}

// snapshotData reads what a snapshot holds; an image snapshot is mounted
// read-only for it.
func (h *harness) snapshotData(sn *snap) ([]byte, error) {
	dir := filepath.Join(h.dir, "data", "snapshots", sn.id)
	switch sn.kind {
	case kindBlock:
		return readHead(filepath.Join(dir, "disk.img"))
	case kindImage:
		if sn.sum == nil {
			return nil, nil // a blank image: nothing to mount
		}
		mnt := filepath.Join(h.dir, "snapcheck")
		if err := os.MkdirAll(mnt, 0o700); err != nil {
			return nil, err
		}
		img := filepath.Join(dir, "disk.img")
		if _, err := imagefs.Mount(img, mnt, imagefs.MountOptions{FSType: "ext4", ReadOnly: true}); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(filepath.Join(mnt, "data"))
		if uerr := imagefs.Unmount(img, mnt); uerr != nil {
			h.t.Fatalf("unmount snapshot image: %v", uerr)
		}
		return data, err
	}
	return os.ReadFile(filepath.Join(dir, "data"))
}

func readHead(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data := make([]byte, blockData)
	_, err = io.ReadFull(f, data)
	return data, err
}

// unmountAll undoes a stage/publish that a kill may have cut short, as the
// kubelet does on restart; both calls must succeed whatever state is left.
func (h *harness) unmountAll(ctx context.Context, v *volume) {
	if !v.maybeMounted {
		return
	}
	staging, target := h.paths(v.id)
	if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target}); err != nil {
		h.t.Fatalf("unpublish %s after a kill: %v", v.id, err)
	}
	if _, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging}); err != nil {
		h.t.Fatalf("unstage %s after a kill: %v", v.id, err)
	}
	v.maybeMounted = false
}

func (h *harness) listAll(ctx context.Context) map[string]bool {
	ids := map[string]bool{}
	token := ""
	for {
		r, err := h.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 50, StartingToken: token})
		if err != nil {
			h.t.Fatalf("ListVolumes: %v", err)
		}
		for _, e := range r.GetEntries() {
			ids[e.GetVolume().GetVolumeId()] = true
		}
		if token = r.GetNextToken(); token == "" {
			return ids
		}
	}
}

func (h *harness) cleanupAll(m *model) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, sn := range m.snaps {
		if _, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sn.id}); err != nil {
			h.t.Errorf("final delete of snapshot %s: %v", sn.id, err)
		}
	}
	for _, v := range m.acked {
		if _, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
			h.t.Errorf("final delete of %s: %v", v.id, err)
		}
	}
	if left := h.listAll(ctx); len(left) != 0 {
		h.t.Errorf("%d volumes left after deleting all", len(left))
	}
}

func dirSet(t *testing.T, dir string) map[string]bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := map[string]bool{}
	for _, e := range entries {
		s[e.Name()] = true
	}
	return s
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
