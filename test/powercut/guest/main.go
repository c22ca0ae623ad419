// Command guest is the power-cut test's program inside the VM. At each
// boot it mounts the data disk, starts a second driver on it that holds
// the snapshot restores across nodes fetch (the "sender", never judged),
// starts the real driver on it (whose start-up reconciliation runs),
// reports what the driver and the disk hold, repeats
// the calls the last power cut left unanswered (as a CO would), and then,
// unless this is the final boot, drives the driver with concurrent clients
// until the host cuts the power. Every call is announced on the second
// serial port before it is made, and acknowledged there once answered; the
// host keeps the record and judges. It is built static (CGO_ENABLED=0) and
// runs under busybox as PID 1's child.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hostpath-csi/hostpath-csi/test/powercut/proto"
)

const (
	mnt    = "/disk"
	data   = mnt + "/data"
	socket = "/tmp/csi.sock"
	logf   = "/tmp/plugin.log"

	// The sender: a second driver, node proto.SenderNode, with its own
	// state and data on the same disk, serving transfers over loopback.
	senderDir    = mnt + "/sender"
	senderSocket = "/tmp/sender.sock"
	senderLog    = "/tmp/sender.log"
	senderAddr   = "127.0.0.1:9811"
	// keysFile is the transfer key both drivers hold, made at the first
	// boot; seedFile says which snapshot of the sender's is the seed.
	keysFile = mnt + "/transfer-keys"
	seedFile = mnt + "/seed.json"
	// seedBytes is the seed's data file: large enough that a transfer
	// takes seconds under software emulation beside the load (12 MiB took
	// 7 s, 6 MiB more than the 5 s the cut comes after on average), so
	// that cuts land in the middle of one, and small enough that the
	// boot's retries of the transfers a cut interrupted stay short.
	seedBytes = 4 << 20
)

var rwo = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

func main() {
	planPath := flag.String("plan", "/dev/vdb", "raw disk holding the plan")
	portPath := flag.String("port", "/dev/ttyS1", "serial port for events")
	disk := flag.String("disk", "/dev/vda", "data disk")
	plugin := flag.String("plugin", "/bin/hostpath-plugin", "driver binary")
	flag.Parse()
	out, err := openPort(*portPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
		os.Exit(1)
	}
	g := &guest{out: out, plugin: *plugin}
	if err := g.run(*planPath, *disk); err != nil {
		g.fail("%v", err)
		g.printLog(40)
		os.Exit(1)
	}
}

// emitter writes event lines to the serial port, one whole line per write.
type emitter struct {
	mu sync.Mutex
	f  *os.File
	fd int
}

// openPort opens the serial port raw: no echo, no newline translation.
func openPort(path string) (*emitter, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	fd := int(f.Fd()) // blocking mode from here on
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD
	tio.Cflag |= unix.CS8 | unix.B115200
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &emitter{f: f, fd: fd}, nil
}

// emit sends one event. With drain, it returns only once the line has left
// the guest (tcdrain): an intent must reach the host before its call
// starts, or the host could not account for what the call did.
func (e *emitter) emit(ev proto.Event, drain bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.f.WriteString(proto.Encode(ev) + "\n"); err != nil {
		fmt.Fprintf(os.Stderr, "guest: serial: %v\n", err)
	}
	if drain {
		if err := unix.IoctlSetInt(e.fd, unix.TCSBRK, 1); err != nil {
			fmt.Fprintf(os.Stderr, "guest: tcdrain: %v\n", err)
		}
	}
}

type guest struct {
	out    *emitter
	plugin string
	plan   *proto.Plan
	main   *proc // the judged driver
	ctrl   csi.ControllerClient
	node   csi.NodeClient
	sender *proc
	seed   seedInfo
}

// proc is one driver process and its client.
type proc struct {
	name   string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
	conn   *grpc.ClientConn
	ctrl   csi.ControllerClient
	node   csi.NodeClient
}

func (g *guest) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Printf("guest: FAIL %s\n", msg)
	g.out.emit(proto.Event{Kind: proto.KindFail, Msg: msg}, true)
}

func uptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func (g *guest) run(planPath, disk string) error {
	plan, err := proto.ReadPlan(planPath)
	if err != nil {
		return err
	}
	g.plan = plan
	g.out.emit(proto.Event{Kind: proto.KindBoot, Msg: uptime()}, false)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(disk, mnt, plan.FS, 0, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", disk, plan.FS, mnt, err)
	}
	if err := upLoopback(); err != nil {
		return err
	}
	if err := ensureKeys(); err != nil {
		return err
	}
	start := time.Now()
	if g.sender, err = startProc("sender", g.plugin, senderSocket, senderLog, "--nodeid="+proto.SenderNode,
		"--state-dir="+senderDir+"/state", "--data-dir="+senderDir+"/data",
		"--transfer-listen="+senderAddr, "--transfer-keys="+keysFile, "-v=2"); err != nil {
		return err
	}
	fmt.Printf("guest: sender ready after %s (uptime %s)\n", time.Since(start).Round(time.Millisecond), uptime())
	if err := g.ensureSeed(); err != nil {
		return err
	}
	g.reportLeftovers()
	start = time.Now()
	if g.main, err = startProc("plugin", g.plugin, socket, logf, "--nodeid=powercut",
		"--state-dir="+mnt+"/state", "--data-dir="+data,
		"--transfer-peers="+proto.SenderNode+"="+senderAddr, "--transfer-keys="+keysFile, "-v=2"); err != nil {
		return err
	}
	g.ctrl, g.node = g.main.ctrl, g.main.node
	g.out.emit(proto.Event{Kind: proto.KindStarted, Msg: fmt.Sprintf("%.2f", time.Since(start).Seconds())}, false)
	fmt.Printf("guest: driver ready after %s (uptime %s); its start-up log:\n", time.Since(start).Round(time.Millisecond), uptime())
	g.printLog(0)
	g.reportRolledBack()

	vols, snaps := g.observe()
	stVols, stSnaps := g.retry(vols, snaps)
	g.out.emit(proto.Event{Kind: proto.KindCheckDone, Msg: uptime()}, true)
	if plan.Final {
		return g.shutdown()
	}
	g.load(stVols, stSnaps)
	return nil
}

// startProc starts a driver (its log in log, lines prefixed name on the
// console when shown) and waits until it answers Probe ready.
func startProc(name, bin, sock, log string, args ...string) (*proc, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child holds its own descriptor
	p := &proc{name: name, log: log, cmd: exec.Command(bin, append([]string{"--endpoint=unix://" + sock}, args...)...)}
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the %s: %w", name, err)
	}
	p.exited = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	p.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: 5 * time.Second,
			Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}}))
	if err != nil {
		return nil, err
	}
	p.ctrl, p.node = csi.NewControllerClient(p.conn), csi.NewNodeClient(p.conn)
	id := csi.NewIdentityClient(p.conn)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			return p, nil
		}
		select {
		case <-p.exited:
			p.printLog(40)
			return nil, fmt.Errorf("the %s exited during start-up: %v", name, p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the %s did not become ready: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// printLog copies the driver's log to the console: all of it, or its last
// n lines.
func (p *proc) printLog(n int) {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	w := bufio.NewWriter(os.Stdout)
	for _, l := range lines {
		fmt.Fprintf(w, "%s: %s\n", p.name, l)
	}
	w.Flush()
}

// stop ends the driver with SIGTERM, as the kubelet does, and waits for it
// to exit cleanly.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("the %s did not exit within 2 minutes of SIGTERM", p.name)
	}
	p.conn.Close()
	if !p.cmd.ProcessState.Success() {
		p.printLog(20)
		return fmt.Errorf("the %s exited with %v after SIGTERM", p.name, p.cmd.ProcessState)
	}
	return nil
}

// printLog copies the judged driver's log to the console (see proc.printLog).
func (g *guest) printLog(n int) {
	if g.main != nil {
		g.main.printLog(n)
		return
	}
	(&proc{name: "plugin", log: logf}).printLog(n)
}

// shutdown stops both drivers (the judged one first: it may be fetching
// from the sender) and unmounts the disk; no process of the test is left.
func (g *guest) shutdown() error {
	if err := g.main.stop(); err != nil {
		return err
	}
	if err := g.sender.stop(); err != nil {
		return err
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", mnt, err)
	}
	g.out.emit(proto.Event{Kind: proto.KindFinal, Msg: uptime()}, true)
	return nil
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 2*time.Minute)
}

