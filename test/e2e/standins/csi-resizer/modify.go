package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// The modify controller: what external-resizer v2's pkg/modifycontroller
// does (modify_volume.go, modify_status.go, controller.go), for a driver with
// the controller MODIFY_VOLUME capability. For a bound claim of this driver
// whose spec.volumeAttributesClassName differs from
// status.currentVolumeAttributesClassName:
//
//  1. the target class missing: status.modifyVolumeStatus Pending, no call;
//  2. otherwise the claim is marked InProgress with the target and a
//     ModifyingVolume condition, and ControllerModifyVolume is called with
//     the class's parameters as mutable_parameters;
//  3. on success the PV's spec.volumeAttributesClassName is set first, then
//     the claim's status: currentVolumeAttributesClassName the target,
//     modifyVolumeStatus cleared, the modify conditions cleared;
//  4. on an error the claim gets a ModifyVolumeError condition with the
//     gRPC code; INVALID_ARGUMENT is Infeasible (retried slowly, or when the
//     claim names another class); other errors stay InProgress and are
//     retried with the same target while the error is not final.
//
// A claim whose class is taken away (spec empty) while nothing is in
// progress is left as it is, its ModifyingVolume condition cleared.
type modifier struct {
	driver string
	csi    csi.ControllerClient
	c      *controller
	vacs   cache.Indexer
	synced []cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[string]
	mu     sync.Mutex
	// uncertain: claims whose last call ended in a non-final error; their
	// retry keeps the target they had, as the real sidecar's
	// uncertainPVCs.
	uncertain map[string]bool
	// infeasible: when a claim's INVALID_ARGUMENT was seen; it is retried
	// only after slowRetry or when its target changes (the slowSet).
	infeasible map[string]time.Time
}

const slowRetry = 5 * time.Minute

func newModifier(c *controller, cc csi.ControllerClient, factory informers.SharedInformerFactory) *modifier {
	vacs := factory.Storage().V1().VolumeAttributesClasses().Informer()
	pvcs := factory.Core().V1().PersistentVolumeClaims().Informer()
	m := &modifier{
		driver: c.driver, csi: cc, c: c, vacs: vacs.GetIndexer(),
		synced: []cache.InformerSynced{vacs.HasSynced, pvcs.HasSynced},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 5*time.Minute),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "modify"}),
		uncertain: map[string]bool{}, infeasible: map[string]time.Time{},
	}
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			m.queue.Add(key)
		}
	}
	_, _ = pvcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		UpdateFunc: func(oldObj, newObj any) {
			old, _ := oldObj.(*v1.PersistentVolumeClaim)
			pvc, _ := newObj.(*v1.PersistentVolumeClaim)
			if old == nil || pvc == nil {
				return
			}
			if (deref(pvc.Spec.VolumeAttributesClassName) != deref(old.Spec.VolumeAttributesClassName) ||
				pvc.Status.ModifyVolumeStatus == nil) && pvc.Status.Phase == v1.ClaimBound {
				enqueue(pvc)
			}
		},
	})
	return m
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (m *modifier) run(ctx context.Context, workers int) {
	defer m.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), m.synced...) {
		return
	}
	// Claims left InProgress by an earlier run keep their target.
	for _, obj := range m.c.claims.List() {
		pvc := obj.(*v1.PersistentVolumeClaim)
		if s := pvc.Status.ModifyVolumeStatus; s != nil && s.Status == v1.PersistentVolumeClaimModifyVolumeInProgress {
			key, _ := cache.MetaNamespaceKeyFunc(pvc)
			m.uncertain[key] = true
		}
	}
	klog.InfoS("Modify controller started", "driver", m.driver)
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) {
			for m.processNext(ctx) {
			}
		}, time.Second)
	}
	<-ctx.Done()
}

func (m *modifier) processNext(ctx context.Context) bool {
	key, quit := m.queue.Get()
	if quit {
		return false
	}
	defer m.queue.Done(key)
	if err := m.sync(ctx, key); err != nil {
		klog.ErrorS(err, "Modify failed; will retry", "pvc", key)
		m.queue.AddRateLimited(key)
		return true
	}
	m.queue.Forget(key)
	return true
}

