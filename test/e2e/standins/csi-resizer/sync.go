package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/klog/v2"
)

// Annotations the real sidecar reads and writes.
const (
	annPreResizeCapacity     = "volume.alpha.kubernetes.io/pre-resize-capacity"
	annNodeExpansionNotReqd  = "volume.kubernetes.io/node-expansion-not-required"
	reasonResizing           = "Resizing"
	reasonResizeFailed       = "VolumeResizeFailed"
	reasonFSResizeRequired   = "FileSystemResizeRequired"
	reasonResizeSucceeded    = "VolumeResizeSuccessful"
	messageFSResizeRequired  = "Waiting for user to (re-)start a pod to finish file system resize of volume on node."
	storage                  = v1.ResourceStorage
	statusControllerProgress = v1.PersistentVolumeClaimControllerResizeInProgress
	statusControllerInfeas   = v1.PersistentVolumeClaimControllerResizeInfeasible
	statusNodePending        = v1.PersistentVolumeClaimNodeResizePending
	statusNodeInProgress     = v1.PersistentVolumeClaimNodeResizeInProgress
	statusNodeInfeasible     = v1.PersistentVolumeClaimNodeResizeInfeasible
)

func metav1ObjectMeta(name, ns string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: ns}
}

// resizeConditions are the claim conditions the resizer owns; others are
// left as they are.
var resizeConditions = map[v1.PersistentVolumeClaimConditionType]bool{
	v1.PersistentVolumeClaimResizing:                true,
	v1.PersistentVolumeClaimFileSystemResizePending: true,
	v1.PersistentVolumeClaimControllerResizeError:   true,
	v1.PersistentVolumeClaimNodeResizeError:         true,
}

func (c *controller) sync(ctx context.Context, key string) error {
	obj, ok, err := c.claims.GetByKey(key)
	if err != nil || !ok {
		return err
	}
	pvc := obj.(*v1.PersistentVolumeClaim)
	if pvc.Status.Phase != v1.ClaimBound || pvc.Spec.VolumeName == "" {
		return nil
	}
	obj, ok, err = c.volumes.GetByKey(pvc.Spec.VolumeName)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("PV %s of %s is not in the cache yet", pvc.Spec.VolumeName, key)
	}
	pv := obj.(*v1.PersistentVolume)
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.driver {
		return nil
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.Namespace != pvc.Namespace || ref.UID != pvc.UID {
		return nil
	}

	// The node finished: the pre-resize annotation has done its job.
	pvcCap, pvCap := pvc.Status.Capacity[storage], pv.Spec.Capacity[storage]
	if pvcCap.Cmp(pvCap) >= 0 && metav1.HasAnnotation(pv.ObjectMeta, annPreResizeCapacity) {
		newPV := pv.DeepCopy()
		delete(newPV.Annotations, annPreResizeCapacity)
		if _, err := c.patchPV(ctx, pv, newPV); err != nil {
			return err
		}
	}

	request := pvc.Spec.Resources.Requests[storage]
	if request.Cmp(pvcCap) <= 0 {
		return nil
	}
	newSize, act := c.targetSize(pvc, pv)
	if !act {
		return nil
	}
	allocated, hasAllocated := pvc.Status.AllocatedResources[storage]
	updateStatus := !(hasAllocated && allocated.Cmp(newSize) == 0)

	pvc, err = c.markControllerResizeInProgress(ctx, pvc, newSize, updateStatus)
	if err != nil {
		return fmt.Errorf("mark %s as resizing: %w", key, err)
	}
	c.recorder.Event(pvc, v1.EventTypeNormal, reasonResizing, "External resizer is resizing volume "+pv.Name)

	updated, nodeRequired, err := c.resize(ctx, pv, newSize)
	if err != nil {
		c.recorder.Event(pvc, v1.EventTypeWarning, reasonResizeFailed, err.Error())
		if isFinal(err) {
			if _, merr := c.markControllerResizeFailed(ctx, pvc, err); merr != nil {
				return fmt.Errorf("resize %s failed with %v; recording it failed: %w", pv.Name, err, merr)
			}
		}
		return fmt.Errorf("resize volume %s: %w", pv.Name, err)
	}

	newPV := pv.DeepCopy()
	newPV.Spec.Capacity[storage] = updated
	if nodeRequired && !metav1.HasAnnotation(pv.ObjectMeta, annPreResizeCapacity) {
		metav1.SetMetaDataAnnotation(&newPV.ObjectMeta, annPreResizeCapacity, pvcCap.String())
	}
	if _, err := c.patchPV(ctx, pv, newPV); err != nil {
		return fmt.Errorf("raise the capacity of PV %s to %s: %w", pv.Name, updated.String(), err)
	}
	klog.InfoS("PV capacity raised", "pv", pv.Name, "capacity", updated.String(), "nodeExpansionRequired", nodeRequired)

	if nodeRequired {
		newPVC := pvc.DeepCopy()
		newPVC.Status.Conditions = mergeResizeConditions(newPVC.Status.Conditions, []v1.PersistentVolumeClaimCondition{{
			Type: v1.PersistentVolumeClaimFileSystemResizePending, Status: v1.ConditionTrue,
			LastTransitionTime: metav1.Now(), Message: messageFSResizeRequired,
		}}, true)
		delete(newPVC.Annotations, annNodeExpansionNotReqd)
		setResizeStatus(newPVC, statusNodePending)
		if _, err := c.patchClaimStatus(ctx, pvc, newPVC, true); err != nil {
			return fmt.Errorf("mark %s as waiting for the node: %w", key, err)
		}
		c.recorder.Event(pvc, v1.EventTypeNormal, reasonFSResizeRequired, "Require file system resize of volume on node")
		return nil
	}
	newPVC := pvc.DeepCopy()
	newPVC.Status.Capacity[storage] = updated
	newPVC.Status.Conditions = mergeResizeConditions(pvc.Status.Conditions, nil, false)
	delete(newPVC.Status.AllocatedResourceStatuses, storage)
	if len(newPVC.Status.AllocatedResourceStatuses) == 0 {
		newPVC.Status.AllocatedResourceStatuses = nil
	}
	metav1.SetMetaDataAnnotation(&newPVC.ObjectMeta, annNodeExpansionNotReqd, "true")
	if _, err := c.patchClaimStatus(ctx, pvc, newPVC, true); err != nil {
		return fmt.Errorf("mark %s as resized: %w", key, err)
	}
	c.recorder.Event(pvc, v1.EventTypeNormal, reasonResizeSucceeded, "Resize volume succeeded")
	return nil
}

