// Package peers finds the other nodes' drivers: where a restore or a clone
// made on one node fetches a snapshot or volume that another node holds.
//
// In a cluster the driver's pods are the peers (the DaemonSet's pods,
// found by label in the driver's namespace, each at its pod IP). A static
// list serves tests and clusters without the API. Being listed gives a peer
// nothing: every fetch is authenticated by the transfer channel's key
// (internal/transfer), so a pod that forges the label, or an address that
// is not a driver, is refused.
package peers

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Peer is another node's driver.
type Peer struct {
	Node string // the node's name (its driver's --nodeid)
	// Addr is host:port of its transfer server; empty while the node's
	// driver pod is not running (starting, or replaced in a rolling
	// update): that node may hold what is asked for, and cannot say.
	Addr string
}

// Finder lists the drivers of the other nodes.
type Finder interface {
	Peers(ctx context.Context) ([]Peer, error)
}

// Static is a fixed list of peers.
type Static []Peer

// Peers returns the list.
func (s Static) Peers(context.Context) ([]Peer, error) { return append([]Peer(nil), s...), nil }

// ParseStatic reads "node=host:port,node=host:port" (the --transfer-peers
// flag's static form), leaving out self.
func ParseStatic(list, self string) (Static, error) {
	var out Static
	seen := map[string]bool{}
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		node, addr, ok := strings.Cut(item, "=")
		if !ok || node == "" {
			return nil, fmt.Errorf("peer %q is not node=host:port", item)
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return nil, fmt.Errorf("peer %q: address %q is not host:port", item, addr)
		}
		if seen[node] {
			return nil, fmt.Errorf("peer %q: node %s is listed twice", item, node)
		}
		seen[node] = true
		if node != self {
			out = append(out, Peer{Node: node, Addr: addr})
		}
	}
	return out, nil
}

// Kubernetes finds the peers as the running pods that match Selector in
// Namespace, on nodes other than Self, at their pod IP and Port.
type Kubernetes struct {
	Pods      typedcorev1.PodsGetter
	Namespace string
	Selector  labels.Selector
	Port      int
	Self      string
}

// NewKubernetes connects to the API server: with kubeconfig when it is set,
// as the pod's service account otherwise.
func NewKubernetes(kubeconfig, namespace, selector string, port int, self string) (*Kubernetes, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("peer pod selector %q: %w", selector, err)
	}
	if namespace == "" {
		return nil, fmt.Errorf("the namespace of the driver's pods is not set")
	}
	cfg, err := RestConfig(kubeconfig, "hostpath-csi-transfer")
	if err != nil {
		return nil, err
	}
	client, err := typedcorev1.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Kubernetes{Pods: client, Namespace: namespace, Selector: sel, Port: port, Self: self}, nil
}

// RestConfig is how the driver reaches the API server: with kubeconfig
// when it is set, as the pod's service account otherwise.
func RestConfig(kubeconfig, userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	cfg.UserAgent = userAgent
	return cfg, nil
}

// Peers lists the driver pods on other nodes, one per node (the newest
// running one where a rolling update runs two), in node order; a node whose
// only pods are not running, or going, is listed without an address.
func (k *Kubernetes) Peers(ctx context.Context) ([]Peer, error) {
	list, err := k.Pods.Pods(k.Namespace).List(ctx, metav1.ListOptions{LabelSelector: k.Selector.String()})
	if err != nil {
		return nil, fmt.Errorf("list the driver's pods in namespace %s: %w", k.Namespace, err)
	}
	return fromPods(list.Items, k.Port, k.Self), nil
}

func fromPods(pods []corev1.Pod, port int, self string) []Peer {
	newest := map[string]*corev1.Pod{}
	nodes := map[string]bool{}
	for i := range pods {
		p := &pods[i]
		node := p.Spec.NodeName
		if node == "" || node == self {
			continue
		}
		nodes[node] = true
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			continue
		}
		if o := newest[node]; o == nil || o.CreationTimestamp.Before(&p.CreationTimestamp) {
			newest[node] = p
		}
	}
	out := make([]Peer, 0, len(nodes))
	for node := range nodes {
		peer := Peer{Node: node}
		if p := newest[node]; p != nil {
			peer.Addr = net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port))
		}
		out = append(out, peer)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}
