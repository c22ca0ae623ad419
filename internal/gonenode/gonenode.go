// Package gonenode finishes, for a node that is gone for good, what only
// that node's own sidecars would have finished. In overlays/distributed a
// claim's PV is deleted by the csi-provisioner of the PV's node, and a
// VolumeSnapshotContent by the csi-snapshotter of the node in its
// managed-by label; when the node is gone (its Node object deleted, as
// `kubectl delete node` or a cloud's node controller does for a machine
// that will not come back), nobody would, and a deleted claim's PV and a
// deleted snapshot's content would stay for ever.
//
// The Reaper, run by every node's driver, acts once a node has been
// missing for Grace, seen at two sweeps at least Grace apart (a Node
// object is never deleted for a node that is merely NotReady):
//   - a Released PV of the driver whose reclaim policy is Delete, on a
//     gone node: its data went with the node, so the provisioner's
//     finalizer is removed and the PV deleted;
//   - a VolumeSnapshotContent of the driver managed by a gone node, and
//     either being deleted or kept off the node (an NFS snapshot handle,
//     which any node can serve): it is handed to this node (its managed-by
//     label), whose csi-snapshotter then finishes it as its own (a
//     DeleteSnapshot of a handle this node does not hold is a success, as
//     CSI says; one kept off the node is removed from the export).
//
// PVs whose policy is Retain, and PVs still bound to a claim, are left to
// the administrator.
package gonenode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/klog/v2"
)

// ProvisionerFinalizer is csi-provisioner's finalizer on the PVs it made.
const ProvisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"

// ManagedByLabel names the node whose csi-snapshotter handles a content
// (--node-deployment).
const ManagedByLabel = "snapshot.storage.kubernetes.io/managed-by"

// OffNodePrefix starts the snapshot handles kept off any node (on an NFS
// export), which every node's driver can serve.
const OffNodePrefix = "nfss1:"

var contentsResource = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}

// Reaper is one node's sweeper of what gone nodes left.
type Reaper struct {
	Core        typedcorev1.CoreV1Interface
	Dynamic     dynamic.Interface
	Driver      string // the CSI driver's name
	TopologyKey string // the node label in PVs' node affinity
	Self        string // this node, which takes over contents
	Grace       time.Duration
	now         func() time.Time
	missing     map[string]time.Time // node -> first sweep that found it gone
}

// Result says what one sweep did.
type Result struct {
	PVsDeleted      []string
	ContentsHanded  []string
	NodesGone       []string // missing for at least Grace
	NodesMissingNew []string // missing, not for long enough yet
}