// targetSize is the size to expand to, and whether to act at all: a resize
// already handed to the node is left to finish, and a resize in flight keeps
// the size it started with (expandAndRecover in the real sidecar).
func (c *controller) targetSize(pvc *v1.PersistentVolumeClaim, pv *v1.PersistentVolume) (resource.Quantity, bool) {
	request := pvc.Spec.Resources.Requests[storage]
	pvSize := pv.Spec.Capacity[storage]
	state := pvc.Status.AllocatedResourceStatuses[storage]
	allocated, hasAllocated := pvc.Status.AllocatedResources[storage]
	newSize := request
	if pvSize.Cmp(request) < 0 {
		switch state {
		case statusNodeInfeasible, statusControllerProgress:
			if hasAllocated {
				newSize = allocated
			}
		case statusNodePending, statusNodeInProgress:
			if hasAllocated {
				newSize = allocated
			}
			if pvSize.Cmp(newSize) >= 0 {
				return newSize, false
			}
		}
		return newSize, true
	}
	switch state {
	case statusNodePending, statusNodeInProgress:
		return newSize, false
	case statusNodeInfeasible:
		if c.mode == controllerExpansion && hasAllocated {
			newSize = allocated
		}
	case statusControllerProgress, statusControllerInfeas:
		if hasAllocated {
			newSize = allocated
		}
	default:
		if hasAllocated {
			newSize = allocated
		} else if hasCondition(pvc, v1.PersistentVolumeClaimFileSystemResizePending) {
			return newSize, false
		}
	}
	return newSize, true
}

// resize grows the volume: ControllerExpandVolume for a driver with the
// controller capability; none for one that expands only on the node.
func (c *controller) resize(ctx context.Context, pv *v1.PersistentVolume, size resource.Quantity) (resource.Quantity, bool, error) {
	if c.mode == nodeOnlyExpansion {
		return size, true, nil
	}
	req := &csi.ControllerExpandVolumeRequest{
		VolumeId:      pv.Spec.CSI.VolumeHandle,
		CapacityRange: &csi.CapacityRange{RequiredBytes: size.Value()},
	}
	if cap := volumeCapability(pv); cap != nil {
		req.VolumeCapability = cap
	}
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := c.csi.ControllerExpandVolume(cctx, req)
	if err != nil {
		return size, false, err
	}
	return *resource.NewQuantity(resp.GetCapacityBytes(), resource.BinarySI), resp.GetNodeExpansionRequired(), nil
}

func volumeCapability(pv *v1.PersistentVolume) *csi.VolumeCapability {
	mode := csi.VolumeCapability_AccessMode_UNKNOWN
	if len(pv.Spec.AccessModes) > 0 {
		switch pv.Spec.AccessModes[0] {
		case v1.ReadWriteOnce:
			mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER
		case v1.ReadWriteOncePod:
			mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		case v1.ReadOnlyMany:
			mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		case v1.ReadWriteMany:
			mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		}
	}
	vc := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == v1.PersistentVolumeBlock {
		vc.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		vc.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{
			FsType: pv.Spec.CSI.FSType, MountFlags: pv.Spec.MountOptions}}
	}
	return vc
}

// isFinal tells errors after which the volume certainly did not change.
// As the real sidecar: a gRPC error other than these means the driver
// refused the request; a timeout or a busy driver may still act on it.
func isFinal(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return false
	}
	return true
}

