// Command csi-resizer is the end-to-end test's stand-in for
// kubernetes-csi/external-resizer, which is not on the Go module proxy. It
// makes the API updates the real sidecar makes (external-resizer v2,
// pkg/controller/expand_and_recover.go, with RecoverVolumeExpansionFailure
// on as it is by default):
//
//  1. a bound claim of this driver asks for more than its status capacity:
//     the claim's status gets allocatedResources = the new size,
//     allocatedResourceStatuses[storage] = ControllerResizeInProgress and
//     a Resizing condition;
//  2. the volume is grown: with the controller EXPAND_VOLUME capability by
//     ControllerExpandVolume; a driver with only the node EXPAND_VOLUME
//     capability gets no call (the real sidecar's "trivial resizer") and the
//     kubelet grows the volume on its node;
//  3. the PV's capacity is raised (with the pre-resize-capacity annotation
//     when the node still has to act);
//  4. the claim is marked NodeResizePending with a FileSystemResizePending
//     condition when the node must act, or else finished (status capacity
//     raised, resize status and conditions cleared).
//
// For a driver with the controller MODIFY_VOLUME capability it also runs
// the real sidecar's modify controller (modify.go): a claim's
// VolumeAttributesClass becomes a ControllerModifyVolume call.
//
// Under --leader-election only the holder of the Lease
// external-resizer-<driver name> acts, as with the real sidecar.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

var (
	csiAddress     = flag.String("csi-address", "/run/csi/socket", "path of the CSI driver socket")
	kubeconfig     = flag.String("kubeconfig", "", "kubeconfig file; empty means in-cluster")
	timeout        = flag.Duration("timeout", 10*time.Second, "timeout of each call to the driver")
	workers        = flag.Int("workers", 10, "claims processed at once")
	resyncPeriod   = flag.Duration("resync-period", 10*time.Minute, "informer resync period")
	leaderElection = flag.Bool("leader-election", false, "act only while holding the Lease external-resizer-<driver>")
	leNamespace    = flag.String("leader-election-namespace", "", "namespace of the Lease; empty means this pod's")
)

func main() {
	klog.InitFlags(nil)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	cfg, err := restConfig()
	if err != nil {
		fatal(err, "No Kubernetes client configuration")
	}
	kube := kubernetes.NewForConfigOrDie(cfg)

	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fatal(err, "Bad CSI address", "csiAddress", *csiAddress)
	}
	name, mode, err := probeDriver(ctx, conn)
	if err != nil {
		fatal(err, "Could not learn what the driver supports")
	}
	modify, err := supportsModify(ctx, conn)
	if err != nil {
		fatal(err, "Could not learn whether the driver modifies volumes")
	}
	klog.InfoS("Driver found", "driver", name, "expansion", mode, "modify", modify)
	if mode == noExpansion && !modify {
		fatal(fmt.Errorf("CSI driver %s neither supports resize nor modify volume", name), "Nothing to do")
	}

	run := func(ctx context.Context) {
		factory := informers.NewSharedInformerFactory(kube, *resyncPeriod)
		broadcaster := record.NewBroadcaster(record.WithContext(ctx))
		broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
		c := newController(name, mode, csi.NewControllerClient(conn), kube, factory,
			broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "external-resizer " + name}))
		var m *modifier
		if modify {
			// A driver without MODIFY_VOLUME gets no modify controller,
			// as csi_modifier.go's ModifyNotSupportErr does.
			m = newModifier(c, csi.NewControllerClient(conn), factory)
		}
		factory.Start(ctx.Done())
		if mode == noExpansion {
			m.run(ctx, *workers)
			return
		}
		if m != nil {
			go m.run(ctx, *workers)
		}
		c.run(ctx, *workers)
	}
	if !*leaderElection {
		run(ctx)
		return
	}
	ns := *leNamespace
	if ns == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			fatal(err, "--leader-election needs --leader-election-namespace outside a pod")
		}
		ns = string(b)
	}
	host, _ := os.Hostname()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1ObjectMeta("external-resizer-"+sanitize(name), ns),
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: fmt.Sprintf("%s_%d", host, os.Getpid())},
	}
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     5 * time.Second,
		ReleaseOnCancel: true,
		Name:            lock.LeaseMeta.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: run,
			OnStoppedLeading: func() { klog.InfoS("Stopped leading", "lease", lock.LeaseMeta.Name) },
			OnNewLeader:      func(id string) { klog.InfoS("Leader", "identity", id) },
		},
	})
}

