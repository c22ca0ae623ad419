// Command hostpath-plugin serves the hostpath-csi CSI driver on a unix socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/size"
	"github.com/hostpath-csi/hostpath-csi/pkg/driver"
)

func main() {
	if err := run(); err != nil {
		klog.ErrorS(err, "hostpath-plugin failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

type options struct {
	cfg          driver.Config
	transfer     transferFlags
	endpoint     string
	httpEndpoint string
	showVersion  bool
	drainTimeout time.Duration
}

func parseFlags() *options {
	fs := flag.CommandLine
	o, ephemeral, modify, allowed := registerFlags(fs)
	klog.InitFlags(fs)
	flag.Parse()
	return finishFlags(fs, o, ephemeral, modify, allowed)
}

// registerFlags defines every flag of the driver (klog's aside) on fs; the
// docs' flags table is checked against it (TestFlagsTableListsEveryFlag).
func registerFlags(fs *flag.FlagSet) (o *options, ephemeral, modify *bool, allowed *string) {
	hostname, _ := os.Hostname()
	o = &options{}
	fs.StringVar(&o.endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint: unix:///path/to/socket")
	fs.StringVar(&o.cfg.DriverName, "drivername", driver.DefaultDriverName, "name of the driver, as in the CSIDriver object and StorageClass provisioner")
	fs.StringVar(&o.cfg.NodeID, "nodeid", hostname, "ID of this node; must be stable across restarts (defaults to the hostname)")
	fs.StringVar(&o.cfg.StateDir, "state-dir", "/var/lib/hostpath-csi/state", "directory of the state database")
	fs.StringVar(&o.cfg.DataDir, "data-dir", "/var/lib/hostpath-csi/data", "directory under which volumes are kept")
	fs.BoolVar(&o.cfg.Controller, "controller", false, "serve the controller service (with --node: both; with neither: both)")
	fs.BoolVar(&o.cfg.Node, "node", false, "serve the node service (with --controller: both; with neither: both)")
	fs.Int64Var(&o.cfg.MaxVolumesPerNode, "max-volumes-per-node", 0, "volumes a node may have published, reported to the scheduler; 0 means no limit")
	fs.Int64Var(&o.cfg.MaxVolumeSize, "max-volume-size", driver.DefaultMaxVolumeSize, "largest volume capacity in bytes; larger requests fail with OutOfRange")
	fs.StringVar(&o.cfg.ImageFSType, "image-fstype", driver.DefaultImageFSType, "filesystem of an image volume (layout: image) whose class names none (csi.storage.k8s.io/fstype): ext4 or xfs")
	fs.IntVar(&o.cfg.MaxConcurrentCopies, "max-concurrent-copies", 4, "snapshot, restore and clone copies that run at once; more wait their turn (a retry meanwhile is ABORTED)")
	fs.Bool("btrfs-quotas", true, "deprecated, no effect: a btrfs qgroup limit does not hold a directory volume (a pod escapes it by making a subvolume inside), so the driver no longer turns btrfs quotas on; volumes made with qgroup limits keep them")
	fs.DurationVar(&o.cfg.UsageInterval, "usage-interval", time.Minute, "how long NodeGetVolumeStats reuses the usage it measured by walking a directory volume that nothing holds to its size (enforced volumes are read at once)")
	fs.DurationVar(&o.cfg.NFS.Timeout, "nfs-timeout", nfs.DefaultTimeout, "bound on every mount, unmount and file operation on an NFS export; a server that does not answer in time fails the call with DeadlineExceeded naming it")
	fs.BoolVar(&o.cfg.NFSOnly, "nfs-only", false, "serve NFS classes only: a CreateVolume whose class names no server is InvalidArgument (for a controller that does not run beside the node's data, as in overlays/nfs)")
	fs.StringVar(&o.cfg.NFS.MountDir, "nfs-mount-dir", "", "directory of the controller's private mounts of NFS export roots (default <state-dir>/nfs)")
	fs.BoolVar(&o.cfg.ProjectQuotas, "project-quotas", false, "hold directory volumes with ext4/xfs project quotas where the kernel has them; only where every pod runs in a user namespace of its own (hostUsers: false): from the host's, a file's owner can change its project ID and leave the quota")
	fs.StringVar(&o.cfg.UdevRulesDir, "udev-rules-dir", "", "the host's udev rules directory (e.g. /etc/udev/rules.d mounted into the pod): the driver writes a rule there that keeps udev, LVM and md from probing, linking or activating what tenants write into the loop devices of volumes; empty leaves the host's udev alone")
	modify = fs.Bool("modify-volume", true, "serve ControllerModifyVolume (VolumeAttributesClass): false drops it and the MODIFY_VOLUME capability, as overlays/distributed does, where csi-resizer calls the driver of whichever node holds its lease and a volume's data is on one node only")
	ephemeral = fs.Bool("ephemeral", true, "serve CSI inline (ephemeral) volumes, bounded by the --ephemeral-* flags; false refuses new ones (FailedPrecondition) and serves those pods have until they go (also drop Ephemeral from the CSIDriver's volumeLifecycleModes)")
	// Sizes left at 0 take the driver's defaults: 1Gi (256Mi for the
	// default size), or the max where that is smaller.
	fs.Var(sizeValue{&o.cfg.Ephemeral.MaxSize}, "ephemeral-max-size", "largest inline volume a pod may ask for (1Gi, 500Mi, or bytes); larger is InvalidArgument (default 1Gi, or --max-volume-size if smaller)")
	fs.Var(sizeValue{&o.cfg.Ephemeral.DefaultSize}, "ephemeral-default-size", "size of an inline volume whose pod names none (default 256Mi, or --ephemeral-max-size if smaller; an xfs image is at least 300Mi)")
	fs.IntVar(&o.cfg.Ephemeral.MaxSharePercent, "ephemeral-max-share", driver.DefaultEphemeralMaxShare, "percentage (1-100) of the node's room for volumes (what is available plus what inline volumes hold) all inline volumes together may hold; past it a new one is ResourceExhausted")
	fs.IntVar(&o.cfg.Ephemeral.MaxCount, "ephemeral-max-count", driver.DefaultEphemeralMaxCount, "inline volumes a node has at most; past it a new one is ResourceExhausted")
	fs.IntVar(&o.cfg.Ephemeral.MaxSharePerNamespacePercent, "ephemeral-max-share-per-namespace", driver.DefaultEphemeralMaxSharePerNamespace, "percentage (1-100) of what inline volumes may hold together (--ephemeral-max-share) the inline volumes of one namespace may hold on the node; past it a new one is ResourceExhausted (100 and --ephemeral-max-count-per-namespace equal to --ephemeral-max-count: no bounds per namespace)")
	fs.IntVar(&o.cfg.Ephemeral.MaxCountPerNamespace, "ephemeral-max-count-per-namespace", 0, "inline volumes one namespace has on the node at most (at most --ephemeral-max-count); past it a new one is ResourceExhausted (default a quarter of --ephemeral-max-count, at least 1)")
	allowed = fs.String("ephemeral-allowed-attributes", strings.Join(driver.DefaultEphemeralAllowedAttributes, ","), "comma-separated volume attributes a pod may set on an inline volume, of size and mountPermissions (empty: none); others are InvalidArgument unless they ask what the node gives anyway (layout: image, the only layout of an inline volume, is always accepted)")
	fs.StringVar(&o.cfg.Ephemeral.MountPermissions, "ephemeral-mount-permissions", fmt.Sprintf("%04o", uint32(driver.DefaultMountPermissions)), "octal mode of an inline volume's root, unless the pod may set mountPermissions and does")
	registerTransferFlags(fs, &o.transfer, &o.cfg.Transfer)
	fs.StringVar(&o.httpEndpoint, "http-endpoint", "", "address (host:port, or :port for every address) of the HTTP server for /healthz and /metrics; empty disables it")
	fs.DurationVar(&o.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight calls may take to finish")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	return o, ephemeral, modify, allowed
}

// finishFlags turns the parsed flags into options.
func finishFlags(fs *flag.FlagSet, o *options, ephemeral, modify *bool, allowed *string) *options {
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "btrfs-quotas" {
			klog.InfoS("Flag --btrfs-quotas is deprecated and has no effect: qgroup limits do not hold a btrfs directory volume; use StorageClass parameter layout: image for sizes that hold")
		}
	})
	o.cfg.Ephemeral.Disabled = !*ephemeral
	o.cfg.NoModifyVolume = !*modify
	o.cfg.Ephemeral.AllowedAttributes = []string{} // not nil: none unless listed
	for _, a := range strings.Split(*allowed, ",") {
		if a = strings.TrimSpace(a); a != "" {
			o.cfg.Ephemeral.AllowedAttributes = append(o.cfg.Ephemeral.AllowedAttributes, a)
		}
	}
	if !o.cfg.Controller && !o.cfg.Node {
		o.cfg.Controller, o.cfg.Node = true, true
	}
	return o
}

func run() error {
	o := parseFlags()
	if o.showVersion {
		fmt.Println(os.Args[0], driver.Version())
		return nil
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q; all settings are flags (see -help)", flag.Args())
	}
	// Zero is the driver's default in its Config; given as a flag it is a
	// mistake (--ephemeral=false turns inline volumes off).
	var zero []string
	flag.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "ephemeral-max-size", "ephemeral-default-size", "ephemeral-max-share", "ephemeral-max-count",
			"ephemeral-max-share-per-namespace", "ephemeral-max-count-per-namespace":
			if v, ok := f.Value.(flag.Getter); ok && fmt.Sprint(v.Get()) == "0" {
				zero = append(zero, "--"+f.Name)
			}
		}
	})
	if len(zero) > 0 {
		return fmt.Errorf("%s must be positive (to turn inline volumes off: --ephemeral=false)", strings.Join(zero, ", "))
	}
	peers, err := o.transfer.finder(o.cfg.NodeID, o.cfg.Transfer.Listen)
	if err != nil {
		return err
	}
	o.cfg.Transfer.Peers = peers
	d, err := driver.New(o.cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	reapCtx, stopReaper := context.WithCancel(context.Background())
	defer stopReaper()
	if err := o.transfer.startReaper(reapCtx, o.cfg.DriverName, o.cfg.NodeID); err != nil {
		return err
	}

	l, err := driver.Listen(o.endpoint)
	if err != nil {
		return err
	}
	srv := d.NewGRPCServer()
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(l) }()
	klog.InfoS("Serving CSI", "endpoint", o.endpoint)

	var httpSrv *http.Server
	if o.httpEndpoint != "" {
		httpSrv, err = startHTTP(o.httpEndpoint, d, serveErr)
		if err != nil {
			srv.Stop()
			return err
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-sigs:
		klog.InfoS("Shutting down: no new calls, waiting for in-flight ones", "signal", sig, "timeout", o.drainTimeout)
	case err := <-serveErr:
		srv.Stop()
		return fmt.Errorf("server stopped: %w", err)
	}
	if httpSrv != nil {
		_ = httpSrv.Shutdown(context.Background())
	}
	drained := make(chan struct{})
	go func() { srv.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(o.drainTimeout):
		klog.InfoS("Drain timeout reached; cancelling the calls still running")
		srv.Stop()
	}
	return nil
}

func startHTTP(addr string, d *driver.Driver, errs chan<- error) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/healthz", d.HealthzHandler())
	mux.Handle("/metrics", d.MetricsHandler())
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http endpoint: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- err
		}
	}()
	klog.InfoS("Serving HTTP", "address", l.Addr().String())
	return srv, nil
}

// sizeValue is a flag of bytes written as a Kubernetes quantity (1Gi, 500Mi,
// or a number of bytes).
type sizeValue struct{ p *int64 }

func (v sizeValue) String() string {
	if v.p == nil || *v.p == 0 {
		return "" // the driver's default, which the usage names
	}
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"Ti", 40}, {"Gi", 30}, {"Mi", 20}, {"Ki", 10}} {
		if n := *v.p; n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(*v.p, 10)
}

func (v sizeValue) Get() any { return *v.p }

func (v sizeValue) Set(s string) error {
	n, err := size.Parse(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}