// Run sweeps every interval until ctx ends.
func (r *Reaper) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if _, err := r.Sweep(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Sweep of what gone nodes left failed; retried", "every", every)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Sweep looks once.
func (r *Reaper) Sweep(ctx context.Context) (Result, error) {
	var res Result
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	if r.missing == nil {
		r.missing = map[string]time.Time{}
	}
	nodes, err := r.Core.Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return res, fmt.Errorf("list nodes: %w", err)
	}
	exists := map[string]bool{}
	for _, n := range nodes.Items {
		exists[n.Name] = true
	}
	gone := func(node string) bool {
		if node == "" || exists[node] {
			return false
		}
		first, ok := r.missing[node]
		if !ok {
			r.missing[node] = now()
			res.NodesMissingNew = append(res.NodesMissingNew, node)
			return false
		}
		if now().Sub(first) < r.Grace {
			return false
		}
		if !slices.Contains(res.NodesGone, node) {
			res.NodesGone = append(res.NodesGone, node)
		}
		return true
	}
	for node := range r.missing {
		if exists[node] {
			delete(r.missing, node) // back: its own sidecars act again
		}
	}

	var errs []error
	pvs, err := r.Core.PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return res, fmt.Errorf("list persistent volumes: %w", err)
	}
	for i := range pvs.Items {
		pv := &pvs.Items[i]
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.Driver || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			continue
		}
		if pv.Status.Phase != corev1.VolumeReleased && pv.DeletionTimestamp == nil {
			continue // bound, or not yet released: its claim is still there
		}
		node := NodeOf(pv, r.TopologyKey)
		if !gone(node) {
			continue
		}
		if err := r.deletePV(ctx, pv); err != nil {
			errs = append(errs, err) // the others still go; this one next sweep
			continue
		}
		klog.InfoS("Deleted the PV of a deleted claim on a node that is gone; its data went with the node", "pv", pv.Name, "node", node, "volumeHandle", pv.Spec.CSI.VolumeHandle)
		res.PVsDeleted = append(res.PVsDeleted, pv.Name)
	}

	contents, err := r.Dynamic.Resource(contentsResource).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) {
		return res, nil // no snapshot CRDs
	}
	if err != nil {
		return res, fmt.Errorf("list volume snapshot contents: %w", err)
	}
	for _, c := range contents.Items {
		driver, _, _ := unstructuredString(c.Object, "spec", "driver")
		if driver != r.Driver {
			continue
		}
		node := c.GetLabels()[ManagedByLabel]
		handle, _, _ := unstructuredString(c.Object, "status", "snapshotHandle")
		if handle == "" {
			handle, _, _ = unstructuredString(c.Object, "spec", "source", "snapshotHandle")
		}
		if node == r.Self || (c.GetDeletionTimestamp() == nil && !strings.HasPrefix(handle, OffNodePrefix)) {
			continue
		}
		if !gone(node) {
			continue
		}
		// Only if it is still the gone node's: every node's reaper sweeps,
		// and one content goes to one node (the test fails the others').
		path := "/metadata/labels/" + strings.ReplaceAll(strings.ReplaceAll(ManagedByLabel, "~", "~0"), "/", "~1")
		patch, _ := json.Marshal([]map[string]any{
			{"op": "test", "path": path, "value": node},
			{"op": "replace", "path": path, "value": r.Self},
		})
		if _, err := r.Dynamic.Resource(contentsResource).Patch(ctx, c.GetName(), types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil {
			if !apierrors.IsNotFound(err) && !apierrors.IsInvalid(err) && !apierrors.IsConflict(err) && !strings.Contains(err.Error(), "test") {
				errs = append(errs, fmt.Errorf("hand volume snapshot content %s of gone node %s to %s: %w", c.GetName(), node, r.Self, err))
			}
			continue
		}
		klog.InfoS("Took over a snapshot content of a node that is gone", "content", c.GetName(), "node", node, "snapshotHandle", handle, "deleting", c.GetDeletionTimestamp() != nil)
		res.ContentsHanded = append(res.ContentsHanded, c.GetName())
	}
	return res, errors.Join(errs...)
}

// deletePV removes the provisioner's finalizer (nobody will run its
// DeleteVolume) and deletes the PV.
func (r *Reaper) deletePV(ctx context.Context, pv *corev1.PersistentVolume) error {
	if i := slices.Index(pv.Finalizers, ProvisionerFinalizer); i >= 0 {
		// A JSON patch that tests the finalizer at its index: a change
		// meanwhile fails it, and the next sweep looks again.
		patch, _ := json.Marshal([]map[string]any{
			{"op": "test", "path": fmt.Sprintf("/metadata/finalizers/%d", i), "value": ProvisionerFinalizer},
			{"op": "remove", "path": fmt.Sprintf("/metadata/finalizers/%d", i)},
		})
		if _, err := r.Core.PersistentVolumes().Patch(ctx, pv.Name, types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("remove the provisioner's finalizer from PV %s: %w", pv.Name, err)
		}
	}
	if pv.DeletionTimestamp != nil {
		return nil
	}
	uid := pv.UID
	err := r.Core.PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete PV %s: %w", pv.Name, err)
	}
	return nil
}

// NodeOf is the node a PV's required node affinity names by key ("" when
// none, or more than one).
func NodeOf(pv *corev1.PersistentVolume, key string) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	node := ""
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key != key || e.Operator != corev1.NodeSelectorOpIn || len(e.Values) != 1 {
				continue
			}
			if node != "" && node != e.Values[0] {
				return ""
			}
			node = e.Values[0]
		}
	}
	return node
}

func unstructuredString(obj map[string]any, fields ...string) (string, bool, error) {
	var cur any = obj
	for _, f := range fields {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		if cur, ok = m[f]; !ok {
			return "", false, nil
		}
	}
	s, ok := cur.(string)
	return s, ok, nil
}
