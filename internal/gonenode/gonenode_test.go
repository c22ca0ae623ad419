package gonenode

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
)

const (
	driver = "hostpath-csi.github.io"
	key    = "topology.hostpath-csi.github.io/node"
)

func pv(name, node string, phase corev1.PersistentVolumePhase, policy corev1.PersistentVolumeReclaimPolicy, drv string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Finalizers: []string{"kubernetes.io/pv-protection", ProvisionerFinalizer}},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: policy,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: drv, VolumeHandle: "hpv1-" + name}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: phase},
	}
}

func content(name, node, handle string, deleting bool) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": name, "labels": map[string]any{ManagedByLabel: node}},
		"spec":     map[string]any{"driver": driver, "deletionPolicy": "Delete"},
		"status":   map[string]any{"snapshotHandle": handle},
	}}
	if deleting {
		now := metav1.Now()
		u.SetDeletionTimestamp(&now)
		u.SetFinalizers([]string{"snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection"})
	}
	return u
}

func TestSweepActsOnlyOnGoneNodesAfterGrace(t *testing.T) {
	core := fake.NewSimpleClientset(
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}},
		pv("released-on-gone", "node-2", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete, driver),
		pv("bound-on-gone", "node-2", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete, driver),
		pv("retained-on-gone", "node-2", corev1.VolumeReleased, corev1.PersistentVolumeReclaimRetain, driver),
		pv("released-on-live", "node-1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete, driver),
		pv("other-driver", "node-2", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete, "other.csi.io"),
	)
	scheme := runtime.NewScheme()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme,
		map[schema.GroupVersionResource]string{contentsResource: "VolumeSnapshotContentList"},
		content("deleting-on-gone", "node-2", "hps1-0123456789abcdef0123456789abcdef", true),
		content("kept-on-gone", "node-2", "hps1-1123456789abcdef0123456789abcdef", false),
		content("off-node-on-gone", "node-2", "nfss1:nfs.example.com:/srv:0123456789abcdef", false),
		content("deleting-on-live", "node-1", "hps1-2123456789abcdef0123456789abcdef", true),
	)
	clock := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	r := &Reaper{Core: core.CoreV1(), Dynamic: dyn, Driver: driver, TopologyKey: key, Self: "node-1", Grace: time.Minute,
		now: func() time.Time { return clock }}
	ctx := context.Background()

	// First sight of node-2 missing: nothing done yet.
	res, err := r.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.PVsDeleted)+len(res.ContentsHanded) != 0 || !slices.Equal(res.NodesMissingNew, []string{"node-2"}) {
		t.Fatalf("first sweep: %+v; want node-2 noticed and nothing done", res)
	}
	clock = clock.Add(30 * time.Second)
	if res, _ = r.Sweep(ctx); len(res.PVsDeleted)+len(res.ContentsHanded) != 0 {
		t.Fatalf("sweep within the grace: %+v; want nothing done", res)
	}
	clock = clock.Add(31 * time.Second)
	if res, err = r.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.PVsDeleted, []string{"released-on-gone"}) {
		t.Errorf("PVs deleted: %v, want only released-on-gone", res.PVsDeleted)
	}
	slices.Sort(res.ContentsHanded)
	if !slices.Equal(res.ContentsHanded, []string{"deleting-on-gone", "off-node-on-gone"}) {
		t.Errorf("contents handed over: %v, want deleting-on-gone and off-node-on-gone", res.ContentsHanded)
	}
	pvs, _ := core.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	var left []string
	for _, p := range pvs.Items {
		left = append(left, p.Name)
	}
	slices.Sort(left)
	if !slices.Equal(left, []string{"bound-on-gone", "other-driver", "released-on-live", "retained-on-gone"}) {
		t.Errorf("PVs left: %v", left)
	}
	for name, want := range map[string]string{"deleting-on-gone": "node-1", "off-node-on-gone": "node-1", "kept-on-gone": "node-2", "deleting-on-live": "node-1"} {
		c, err := dyn.Resource(contentsResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.GetLabels()[ManagedByLabel]; got != want {
			t.Errorf("content %s managed by %q, want %q", name, got, want)
		}
	}

	// node-2 comes back: its own sidecars act again, and a later absence
	// starts its grace over.
	core.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}}, metav1.CreateOptions{})
	if _, err := r.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.missing["node-2"]; ok {
		t.Error("node-2 still counted missing after it came back")
	}
}

func TestNodeOf(t *testing.T) {
	p := pv("x", "node-9", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete, driver)
	if got := NodeOf(p, key); got != "node-9" {
		t.Errorf("NodeOf = %q", got)
	}
	if got := NodeOf(p, "other/key"); got != "" {
		t.Errorf("NodeOf other key = %q", got)
	}
	p.Spec.NodeAffinity = nil
	if got := NodeOf(p, key); got != "" {
		t.Errorf("NodeOf without affinity = %q", got)
	}
}