// obsVol is what the check saw of one listed volume or snapshot.
type obsVol struct {
	sum string
	ok  bool // readable and healthy (and, for a snapshot, ready)
}

// observe reports the data directory's entries, every listed volume with
// its data (read through a stage and publish, as a pod would) and every
// listed snapshot with its data (read from its directory).
func (g *guest) observe() (vols, snaps map[string]obsVol) {
	for _, sub := range []string{"volumes", "snapshots", "partial", "trash", "quarantine"} {
		ev := proto.Event{Kind: proto.KindDir, Dir: sub}
		entries, err := os.ReadDir(filepath.Join(data, sub))
		if err != nil {
			ev.Err = err.Error()
		}
		for _, e := range entries {
			ev.Entries = append(ev.Entries, e.Name())
		}
		g.out.emit(ev, false)
		if sub == "quarantine" {
			// Reported; now clear it away as an operator would, so that
			// the next boot's check reports only what that cut left.
			for _, e := range entries {
				if err := os.RemoveAll(filepath.Join(data, sub, e.Name())); err != nil {
					g.fail("remove quarantined %s: %v", e.Name(), err)
				}
			}
		}
	}
	vols, snaps = map[string]obsVol{}, map[string]obsVol{}
	c, cancel := ctx()
	defer cancel()
	ids, err := g.listVolumes(c)
	if err != nil {
		g.fail("ListVolumes after the power cut: %v", err)
	}
	for _, id := range ids {
		ev := proto.Event{Kind: proto.KindObsVol, ID: id}
		if h, err := g.ctrl.ControllerGetVolumeHealth(c, &csi.ControllerGetVolumeHealthRequest{VolumeId: id}); err != nil {
			ev.Health = "error: " + err.Error()
		} else {
			for _, s := range h.GetVolumeHealth().GetHealthStatuses() {
				ev.Health += fmt.Sprintf("%v %s: %s; ", s.GetStatus(), s.GetReason(), s.GetMessage())
			}
		}
		var err error
		ev.Sum, ev.Size, err = g.readVolume(c, id)
		if err != nil {
			ev.Err = err.Error()
		}
		vols[id] = obsVol{sum: ev.Sum, ok: ev.Err == "" && ev.Health == ""}
		g.out.emit(ev, false)
	}
	token := ""
	for {
		r, err := g.ctrl.ListSnapshots(c, &csi.ListSnapshotsRequest{MaxEntries: 100, StartingToken: token})
		if err != nil {
			g.fail("ListSnapshots after the power cut: %v", err)
			break
		}
		for _, e := range r.GetEntries() {
			s := e.GetSnapshot()
			ev := proto.Event{Kind: proto.KindObsSnap, ID: s.GetSnapshotId(), Ready: s.GetReadyToUse(), Src: s.GetSourceVolumeId()}
			dir := filepath.Join(data, "snapshots", s.GetSnapshotId())
			st, err := os.Lstat(dir)
			if err == nil && !st.IsDir() {
				err = fmt.Errorf("%s is not a directory", dir)
			}
			if err == nil {
				ev.Sum, ev.Size, err = sumFile(filepath.Join(dir, "data"))
			}
			if err != nil {
				ev.Err = err.Error()
			}
			snaps[ev.ID] = obsVol{sum: ev.Sum, ok: ev.Err == "" && ev.Ready}
			g.out.emit(ev, false)
		}
		if token = r.GetNextToken(); token == "" {
			break
		}
	}
	return vols, snaps
}

func (g *guest) listVolumes(c context.Context) ([]string, error) {
	var ids []string
	token := ""
	for {
		r, err := g.ctrl.ListVolumes(c, &csi.ListVolumesRequest{MaxEntries: 100, StartingToken: token})
		if err != nil {
			return ids, err
		}
		for _, e := range r.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		if token = r.GetNextToken(); token == "" {
			return ids, nil
		}
	}
}

func paths(id string) (staging, target string) {
	return filepath.Join(mnt, "kubelet", "staging", id), filepath.Join(mnt, "kubelet", "pods", id, "mount")
}

