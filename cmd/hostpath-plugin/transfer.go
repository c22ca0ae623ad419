package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/gonenode"
	"github.com/hostpath-csi/hostpath-csi/internal/peers"
	"github.com/hostpath-csi/hostpath-csi/pkg/driver"
)

// The flags of restores and clones across nodes.
type transferFlags struct {
	peers, selector, namespace, kubeconfig string
	// goneNodeGrace > 0 runs the sweeper of what gone nodes left.
	goneNodeGrace time.Duration
}

// DefaultTransferPort is the transfer server's port in the deploy.
const defaultTransferPort = 9811

// serviceAccountNamespace is where Kubernetes puts a pod's namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func registerTransferFlags(fs *flag.FlagSet, f *transferFlags, cfg *driver.TransferConfig) {
	fs.StringVar(&cfg.Listen, "transfer-listen", "", "address (host:port, or :port) where this node serves its snapshots and volumes to the other nodes' drivers, for restores and clones made there; only holders of a --transfer-keys key are served; empty serves none")
	fs.StringVar(&cfg.Keys, "transfer-keys", "/etc/hostpath-csi/transfer/keys", "file of the keys that authenticate the nodes' drivers to each other (lines '<id> <base64 of at least 32 bytes>'; the first proves, all are accepted; re-read when it changes)")
	fs.StringVar(&f.peers, "transfer-peers", "", "where the other nodes' drivers are, to fetch a snapshot or volume this node does not hold: 'kubernetes' (the driver's running pods, by --transfer-pod-selector in --transfer-namespace, at their pod IP and --transfer-listen's port), or a list node=host:port,...; empty fetches from none")
	fs.StringVar(&f.selector, "transfer-pod-selector", "app.kubernetes.io/name=hostpath-csi", "label selector of the driver's pods, with --transfer-peers=kubernetes")
	fs.StringVar(&f.namespace, "transfer-namespace", "", "namespace of the driver's pods, with --transfer-peers=kubernetes (default: the pod's own)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig to reach the API server with --transfer-peers=kubernetes (default: the pod's service account)")
	fs.IntVar(&cfg.MaxTransfers, "max-concurrent-transfers", 2, "transfers to and from other nodes that run at once, each way; more wait their turn")
	fs.Var(sizeValue{&cfg.RateBytesPerSec}, "transfer-rate", "bytes per second all transfers together may send, and receive (100Mi, or bytes); default no bound")
	fs.DurationVar(&f.goneNodeGrace, "gone-node-grace", 0, "with this set, finish what a node whose Node object is deleted left: once a node has been missing this long, a deleted claim's PV on it is deleted (its data went with it) and its snapshot contents being deleted, or kept off the node, are handed to this node's csi-snapshotter; needs the API (--kubeconfig or the pod's service account); 0 is off")
	fs.DurationVar(&cfg.IdleTimeout, "transfer-idle-timeout", time.Minute, "a transfer whose peer sends nothing for this long fails")
}

// finder makes the --transfer-peers finder.
func (f *transferFlags) finder(self, listen string) (peers.Finder, error) {
	switch f.peers {
	case "":
		return nil, nil
	case "kubernetes":
		port := defaultTransferPort
		if listen != "" {
			_, p, err := net.SplitHostPort(listen)
			if err != nil {
				return nil, fmt.Errorf("--transfer-listen %q: %w", listen, err)
			}
			if port, err = strconv.Atoi(p); err != nil {
				return nil, fmt.Errorf("--transfer-listen %q: port %q is not a number", listen, p)
			}
		}
		ns := f.namespace
		if ns == "" {
			b, err := os.ReadFile(serviceAccountNamespace)
			if err != nil {
				return nil, fmt.Errorf("--transfer-peers=kubernetes needs --transfer-namespace outside a pod: %w", err)
			}
			ns = strings.TrimSpace(string(b))
		}
		k, err := peers.NewKubernetes(f.kubeconfig, ns, f.selector, port, self)
		if err != nil {
			return nil, fmt.Errorf("--transfer-peers=kubernetes: %w", err)
		}
		return k, nil
	}
	s, err := peers.ParseStatic(f.peers, self)
	if err != nil {
		return nil, fmt.Errorf("--transfer-peers: %w", err)
	}
	return s, nil
}

// startReaper runs the sweeper of what gone nodes left (--gone-node-grace),
// until ctx ends.
func (f *transferFlags) startReaper(ctx context.Context, driverName, self string) error {
	if f.goneNodeGrace <= 0 {
		return nil
	}
	cfg, err := peers.RestConfig(f.kubeconfig, "hostpath-csi-gone-nodes")
	if err != nil {
		return fmt.Errorf("--gone-node-grace: %w", err)
	}
	core, err := typedcorev1.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("--gone-node-grace: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("--gone-node-grace: %w", err)
	}
	r := &gonenode.Reaper{Core: core, Dynamic: dyn, Driver: driverName, TopologyKey: driver.TopologyKeyNode, Self: self, Grace: f.goneNodeGrace}
	every := min(time.Minute, max(f.goneNodeGrace/2, time.Second))
	go r.Run(ctx, every)
	klog.InfoS("Finishing what gone nodes leave", "grace", f.goneNodeGrace, "every", every)
	return nil
}