func (m *modifier) sync(ctx context.Context, key string) error {
	obj, ok, err := m.c.claims.GetByKey(key)
	if err != nil || !ok {
		return err
	}
	pvc := obj.(*v1.PersistentVolumeClaim)
	if pvc.Spec.VolumeName == "" || pvc.Status.Phase != v1.ClaimBound {
		return nil
	}
	pvObj, ok, err := m.c.volumes.GetByKey(pvc.Spec.VolumeName)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("PV %s of PVC %s not in the informer's cache", pvc.Spec.VolumeName, key)
	}
	pv := pvObj.(*v1.PersistentVolume)
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != m.driver {
		return nil
	}

	want, cur := deref(pvc.Spec.VolumeAttributesClassName), deref(pvc.Status.CurrentVolumeAttributesClassName)
	st := pvc.Status.ModifyVolumeStatus
	if st == nil && want == cur {
		return nil
	}
	if st != nil && st.Status == v1.PersistentVolumeClaimModifyVolumeInfeasible && st.TargetVolumeAttributesClassName == want {
		m.mu.Lock()
		since, seen := m.infeasible[key]
		if !seen {
			m.infeasible[key] = time.Now()
		}
		m.mu.Unlock()
		if seen && time.Since(since) < slowRetry {
			m.queue.AddAfter(key, slowRetry-time.Since(since))
			return nil
		}
	} else {
		m.mu.Lock()
		delete(m.infeasible, key)
		m.mu.Unlock()
	}
	inProgress := st != nil && st.Status == v1.PersistentVolumeClaimModifyVolumeInProgress
	if want == "" && !inProgress {
		if hasCondition(pvc, v1.PersistentVolumeClaimVolumeModifyingVolume) {
			updated := pvc.DeepCopy()
			updated.Status.Conditions = slices.DeleteFunc(updated.Status.Conditions, func(c v1.PersistentVolumeClaimCondition) bool {
				return c.Type == v1.PersistentVolumeClaimVolumeModifyingVolume
			})
			_, err := m.c.patchClaimStatus(ctx, pvc, updated, false)
			return err
		}
		return nil
	}
	m.mu.Lock()
	uncertain := inProgress && m.uncertain[key]
	m.mu.Unlock()
	if uncertain || want == "" {
		// The last call's outcome is unknown: finish that one first.
		vac, err := m.vac(pvc, st.TargetVolumeAttributesClassName)
		if err != nil {
			return err
		}
		return m.call(ctx, key, pvc, pv, vac)
	}
	vac, err := m.vac(pvc, want)
	if err != nil {
		_, perr := m.markStatus(ctx, pvc, v1.PersistentVolumeClaimModifyVolumePending, nil)
		if perr != nil {
			return perr
		}
		return err
	}
	if pvc, err = m.markStatus(ctx, pvc, v1.PersistentVolumeClaimModifyVolumeInProgress, nil); err != nil {
		return err
	}
	m.c.recorder.Eventf(pvc, v1.EventTypeNormal, "VolumeModify", "external resizer is modifying volume %s with vac %s", pvc.Name, vac.Name)
	return m.call(ctx, key, pvc, pv, vac)
}

func (m *modifier) vac(pvc *v1.PersistentVolumeClaim, name string) (*storagev1.VolumeAttributesClass, error) {
	obj, ok, err := m.vacs.GetByKey(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		m.c.recorder.Eventf(pvc, v1.EventTypeWarning, "VolumeModifyFailed", "VAC %q does not exist.", name)
		return nil, fmt.Errorf("VolumeAttributesClass %s not found", name)
	}
	return obj.(*storagev1.VolumeAttributesClass), nil
}

