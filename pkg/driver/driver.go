// Package driver serves the CSI Identity, Controller and Node services. It is
// thin on purpose: it validates requests, takes the per-volume lock, asks the
// state store and the storage backend, and maps what happened to a gRPC code.
package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/hostguard"
	"github.com/hostpath-csi/hostpath-csi/internal/keylock"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// DefaultDriverName is the CSI driver name unless --drivername says otherwise.
const DefaultDriverName = "hostpath-csi.github.io"

// TopologyKeyNode is the topology key every volume and node reports.
const TopologyKeyNode = "topology.hostpath-csi.github.io/node"

const (
	// DefaultVolumeSize is used when a request gives no capacity range.
	DefaultVolumeSize int64 = 1 << 30
	// DefaultMaxVolumeSize caps a single volume unless configured.
	DefaultMaxVolumeSize int64 = 1 << 40
)

// Config is everything the driver needs to know; cmd/hostpath-plugin fills it
// from flags.
type Config struct {
	DriverName string
	NodeID     string
	// StateDir holds the state database; DataDir holds the volumes.
	StateDir string
	DataDir  string
	// Controller and Node select the services to serve (both by default).
	Controller bool
	Node       bool
	// MaxVolumesPerNode is reported by NodeGetInfo; 0 means no limit.
	MaxVolumesPerNode int64
	// MaxVolumeSize is the largest capacity a volume may have.
	MaxVolumeSize int64
	// ImageFSType is an image volume's filesystem when the request names
	// none: ext4 or xfs (default ext4).
	ImageFSType string
	// UsageInterval is how long NodeGetVolumeStats reuses the usage it
	// measured by walking a directory volume that nothing holds to its
	// size (enforced volumes are read at once, never walked).
	UsageInterval time.Duration
	// MaxConcurrentCopies bounds the snapshot, restore and clone copies
	// that run at once; more wait their turn (default 4).
	MaxConcurrentCopies int
	// NFSOnly refuses CreateVolume for hostpath classes: a controller that
	// runs away from the nodes (overlays/nfs) serves NFS classes only.
	NFSOnly bool
	// NoModifyVolume drops ControllerModifyVolume (and the MODIFY_VOLUME
	// capability): in overlays/distributed, where csi-resizer calls the
	// controller of whichever node holds its lease, which may not be the
	// node whose disk holds the volume.
	NoModifyVolume bool
	// ReconcileRetry is how often what start-up could not reconcile is
	// retried while the driver serves (default 30 s).
	ReconcileRetry time.Duration
	// ProjectQuotas holds directory volumes with ext4/xfs project quotas
	// where the kernel has them (see hostpath.Options.ProjectQuotas: only
	// for pods in user namespaces of their own).
	ProjectQuotas bool
	// UdevRulesDir, when set, is where the driver writes (at start, before
	// it attaches any loop device) a udev rule that keeps the host from
	// probing, linking, or activating LVM or md on the loop devices of its
	// volumes: their bytes are tenants' (see internal/hostguard).
	UdevRulesDir string
	// Ephemeral bounds the CSI inline volumes pods may ask for (see
	// EphemeralConfig; zero values are the defaults).
	Ephemeral EphemeralConfig
	// Transfer turns on restores and clones from snapshots and volumes
	// that other nodes hold (see TransferConfig; off when empty).
	Transfer TransferConfig
	// NFS configures the NFS backend: its mount directory (default
	// <StateDir>/nfs), the timeout on every operation on an export
	// (default 2 minutes) and the mounter (mount(8) by default).
	NFS nfs.Options
}

func (c *Config) validate() error {
	var problems []string
	if c.DriverName == "" {
		problems = append(problems, "driver name is empty")
	}
	if c.NodeID == "" {
		problems = append(problems, "node ID is empty")
	}
	if c.StateDir == "" {
		problems = append(problems, "state directory is empty")
	}
	if c.DataDir == "" {
		problems = append(problems, "data directory is empty")
	}
	if !c.Controller && !c.Node {
		problems = append(problems, "neither the controller nor the node service is enabled")
	}
	if c.MaxVolumesPerNode < 0 {
		problems = append(problems, "max volumes per node is negative")
	}
	if c.MaxConcurrentCopies <= 0 {
		c.MaxConcurrentCopies = 4
	}
	if c.ImageFSType == "" {
		c.ImageFSType = DefaultImageFSType
	}
	if c.ImageFSType != hostpath.ImageExt4 && c.ImageFSType != hostpath.ImageXFS {
		problems = append(problems, "image filesystem type must be ext4 or xfs")
	}
	if c.NFS.MountDir == "" && c.StateDir != "" {
		c.NFS.MountDir = filepath.Join(c.StateDir, "nfs")
	}
	if c.NFS.Timeout < 0 {
		problems = append(problems, "NFS timeout is negative")
	}
	if c.Ephemeral.SweepAfter <= 0 {
		c.Ephemeral.SweepAfter = DefaultEphemeralSweepAfter
	}
	if c.MaxVolumeSize <= 0 {
		problems = append(problems, "max volume size must be positive")
	} else if !c.Ephemeral.Disabled {
		problems = append(problems, c.Ephemeral.check(c.MaxVolumeSize, c.ImageFSType)...)
	}
	if len(problems) > 0 {
		return errors.New("invalid configuration: " + strings.Join(problems, "; "))
	}
	return nil
}