// mount stages and publishes a volume, as the kubelet does for a pod.
func (g *guest) mount(c context.Context, id string) (string, error) {
	staging, target := paths(id)
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return "", err
	}
	if _, err := g.node.NodeStageVolume(c, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwo}); err != nil {
		return "", fmt.Errorf("NodeStageVolume: %w", err)
	}
	if _, err := g.node.NodePublishVolume(c, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwo}); err != nil {
		return "", fmt.Errorf("NodePublishVolume: %w", err)
	}
	return target, nil
}

func (g *guest) unmount(c context.Context, id string) error {
	staging, target := paths(id)
	if _, err := g.node.NodeUnpublishVolume(c, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume: %w", err)
	}
	if _, err := g.node.NodeUnstageVolume(c, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		return fmt.Errorf("NodeUnstageVolume: %w", err)
	}
	return nil
}

func (g *guest) readVolume(c context.Context, id string) (sum string, size int64, err error) {
	target, err := g.mount(c, id)
	if err == nil {
		sum, size, err = sumFile(filepath.Join(target, "data"))
	}
	if uerr := g.unmount(c, id); err == nil {
		err = uerr
	}
	return sum, size, err
}

// sumFile is the data file's sha256, or proto.None when there is none.
func sumFile(p string) (string, int64, error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return proto.None, 0, nil
	}
	if err != nil {
		return "", 0, err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), int64(len(b)), nil
}

// retry repeats what the last boot left unanswered, as a CO would: creates
// by name (one object per name, so a retry finds what the first call made),
// deletes by ID. Then it sends the state the load starts from: every
// object it knows by name that the driver lists with readable data.
func (g *guest) retry(vols, snaps map[string]obsVol) (stVols, stSnaps []item) {
	c, cancel := ctx()
	defer cancel()
	volID, snapID := map[string]string{}, map[string]string{}
	for _, o := range g.plan.Vols {
		volID[o.Name] = o.ID
	}
	for _, o := range g.plan.Snaps {
		snapID[o.Name] = o.ID
	}
	created := map[string]string{} // name -> sum of what a retry made that the check did not see
	for _, o := range g.plan.Snaps {
		if o.State != proto.Creating {
			continue
		}
		src := volID[strings.TrimPrefix(o.Src, "vol:")]
		g.out.emit(proto.Event{Kind: proto.KindIntent, Op: proto.OpSnapshot, Name: o.Name, Src: o.Src, Sum: o.Sums[0], Retry: true}, true)
		r, err := g.ctrl.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: o.Name, SourceVolumeId: src})
		if err != nil {
			g.fail("retried CreateSnapshot %s of %s (%s): %v", o.Name, o.Src, src, err)
			continue
		}
		id := r.GetSnapshot().GetSnapshotId()
		snapID[o.Name] = id
		if _, seen := snaps[id]; !seen {
			created[o.Name] = o.Sums[0]
		}
		g.out.emit(proto.Event{Kind: proto.KindAck, Op: proto.OpSnapshot, Name: o.Name, ID: id, Src: o.Src, Sum: o.Sums[0], Retry: true}, false)
	}
	for _, o := range g.plan.Vols {
		if o.State != proto.Creating {
			continue
		}
		req := g.createRequest(o.Name, o.Src, volID, snapID)
		g.out.emit(proto.Event{Kind: proto.KindIntent, Op: proto.OpCreateVol, Name: o.Name, Src: o.Src, Sum: o.Sums[0], Retry: true}, true)
		r, err := g.createVolume(req, o.Src)
		if err != nil {
			g.fail("retried CreateVolume %s from %q: %v", o.Name, o.Src, err)
			continue
		}
		id := r.GetVolume().GetVolumeId()
		volID[o.Name] = id
		if _, seen := vols[id]; !seen {
			created[o.Name] = o.Sums[0]
		}
		g.out.emit(proto.Event{Kind: proto.KindAck, Op: proto.OpCreateVol, Name: o.Name, ID: id, Src: o.Src, Sum: o.Sums[0], Retry: true}, false)
	}
	gone := map[string]bool{}
	for _, o := range g.plan.Snaps {
		if o.State == proto.Deleting {
			g.out.emit(proto.Event{Kind: proto.KindIntent, Op: proto.OpDeleteSnp, Name: o.Name, ID: o.ID, Retry: true}, true)
			if _, err := g.ctrl.DeleteSnapshot(c, &csi.DeleteSnapshotRequest{SnapshotId: o.ID}); err != nil {
				g.fail("retried DeleteSnapshot %s (%s): %v", o.ID, o.Name, err)
				continue
			}
			gone[o.ID] = true
			g.out.emit(proto.Event{Kind: proto.KindAck, Op: proto.OpDeleteSnp, Name: o.Name, ID: o.ID, Retry: true}, false)
		}
	}
	for _, o := range g.plan.Vols {
		if o.State == proto.Deleting {
			g.out.emit(proto.Event{Kind: proto.KindIntent, Op: proto.OpDeleteVol, Name: o.Name, ID: o.ID, Retry: true}, true)
			if _, err := g.ctrl.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: o.ID}); err != nil {
				g.fail("retried DeleteVolume %s (%s): %v", o.ID, o.Name, err)
				continue
			}
			gone[o.ID] = true
			g.out.emit(proto.Event{Kind: proto.KindAck, Op: proto.OpDeleteVol, Name: o.Name, ID: o.ID, Retry: true}, false)
		}
	}
	// The state the load starts from, which the host adopts as its record.
	state := func(kind string, objs []proto.Obj, ids map[string]string, seen map[string]obsVol) (items []item) {
		for _, o := range objs {
			id := ids[o.Name]
			if id == "" || gone[id] {
				continue
			}
			sum, ok := created[o.Name]
			if !ok {
				ob, listed := seen[id]
				if !listed || !ob.ok {
					continue // lost or damaged: the host reports it; the load leaves it alone
				}
				sum = ob.sum
			}
			g.out.emit(proto.Event{Kind: proto.KindState, Op: kind, Name: o.Name, ID: id, Src: o.Src, Sum: sum}, false)
			items = append(items, item{name: o.Name, id: id, sum: sum})
		}
		return items
	}
	return state("vol", g.plan.Vols, volID, vols), state("snap", g.plan.Snaps, snapID, snaps)
}

