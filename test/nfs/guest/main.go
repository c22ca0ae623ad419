// Command guest is the NFS end-to-end test's program inside the VM. The
// VM's /init has started a kernel NFS server on the loopback (exports
// /export and /export-squash, see test/nfs); this program starts the real
// driver and, as a CSI client on its socket (the CO's part), provisions,
// publishes, writes, snapshots, restores, clones and deletes NFS volumes,
// looks at the result on the server's side of the export, and finally
// stops the server under a published volume. Each check's result goes to
// the host as a report line (test/nfs/report) on the second serial port.
// It is built static (CGO_ENABLED=0) and runs under busybox as PID 1's
// child.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hostpath-csi/hostpath-csi/test/nfs/report"
)

const (
	socket   = "/tmp/csi.sock"
	logFile  = "/tmp/plugin.log"
	driverFS = "/var/lib/hostpath-csi"
	kubelet  = "/var/lib/kubelet"
	// nfsTimeout is the driver's --nfs-timeout: the dead-server checks
	// wait for it to expire.
	nfsTimeout = 20 * time.Second
)

func main() {
	portPath := flag.String("port", "/dev/ttyS1", "serial port for report lines")
	plugin := flag.String("plugin", "/bin/hostpath-plugin", "driver binary")
	flag.Parse()
	port, err := os.OpenFile(*portPath, os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
		os.Exit(1)
	}
	g := &guest{port: port, plugin: *plugin}
	g.emit(report.Line{Kind: report.KindStart, Secs: uptime()})
	g.run()
	g.emit(report.Line{Kind: report.KindDone, Secs: uptime(), Msg: g.stopDriver()})
}

type guest struct {
	port   *os.File
	plugin string
	cmd    *exec.Cmd
	exited chan struct{}
	ctrl   csi.ControllerClient
	node   csi.NodeClient
}

func (g *guest) emit(l report.Line) {
	if _, err := fmt.Fprintln(g.port, report.Encode(l)); err != nil {
		fmt.Fprintf(os.Stderr, "guest: report: %v\n", err)
	}
}

// check runs one named check and reports its result.
func (g *guest) check(name string, fn func() (string, error)) bool {
	start := time.Now()
	msg, err := fn()
	l := report.Line{Kind: report.KindCheck, Name: name, OK: err == nil, Msg: msg, Secs: time.Since(start).Seconds()}
	if err != nil {
		l.Msg = err.Error()
		fmt.Printf("guest: FAIL %s: %v\n", name, err)
		fmt.Printf("guest: the driver's last log lines:\n")
		tailLog(25)
	} else {
		fmt.Printf("guest: ok %s (%.2f s) %s\n", name, l.Secs, msg)
	}
	g.emit(l)
	return err == nil
}

func uptime() float64 {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 3*time.Minute)
}

// startDriver runs the driver (both services, hostpath data on a tmpfs)
// and waits until it answers Probe.
func (g *guest) startDriver() (string, error) {
	if err := os.MkdirAll(driverFS, 0o755); err != nil {
		return "", err
	}
	if err := syscall.Mount("tmpfs", driverFS, "tmpfs", 0, "size=256m"); err != nil {
		return "", fmt.Errorf("mount tmpfs on %s: %w", driverFS, err)
	}
	return g.runDriver(driverFS)
}

// runDriver starts the driver with its state and data under dir.
func (g *guest) runDriver(dir string) (string, error) {
	log, err := os.OpenFile(logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return "", err
	}
	_ = os.Remove(socket)
	g.cmd = exec.Command(g.plugin, "--endpoint=unix://"+socket, "--nodeid=vm",
		"--state-dir="+dir+"/state", "--data-dir="+dir+"/data",
		"--nfs-timeout="+nfsTimeout.String(), "-v=4")
	g.cmd.Stdout, g.cmd.Stderr = log, log
	if err := g.cmd.Start(); err != nil {
		return "", err
	}
	g.exited = make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(g.exited) }()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: 5 * time.Second,
			Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}}))
	if err != nil {
		return "", err
	}
	g.ctrl, g.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	id := csi.NewIdentityClient(conn)
	start := time.Now()
	for {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := id.Probe(c, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			g.emit(report.Line{Kind: report.KindReady, Secs: uptime()})
			return fmt.Sprintf("after %.2f s", time.Since(start).Seconds()), nil
		}
		select {
		case <-g.exited:
			return "", fmt.Errorf("the driver exited during start-up (%v): %s", g.cmd.ProcessState, tailLog(15))
		default:
		}
		if time.Since(start) > 2*time.Minute {
			return "", fmt.Errorf("the driver did not become ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// moveController kills the driver (-9) and starts another with empty state
// and data directories: the NFS controller Deployment rescheduled to a node
// that has nothing of the old one's disk.
func (g *guest) moveController() (string, error) {
	_ = g.cmd.Process.Kill()
	<-g.exited
	return g.runDriver(driverFS + "/moved")
}

// stopDriver sends SIGTERM and says how the driver ended.
func (g *guest) stopDriver() string {
	if g.cmd == nil || g.cmd.Process == nil {
		return "no driver"
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
		return fmt.Sprintf("driver exited after SIGTERM: %v", g.cmd.ProcessState)
	case <-time.After(time.Minute):
		_ = g.cmd.Process.Kill()
		return "driver did not exit within 1 minute of SIGTERM; killed: " + tailLog(10)
	}
}

// tailLog is the driver log's last n lines, and prints them on the console.
func tailLog(n int) string {
	b, _ := os.ReadFile(logFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	w := bufio.NewWriter(os.Stdout)
	for _, l := range lines {
		fmt.Fprintf(w, "plugin: %s\n", l)
	}
	w.Flush()
	return strings.Join(lines, " | ")
}

// Capabilities.
func mountCap(mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: flags}},
	}
}

var (
	rwx4 = mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "nfsvers=4.2")
	rwx3 = mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "nfsvers=3")
	rwo  = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
)