// core is what both families of volumes share: the configuration, the state
// database of this node, the per-key locks and the detached jobs.
type core struct {
	cfg   Config
	store *state.Store
	// locks holds one readers-writer lock per key; different volumes never
	// share a key:
	//   vol/<id>       shared by whatever needs the volume to stay (mounts,
	//                  copies from it), exclusive for its delete
	//   node/<id>      exclusive for the volume's stage, publish and their undo
	//   snap/<id>      shared by restores from the snapshot, exclusive for
	//                  its delete
	//   name/<name>, snapname/<name>, groupname/<name>, group/<id>
	//                  exclusive while a create or delete by that name or ID
	//                  is set up
	locks keylock.Locks
	// jobs are the copies that run detached from their calls.
	jobs    *jobs
	metrics *metrics
	// beforeCopy, when set (tests only), runs at the start of every copy
	// job with the ID of what it makes: a seam to hold a copy at an exact
	// step or fail it there.
	beforeCopy func(ctx context.Context, id string) error
}

// Driver serves the CSI services over two families of volumes, hostpath and
// NFS, each an implementation of the spec's controller and node services of
// its own. The Driver is their router (router.go): it answers Identity, the
// capabilities, group snapshots (of hostpath volumes) and the listings that
// span both families, and hands every other call to one family, chosen once
// per call by the class's parameters or the ID's prefix.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	csi.UnimplementedGroupControllerServer
	csi.UnimplementedSnapshotMetadataServer

	*core

	// healthMu runs one health check at a time: /healthz answers anyone on
	// the pod network, and each check writes a file in the data directory.
	healthMu sync.Mutex

	// hostpath serves the volumes of the data directory (IDs hpv1-).
	hostpath *hostpathDriver
	// nfs serves the volumes of NFS classes (IDs nfs1:, nfss1:).
	nfs *nfsDriver
	// pending is what start-up could not reconcile, retried meanwhile.
	pending *pending
	// markers is the directory of freeze markers, held for the process's
	// life (see thawLeftFrozen).
	markers *os.File
}

// New opens the backend and the state, and reconciles what a crash may have
// interrupted, before anything is served.
func New(cfg Config) (*Driver, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// First of all, before the backend's self-tests and the state: a pod
	// writing to a filesystem that a killed snapshot left frozen hangs
	// until it is thawed.
	markers, thawed, err := thawLeftFrozen(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	if cfg.UdevRulesDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			markers.Close()
			return nil, fmt.Errorf("data directory: %w", err)
		}
		path, err := hostguard.Install(cfg.UdevRulesDir, cfg.DriverName, cfg.DataDir)
		if err != nil {
			markers.Close()
			return nil, err
		}
		klog.InfoS("Host guard: udev leaves the loop devices of volumes alone", "rule", path)
		// Devices attached before the rule existed (an upgrade, the guard
		// turned on): a change event makes udev drop what it did on them.
		devs, err := hostguard.Retrigger("/sys", cfg.DataDir)
		if err != nil {
			klog.ErrorS(err, "Host guard: could not send change events; run `udevadm trigger --action=change` for the volumes' loop devices", "triggered", devs)
		} else if len(devs) > 0 {
			klog.InfoS("Host guard: change events sent to the volumes' loop devices", "devices", devs)
		}
	}
	vols, err := hostpath.New(cfg.DataDir, hostpath.Options{FreezeMarkers: markers.Name(), ProjectQuotas: cfg.ProjectQuotas})
	if err != nil {
		markers.Close()
		return nil, err
	}
	store, err := state.Open(cfg.StateDir)
	if err != nil {
		markers.Close()
		return nil, err
	}
	nfsVols, err := nfs.New(cfg.NFS)
	if err != nil {
		store.Close()
		markers.Close()
		return nil, err
	}
	c := &core{cfg: cfg, store: store, jobs: newJobs(cfg.MaxConcurrentCopies), metrics: newMetrics(cfg.DriverName)}
	nd := &nfsDriver{core: c, exports: nfsVols}
	d := &Driver{core: c, hostpath: &hostpathDriver{core: c, vols: vols, nfs: nd}, nfs: nd, markers: markers}
	d.metrics.registry.MustRegister(stateCollector{d})
	for range thawed {
		d.metrics.reconcileAction("thawed_image")
	}
	problems := d.reconcile()
	every := cfg.ReconcileRetry
	if every <= 0 {
		every = 30 * time.Second
	}
	d.pending = startPending(problems, every)
	if cfg.Node {
		d.hostpath.startEphemeralSweep(cfg.Ephemeral.SweepAfter)
	}
	// After the reconcile: a peer is served only what is on record.
	if err := d.hostpath.startTransfer(); err != nil {
		d.Close()
		return nil, err
	}
	if limit, why := vols.DirectoryLimit(); limit == hostpath.EnforceNone {
		klog.InfoS("Directory volumes are NOT held to their size on this data directory: a pod can fill it past its volume's capacity; use StorageClass parameter layout: image for sizes that hold", "why", why)
	} else {
		klog.InfoS("Directory volumes are held to their size", "by", limit)
	}
	d.hostpath.warnQgroupVolumes()
	if e := cfg.Ephemeral; e.Disabled {
		klog.InfoS("Inline (CSI ephemeral) volumes are turned off (--ephemeral=false); those pods have are served until they go")
	} else {
		klog.InfoS("Inline (CSI ephemeral) volumes are images, bounded", "maxSize", e.MaxSize, "defaultSize", e.DefaultSize,
			"maxSharePercent", e.MaxSharePercent, "maxCount", e.MaxCount,
			"maxSharePerNamespacePercent", e.MaxSharePerNamespacePercent, "maxCountPerNamespace", e.MaxCountPerNamespace, "podMaySet", e.AllowedAttributes, "mountPermissions", e.MountPermissions)
	}
	klog.InfoS("Driver ready", "driver", cfg.DriverName, "version", Version(), "node", cfg.NodeID,
		"controller", cfg.Controller, "nodeService", cfg.Node, "dataDir", vols.Root(), "stateDB", store.Path())
	return d, nil
}