// createRequest builds a CreateVolume for a name and a source ("",
// "vol:<name>", "snap:<name>", or proto.RemoteSeed: the sender's seed
// snapshot, which the judged driver does not hold and fetches).
func (g *guest) createRequest(name, src string, volID, snapID map[string]string) *csi.CreateVolumeRequest {
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}
	switch {
	case src == proto.RemoteSeed:
		req.CapacityRange = nil // the seed's source size
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: g.seed.SnapshotID}}}
	case strings.HasPrefix(src, "remote:"):
		panic("unknown remote source " + src)
	case strings.HasPrefix(src, "snap:"):
		req.CapacityRange = nil // the snapshot's source size
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID[strings.TrimPrefix(src, "snap:")]}}}
	case strings.HasPrefix(src, "vol:"):
		req.CapacityRange = nil
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: volID[strings.TrimPrefix(src, "vol:")]}}}
	}
	return req
}

// item is a volume or snapshot a load worker owns.
type item struct{ name, id, sum string }

// load runs the concurrent clients until the power is cut. Each worker owns
// the volumes and snapshots dealt to it, so one worker's calls on an
// object are never concurrent, and the host can tell what each unanswered
// call may have done.
func (g *guest) load(vols, snaps []item) {
	owned := make([][]item, g.plan.Workers)
	ownedSnaps := make([][]item, g.plan.Workers)
	i := 0
	for _, o := range vols {
		owned[i%len(owned)] = append(owned[i%len(owned)], o)
		i++
	}
	for _, o := range snaps {
		ownedSnaps[i%len(owned)] = append(ownedSnaps[i%len(owned)], o)
		i++
	}
	g.out.emit(proto.Event{Kind: proto.KindLoadStart, Msg: uptime()}, true)
	for w := range g.plan.Workers {
		go g.work(w, owned[w], ownedSnaps[w])
	}
	go g.watchPartial()
	select {} // until the power goes
}