// nfsParams are a StorageClass's parameters plus the metadata the
// external-provisioner adds (--extra-create-metadata).
func nfsParams(share, pvc, ns, pv string, extra ...string) map[string]string {
	p := map[string]string{
		"server": "127.0.0.1", "share": share,
		"csi.storage.k8s.io/pvc/name": pvc, "csi.storage.k8s.io/pvc/namespace": ns, "csi.storage.k8s.io/pv/name": pv,
	}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

func (g *guest) create(name string, params map[string]string, vc *csi.VolumeCapability, src *csi.VolumeContentSource) (*csi.Volume, error) {
	c, cancel := ctx()
	defer cancel()
	r, err := g.ctrl.CreateVolume(c, &csi.CreateVolumeRequest{Name: name, Parameters: params,
		VolumeCapabilities: []*csi.VolumeCapability{vc}, VolumeContentSource: src,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", name, err)
	}
	return r.GetVolume(), nil
}

func (g *guest) delete(id string) error {
	c, cancel := ctx()
	defer cancel()
	if _, err := g.ctrl.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		return fmt.Errorf("DeleteVolume %s: %w", id, err)
	}
	return nil
}

func stagingPath(name string) string { return kubelet + "/plugins/staging/" + name }
func targetPath(pod, name string) string {
	return kubelet + "/pods/" + pod + "/volumes/kubernetes.io~csi/" + name + "/mount"
}

func (g *guest) stage(id, staging string, vc *csi.VolumeCapability) error {
	if err := os.MkdirAll(staging, 0o755); err != nil {
		// The kubelet goes on over a corrupted mount (ESTALE, ENOTCONN,
		// EIO: mount.IsCorruptedMnt) at the staging path, for the
		// driver to repair.
		if _, mounted := mountAt(staging); !mounted {
			return err
		}
	}
	c, cancel := ctx()
	defer cancel()
	if _, err := g.node.NodeStageVolume(c, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
		return fmt.Errorf("NodeStageVolume at %s: %w", staging, err)
	}
	return nil
}

// publish makes the target's parent directories 0755, so that the
// non-root writer of the root_squash checks can reach the mount (in a pod
// the container sees only the mount).
func (g *guest) publish(id, staging, target string, vc *csi.VolumeCapability, ro bool) error {
	if err := os.MkdirAll(parent(target), 0o755); err != nil {
		return err
	}
	c, cancel := ctx()
	defer cancel()
	if _, err := g.node.NodePublishVolume(c, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: vc, Readonly: ro}); err != nil {
		return fmt.Errorf("NodePublishVolume at %s: %w", target, err)
	}
	return nil
}

func (g *guest) unpublish(id, target string) error {
	c, cancel := ctx()
	defer cancel()
	if _, err := g.node.NodeUnpublishVolume(c, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume at %s: %w", target, err)
	}
	return nil
}

func (g *guest) unstage(id, staging string) error {
	c, cancel := ctx()
	defer cancel()
	if _, err := g.node.NodeUnstageVolume(c, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		return fmt.Errorf("NodeUnstageVolume at %s: %w", staging, err)
	}
	return nil
}

func parent(p string) string { return p[:strings.LastIndexByte(p, '/')] }

// writeRandom writes n random bytes to p, fsyncs and returns their sha256.
func writeRandom(p string, n int) (string, error) {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("fsync %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

func sumFile(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// wantSum checks that file p holds data with sum want.
func wantSum(p, want, what string) error {
	got, err := sumFile(p)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if got != want {
		return fmt.Errorf("%s: %s has sha256 %.12s, want %.12s", what, p, got, want)
	}
	return nil
}

// mountEntry is one line of /proc/mounts.
type mountEntry struct{ source, fstype, opts string }

func mountAt(dir string) (mountEntry, bool) {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return mountEntry{}, false
	}
	var found mountEntry
	ok := false
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[1] == dir {
			found, ok = mountEntry{source: f[0], fstype: f[2], opts: f[3]}, true // the last one is on top
		}
	}
	return found, ok
}

func hasOpt(opts, opt string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == opt {
			return true
		}
	}
	return false
}

// wantNFSMount checks what is mounted at dir (a stage or a publish, each
// nosuid,nodev: what a client writes to the export must not take effect on
// the node).
func wantNFSMount(dir, source, fstype, vers string) error {
	m, ok := mountAt(dir)
	if !ok {
		return fmt.Errorf("nothing mounted at %s", dir)
	}
	if m.source != source || m.fstype != fstype || !hasOpt(m.opts, "vers="+vers) || !hasOpt(m.opts, "nosuid") || !hasOpt(m.opts, "nodev") {
		return fmt.Errorf("%s: mounted %s type %s (%s), want %s type %s with vers=%s, nosuid, nodev", dir, m.source, m.fstype, m.opts, source, fstype, vers)
	}
	return nil
}

func wantNotMounted(dirs ...string) error {
	for _, d := range dirs {
		if m, ok := mountAt(d); ok {
			return fmt.Errorf("%s is still mounted (%s type %s)", d, m.source, m.fstype)
		}
	}
	return nil
}

// asTenant runs a shell command as uid/gid 1000, as a non-root pod would.
func asTenant(script string, args ...string) error {
	cmd := exec.Command("/bin/busybox", append([]string{"sh", "-c", script, "sh"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func run(name string, args ...string) error {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