func (c *controller) markControllerResizeInProgress(ctx context.Context, pvc *v1.PersistentVolumeClaim, size resource.Quantity, updateStatus bool) (*v1.PersistentVolumeClaim, error) {
	newPVC := pvc.DeepCopy()
	cond := []v1.PersistentVolumeClaimCondition{{Type: v1.PersistentVolumeClaimResizing, Status: v1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	newPVC.Status.Conditions = mergeResizeConditions(newPVC.Status.Conditions, cond, !updateStatus)
	delete(newPVC.Annotations, annNodeExpansionNotReqd)
	if updateStatus {
		setResizeStatus(newPVC, statusControllerProgress)
	}
	if newPVC.Status.AllocatedResources == nil {
		newPVC.Status.AllocatedResources = v1.ResourceList{}
	}
	newPVC.Status.AllocatedResources[storage] = size
	updated, err := c.patchClaimStatus(ctx, pvc, newPVC, true)
	if err != nil {
		return pvc, err
	}
	// Later steps start from what the server has, so their patches apply.
	_ = c.claims.Update(updated)
	return updated, nil
}

func (c *controller) markControllerResizeFailed(ctx context.Context, pvc *v1.PersistentVolumeClaim, cause error) (*v1.PersistentVolumeClaim, error) {
	newPVC := pvc.DeepCopy()
	if code := status.Code(cause); code == codes.InvalidArgument || code == codes.OutOfRange {
		setResizeStatus(newPVC, statusControllerInfeas)
	}
	newPVC.Status.Conditions = mergeResizeConditions(newPVC.Status.Conditions, []v1.PersistentVolumeClaimCondition{{
		Type: v1.PersistentVolumeClaimControllerResizeError, Status: v1.ConditionTrue,
		LastTransitionTime: metav1.Now(), Message: fmt.Sprintf("failed to expand pvc with %v", cause),
	}}, true)
	return c.patchClaimStatus(ctx, pvc, newPVC, false)
}

func setResizeStatus(pvc *v1.PersistentVolumeClaim, s v1.ClaimResourceStatus) {
	if pvc.Status.AllocatedResourceStatuses == nil {
		pvc.Status.AllocatedResourceStatuses = map[v1.ResourceName]v1.ClaimResourceStatus{}
	}
	pvc.Status.AllocatedResourceStatuses[storage] = s
}

func hasCondition(pvc *v1.PersistentVolumeClaim, t v1.PersistentVolumeClaimConditionType) bool {
	for _, c := range pvc.Status.Conditions {
		if c.Type == t && c.Status == v1.ConditionTrue {
			return true
		}
	}
	return false
}

// mergeResizeConditions replaces the resize conditions with the new ones,
// keeping the old resize conditions of other types when asked to, and every
// condition that is not about resizing.
func mergeResizeConditions(old, added []v1.PersistentVolumeClaimCondition, keepOld bool) []v1.PersistentVolumeClaimCondition {
	byType := map[v1.PersistentVolumeClaimConditionType]v1.PersistentVolumeClaimCondition{}
	for _, c := range added {
		byType[c.Type] = c
	}
	var out []v1.PersistentVolumeClaimCondition
	for _, c := range old {
		if !resizeConditions[c.Type] {
			out = append(out, c)
			continue
		}
		if n, ok := byType[c.Type]; ok {
			out = append(out, n)
			delete(byType, c.Type)
		} else if keepOld {
			out = append(out, c)
		}
	}
	for _, c := range added {
		if _, ok := byType[c.Type]; ok {
			out = append(out, c)
		}
	}
	return out
}

// patchClaimStatus sends the difference as a strategic merge patch to the
// claim's status, with the old resourceVersion when asked, so a claim changed
// meanwhile is retried instead of overwritten.
func (c *controller) patchClaimStatus(ctx context.Context, old, updated *v1.PersistentVolumeClaim, checkVersion bool) (*v1.PersistentVolumeClaim, error) {
	patch, err := twoWayPatch(old, updated, v1.PersistentVolumeClaim{})
	if err != nil {
		return old, err
	}
	if checkVersion {
		if patch, err = withResourceVersion(patch, old.ResourceVersion); err != nil {
			return old, err
		}
	}
	res, err := c.kube.CoreV1().PersistentVolumeClaims(old.Namespace).Patch(ctx, old.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return old, fmt.Errorf("patch the status of PVC %s/%s: %w", old.Namespace, old.Name, err)
	}
	return res, nil
}

func (c *controller) patchPV(ctx context.Context, old, updated *v1.PersistentVolume) (*v1.PersistentVolume, error) {
	patch, err := twoWayPatch(old, updated, v1.PersistentVolume{})
	if err != nil {
		return old, err
	}
	res, err := c.kube.CoreV1().PersistentVolumes().Patch(ctx, old.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return old, fmt.Errorf("patch PV %s: %w", old.Name, err)
	}
	_ = c.volumes.Update(res)
	return res, nil
}

func twoWayPatch(old, updated, kind any) ([]byte, error) {
	a, err := json.Marshal(old)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(updated)
	if err != nil {
		return nil, err
	}
	return strategicpatch.CreateTwoWayMergePatch(a, b, kind)
}

func withResourceVersion(patch []byte, rv string) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(patch, &m); err != nil {
		return nil, err
	}
	meta, _ := m["metadata"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	meta["resourceVersion"] = rv
	m["metadata"] = meta
	return json.Marshal(m)
}