// Close cancels the copies still running (each rolls back what it made;
// the CO's retry starts it again), finishes background removals and closes
// the state database.
func (d *Driver) Close() error {
	d.hostpath.stopTransfer()
	d.hostpath.stopEphemeralSweep()
	d.pending.close()
	d.jobs.close()
	d.nfs.waitSweeps()
	d.hostpath.vols.WaitIdle()
	d.nfs.exports.WaitIdle()
	d.nfs.exports.Close()
	err := d.store.Close()
	d.markers.Close()
	return err
}

// frozenDir holds the markers of the image filesystems this driver has
// frozen (see hostpath.ThawMarked), under the state directory.
const frozenDir = "frozen"

// thawLeftFrozen thaws the filesystems a killed snapshot left frozen, from
// their markers, and returns the markers' directory, held (flock) for as
// long as this process runs: a second driver on the same state directory
// must not thaw a freeze that a running one holds for its copy.
func thawLeftFrozen(stateDir string) (*os.File, []string, error) {
	dir := filepath.Join(stateDir, frozenDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create freeze marker directory: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("open freeze marker directory: %w", err)
	}
	// A driver restarted at once may find its predecessor still exiting:
	// wait for it as long as the state database would.
	for wait := 0; ; wait++ {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || wait == 40 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("lock %s: another process holds it (is a second driver running on the same --state-dir?): %w", dir, err)
	}
	thawed, err := hostpath.ThawMarked(dir)
	for _, p := range thawed {
		klog.InfoS("Thawed an image filesystem a kill left frozen during a snapshot", "path", p)
	}
	if err != nil {
		// Serving is what lets the kubelet unmount; what stayed frozen
		// is logged, and the next start tries its marker again.
		klog.ErrorS(err, "Cannot thaw every filesystem a kill left frozen")
	}
	return f, thawed, nil
}

// Register adds the enabled services to a gRPC server.
func (d *Driver) Register(r grpc.ServiceRegistrar) {
	csi.RegisterIdentityServer(r, d)
	if d.cfg.Controller {
		csi.RegisterControllerServer(r, d)
		csi.RegisterGroupControllerServer(r, d)
	}
	if d.servesSnapshotMetadata() {
		csi.RegisterSnapshotMetadataServer(r, d)
	}
	if d.cfg.Node {
		csi.RegisterNodeServer(r, d)
	} else {
		// A controller alone (overlays/nfs) still answers
		// NodeGetCapabilities, with none: csi-resizer asks it when the
		// controller does not expand, and exits on any error, which would
		// also take its ControllerModifyVolume calls away.
		csi.RegisterNodeServer(r, noNode{})
	}
}

// noNode is the node service of a driver that serves none: every call but
// NodeGetCapabilities is UNIMPLEMENTED.
type noNode struct{ csi.UnimplementedNodeServer }

func (noNode) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}
