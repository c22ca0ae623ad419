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

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

var rwo = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

// volume is what the client was told about one volume.
type volume struct {
	id       string
	capacity int64  // the largest capacity acknowledged
	sum      []byte // checksum of the data file once a write was acknowledged
	// maybeMounted: a stage or publish may have been cut short, so the
	// next check unpublishes and unstages, as a kubelet would retry.
	maybeMounted bool
}

// model is the client's knowledge. Each worker owns the volumes it created,
// so there are no races within the model itself.
type model struct {
	mu            sync.Mutex
	acked         map[string]*volume // by name
	maybeCreated  map[string]bool    // names whose CreateVolume got no answer
	maybeDeleted  map[string]bool    // names whose DeleteVolume got no answer
	deleted       map[string]bool    // IDs whose delete was acknowledged
	recent        []string           // IDs deleted since the last check
	ops, restarts int
	checks        int // invariant assertions made
}

type harness struct {
	t       *testing.T
	bin     string
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
	m := &model{acked: map[string]*volume{}, maybeCreated: map[string]bool{}, maybeDeleted: map[string]bool{}, deleted: map[string]bool{}}

	for k := 0; k < kills; k++ {
		h.start()
		h.check(m)
		const workers = 6
		owned := make([][]string, workers) // surviving volumes, shared out
		i := 0
		for name := range m.acked {
			owned[i%workers] = append(owned[i%workers], name)
			i++
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				h.work(m, fmt.Sprintf("k%d-w%d", k, w), owned[w], stop)
			}(w)
		}
		time.Sleep(time.Duration(10+mrand.IntN(150)) * time.Millisecond)
		h.kill() // SIGKILL while the workers are mid-call
		close(stop)
		wg.Wait()
	}
	h.start()
	h.check(m)
	t.Logf("%d kills, %d restarts checked, %d acknowledged operations, %d invariant checks, %d volumes alive, %d deleted",
		kills, m.restarts, m.ops, m.checks, len(m.acked), len(m.deleted))
	h.cleanupAll(m)
	h.stop() // SIGTERM: waits for the background removal of deleted data
	for _, sub := range []string{"volumes", "trash", "quarantine"} {
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
	h.cmd = exec.Command(h.bin, "--endpoint=unix://"+h.socket, "--nodeid=crash-node",
		"--state-dir="+filepath.Join(h.dir, "state"), "--data-dir="+filepath.Join(h.dir, "data"), "-v=2")
	h.cmd.Stdout, h.cmd.Stderr = h.logFile, h.logFile
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

// work runs random operations on the worker's own volumes (mine) until stop.
func (h *harness) work(m *model, prefix string, mine []string, stop <-chan struct{}) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		var err error
		r := mrand.IntN(11)
		if len(mine) > 6 {
			r = 10 // keep the live set small so each check stays quick
		}
		switch {
		case r < 4 || len(mine) == 0:
			name := fmt.Sprintf("%s-%d", prefix, i)
			err = h.create(m, name)
			if err == nil {
				mine = append(mine, name)
			}
		case r < 6:
			err = h.write(m, mine[mrand.IntN(len(mine))])
		case r < 7:
			err = h.expand(m, mine[mrand.IntN(len(mine))])
		case r < 8:
			err = h.inspect(mine[mrand.IntN(len(mine))], m)
		default:
			j := mrand.IntN(len(mine))
			err = h.delete(m, mine[j])
			if err == nil {
				mine = slices.Delete(mine, j, j+1)
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

func (h *harness) create(m *model, name string) error {
	m.mu.Lock()
	m.maybeCreated[name] = true
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	r, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.maybeCreated, name)
	m.acked[name] = &volume{id: r.GetVolume().GetVolumeId(), capacity: r.GetVolume().GetCapacityBytes()}
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
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: rwo}); err != nil {
		return err
	}
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwo}); err != nil {
		return err
	}
	if _, err := h.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: target}); err != nil {
		return err
	}
	if _, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: target}); err != nil {
		return err
	}
	if r, err := h.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.id, VolumePublishPath: target, StagingTargetPath: staging}); err != nil {
		return err
	} else if len(r.GetVolumeHealth().GetHealthStatuses()) > 0 {
		h.t.Errorf("a freshly published volume is unhealthy: %v", r)
	}
	data := make([]byte, 4096+mrand.IntN(60000))
	rand.Read(data)
	if err := writeSync(filepath.Join(target, "data"), data); err != nil {
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

func (h *harness) expand(m *model, name string) error {
	m.mu.Lock()
	v := m.acked[name]
	size := v.capacity + 1<<20
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	r, err := h.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
	if err != nil {
		return err
	}
	m.mu.Lock()
	v.capacity = r.GetCapacityBytes()
	m.ops++
	m.mu.Unlock()
	return nil
}

// inspect makes the read-only controller calls on one of the worker's
// volumes; they must answer while other calls change things.
func (h *harness) inspect(name string, m *model) error {
	m.mu.Lock()
	id := m.acked[name].id
	m.mu.Unlock()
	ctx, cancel := ctx5()
	defer cancel()
	if _, err := h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		return err
	}
	r, err := h.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{rwo}})
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
			data, err := os.ReadFile(filepath.Join(h.dir, "data", "volumes", v.id, "data"))
			if sum := sha256.Sum256(data); err != nil || !bytes.Equal(sum[:], v.sum) {
				t.Fatalf("restart %d: volume %s lost its acknowledged data: %v", m.restarts, v.id, err)
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
	for _, sub := range []string{"quarantine", "trash"} {
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
	r, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		h.t.Fatalf("restart %d: retried CreateVolume(%s): %v", m.restarts, name, err)
	}
	m.acked[name] = &volume{id: r.GetVolume().GetVolumeId(), capacity: r.GetVolume().GetCapacityBytes()}
	delete(m.maybeCreated, name)
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