// call makes the ControllerModifyVolume call and records its outcome.
func (m *modifier) call(ctx context.Context, key string, pvc *v1.PersistentVolumeClaim, pv *v1.PersistentVolume, vac *storagev1.VolumeAttributesClass) error {
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	_, err := m.csi.ControllerModifyVolume(cctx, &csi.ControllerModifyVolumeRequest{
		VolumeId: pv.Spec.CSI.VolumeHandle, MutableParameters: vac.Parameters})
	cancel()
	if err == nil {
		m.mu.Lock()
		delete(m.uncertain, key)
		m.mu.Unlock()
		target := pvc.Status.ModifyVolumeStatus.TargetVolumeAttributesClassName
		newPV := pv.DeepCopy()
		newPV.Spec.VolumeAttributesClassName = &target
		if _, err := m.c.patchPV(ctx, pv, newPV); err != nil {
			return err
		}
		updated := pvc.DeepCopy()
		updated.Status.ModifyVolumeStatus = nil
		updated.Status.CurrentVolumeAttributesClassName = &target
		updated.Status.Conditions = slices.DeleteFunc(updated.Status.Conditions, func(c v1.PersistentVolumeClaimCondition) bool {
			return c.Type == v1.PersistentVolumeClaimVolumeModifyVolumeError || c.Type == v1.PersistentVolumeClaimVolumeModifyingVolume
		})
		if _, err := m.c.patchClaimStatus(ctx, pvc, updated, false); err != nil {
			return err
		}
		m.c.recorder.Eventf(pvc, v1.EventTypeNormal, "VolumeModifySuccessful", "external resizer modified volume %s with vac %s successfully", pvc.Name, vac.Name)
		return nil
	}
	next := v1.PersistentVolumeClaimModifyVolumeInProgress
	msg := err.Error()
	m.mu.Lock()
	if !isFinal(err) {
		m.uncertain[key] = true
		msg += ". Still modifying to VAC " + vac.Name
	} else {
		delete(m.uncertain, key)
		if status.Code(err) == codes.InvalidArgument {
			next = v1.PersistentVolumeClaimModifyVolumeInfeasible
			m.infeasible[key] = time.Now() // markForSlowRetry
		}
	}
	m.mu.Unlock()
	if _, perr := m.markStatus(ctx, pvc, next, err); perr != nil {
		return perr
	}
	m.c.recorder.Event(pvc, v1.EventTypeWarning, "VolumeModifyFailed", msg)
	return err
}

// markStatus sets status.modifyVolumeStatus (and, but for Pending, the
// ModifyingVolume condition, with a ModifyVolumeError one after a failed
// call), as markControllerModifyVolumeStatus does.
func (m *modifier) markStatus(ctx context.Context, pvc *v1.PersistentVolumeClaim, s v1.PersistentVolumeClaimModifyVolumeStatus, cause error) (*v1.PersistentVolumeClaim, error) {
	updated := pvc.DeepCopy()
	if updated.Status.ModifyVolumeStatus == nil {
		updated.Status.ModifyVolumeStatus = &v1.ModifyVolumeStatus{}
	}
	updated.Status.ModifyVolumeStatus.Status = s
	if s != v1.PersistentVolumeClaimModifyVolumePending {
		now := metav1.Now()
		conds := []v1.PersistentVolumeClaimCondition{{Type: v1.PersistentVolumeClaimVolumeModifyingVolume, Status: v1.ConditionTrue, LastProbeTime: now}}
		target := updated.Status.ModifyVolumeStatus.TargetVolumeAttributesClassName
		if cause == nil {
			target = deref(pvc.Spec.VolumeAttributesClassName)
			updated.Status.ModifyVolumeStatus.TargetVolumeAttributesClassName = target
			conds[0].Message = fmt.Sprintf("Modifying volume to %q is in progress.", target)
		} else {
			if isFinal(cause) {
				conds[0].Message = fmt.Sprintf("Modifying volume to %q failed. Waiting for retry.", target)
			} else {
				conds[0].Message = fmt.Sprintf("Modifying volume to %q is still in progress.", target)
			}
			st, _ := status.FromError(cause)
			conds = append(conds, v1.PersistentVolumeClaimCondition{Type: v1.PersistentVolumeClaimVolumeModifyVolumeError,
				Status: v1.ConditionTrue, Reason: st.Code().String(), Message: st.Message(), LastProbeTime: now})
		}
		updated.Status.Conditions = mergeModifyConditions(updated.Status.Conditions, conds)
	}
	return m.c.patchClaimStatus(ctx, pvc, updated, true)
}

// mergeModifyConditions replaces the conditions of the types given and
// keeps the rest (util.MergePVCConditions).
func mergeModifyConditions(old, added []v1.PersistentVolumeClaimCondition) []v1.PersistentVolumeClaimCondition {
	out := slices.DeleteFunc(slices.Clone(old), func(c v1.PersistentVolumeClaimCondition) bool {
		return slices.ContainsFunc(added, func(a v1.PersistentVolumeClaimCondition) bool { return a.Type == c.Type })
	})
	return append(out, added...)
}