func restConfig() (*rest.Config, error) {
	if *kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", *kubeconfig)
	}
	return rest.InClusterConfig()
}

func fatal(err error, msg string, kv ...any) {
	klog.ErrorS(err, msg, kv...)
	klog.FlushAndExit(klog.ExitFlushTimeout, 1)
}

// sanitize makes a driver name fit an object name, as csi-lib-utils does
// for the Lease: anything but letters, digits and '-' becomes '-'.
func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return string(b)
}

// expansionMode is how a driver grows volumes.
type expansionMode string

const (
	controllerExpansion expansionMode = "controller" // ControllerExpandVolume, then maybe the node
	nodeOnlyExpansion   expansionMode = "node-only"  // no call here; the kubelet calls NodeExpandVolume
	noExpansion         expansionMode = "none"       // no resize controller
)

// probeDriver learns the driver's name and how it expands volumes, waiting
// for the socket to answer, and refuses a driver that cannot expand at all,
// as the real sidecar does ("CSI driver does not support resize nor modify").
func probeDriver(ctx context.Context, conn *grpc.ClientConn) (string, expansionMode, error) {
	var name string
	err := wait.PollUntilContextCancel(ctx, time.Second, true, func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(cctx, &csi.GetPluginInfoRequest{})
		if err != nil {
			klog.InfoS("Waiting for the driver", "csiAddress", *csiAddress, "err", err)
			return false, nil
		}
		name = info.GetName()
		return true, nil
	})
	if err != nil {
		return "", "", err
	}
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	plugin, err := csi.NewIdentityClient(conn).GetPluginCapabilities(cctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		return "", "", fmt.Errorf("GetPluginCapabilities: %w", err)
	}
	hasController := false
	for _, c := range plugin.GetCapabilities() {
		if c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE {
			hasController = true
		}
	}
	if !hasController {
		return "", "", fmt.Errorf("driver %s has no controller service", name)
	}
	ctrl, err := csi.NewControllerClient(conn).ControllerGetCapabilities(cctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return "", "", fmt.Errorf("ControllerGetCapabilities: %w", err)
	}
	for _, c := range ctrl.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_EXPAND_VOLUME {
			return name, controllerExpansion, nil
		}
	}
	node, err := csi.NewNodeClient(conn).NodeGetCapabilities(cctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		return "", "", fmt.Errorf("NodeGetCapabilities: %w", err)
	}
	for _, c := range node.GetCapabilities() {
		if c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_EXPAND_VOLUME {
			return name, nodeOnlyExpansion, nil
		}
	}
	// Neither: the caller runs the modify controller alone, if the driver
	// modifies, as the real sidecar does on ResizeNotSupportErr.
	return name, noExpansion, nil
}

// supportsModify reports whether the driver has the controller
// MODIFY_VOLUME capability.
func supportsModify(ctx context.Context, conn *grpc.ClientConn) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	ctrl, err := csi.NewControllerClient(conn).ControllerGetCapabilities(cctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return false, fmt.Errorf("ControllerGetCapabilities: %w", err)
	}
	for _, c := range ctrl.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_MODIFY_VOLUME {
			return true, nil
		}
	}
	return false, nil
}

type controller struct {
	driver   string
	mode     expansionMode
	csi      csi.ControllerClient
	kube     kubernetes.Interface
	claims   cache.Indexer
	volumes  cache.Indexer
	synced   []cache.InformerSynced
	queue    workqueue.TypedRateLimitingInterface[string]
	recorder record.EventRecorder
}

func newController(driver string, mode expansionMode, cc csi.ControllerClient, kube kubernetes.Interface,
	factory informers.SharedInformerFactory, recorder record.EventRecorder) *controller {
	pvcs := factory.Core().V1().PersistentVolumeClaims().Informer()
	pvs := factory.Core().V1().PersistentVolumes().Informer()
	c := &controller{
		driver: driver, mode: mode, csi: cc, kube: kube, recorder: recorder,
		claims:  pvcs.GetIndexer(),
		volumes: pvs.GetIndexer(),
		synced:  []cache.InformerSynced{pvcs.HasSynced, pvs.HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "claims"}),
	}
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	_, _ = pvcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	return c
}

func (c *controller) run(ctx context.Context, workers int) {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return
	}
	klog.InfoS("Resizer started", "driver", c.driver, "mode", c.mode)
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for c.processNext(ctx) {
			}
		}, time.Second)
	}
	<-ctx.Done()
}

func (c *controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	if err := c.sync(ctx, key); err != nil {
		klog.ErrorS(err, "Resize failed; will retry", "pvc", key)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}
