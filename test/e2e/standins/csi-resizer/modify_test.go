package main

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

const testDriver = "hostpath-csi.github.io"

// fakeCSI answers ControllerModifyVolume with err and records the calls.
type fakeCSI struct {
	csi.ControllerClient
	err   error
	calls []*csi.ControllerModifyVolumeRequest
}

func (f *fakeCSI) ControllerModifyVolume(_ context.Context, req *csi.ControllerModifyVolumeRequest, _ ...grpc.CallOption) (*csi.ControllerModifyVolumeResponse, error) {
	f.calls = append(f.calls, req)
	if f.err != nil {
		return nil, f.err
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

type modifyEnv struct {
	m    *modifier
	kube *fake.Clientset
	csi  *fakeCSI
}

func newModifyEnv(t *testing.T, specVAC, currentVAC string, vacs ...*storagev1.VolumeAttributesClass) *modifyEnv {
	t.Helper()
	pvc := &v1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "app", ResourceVersion: "1"}}
	pvc.Spec.VolumeName = "pv-db"
	if specVAC != "" {
		pvc.Spec.VolumeAttributesClassName = &specVAC
	}
	if currentVAC != "" {
		pvc.Status.CurrentVolumeAttributesClassName = &currentVAC
	}
	pvc.Status.Phase = v1.ClaimBound
	pv := &v1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-db"}}
	pv.Spec.CSI = &v1.CSIPersistentVolumeSource{Driver: testDriver, VolumeHandle: "hpv1-0123"}
	kube := fake.NewClientset(pvc, pv)
	idx := func() cache.Indexer { return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}) }
	c := &controller{driver: testDriver, kube: kube, claims: idx(), volumes: idx(), recorder: record.NewFakeRecorder(100)}
	_ = c.claims.Add(pvc)
	_ = c.volumes.Add(pv)
	f := &fakeCSI{}
	m := &modifier{driver: testDriver, csi: f, c: c, vacs: idx(),
		queue:     workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		uncertain: map[string]bool{}, infeasible: map[string]time.Time{}}
	t.Cleanup(m.queue.ShutDown)
	for _, v := range vacs {
		_ = m.vacs.Add(v)
	}
	return &modifyEnv{m: m, kube: kube, csi: f}
}

func vac(name string, params map[string]string) *storagev1.VolumeAttributesClass {
	return &storagev1.VolumeAttributesClass{ObjectMeta: metav1.ObjectMeta{Name: name}, DriverName: testDriver, Parameters: params}
}

// sync runs one pass, then refreshes the informer caches from the API, as
// the informers would.
func (e *modifyEnv) sync(t *testing.T) error {
	t.Helper()
	err := e.m.sync(context.Background(), "app/db")
	pvc, gerr := e.kube.CoreV1().PersistentVolumeClaims("app").Get(context.Background(), "db", metav1.GetOptions{})
	if gerr != nil {
		t.Fatal(gerr)
	}
	_ = e.m.c.claims.Update(pvc)
	pv, gerr := e.kube.CoreV1().PersistentVolumes().Get(context.Background(), "pv-db", metav1.GetOptions{})
	if gerr != nil {
		t.Fatal(gerr)
	}
	_ = e.m.c.volumes.Update(pv)
	return err
}

func (e *modifyEnv) claim(t *testing.T) *v1.PersistentVolumeClaim {
	obj, _, _ := e.m.c.claims.GetByKey("app/db")
	return obj.(*v1.PersistentVolumeClaim)
}

func conditionOf(pvc *v1.PersistentVolumeClaim, ct v1.PersistentVolumeClaimConditionType) *v1.PersistentVolumeClaimCondition {
	for i := range pvc.Status.Conditions {
		if pvc.Status.Conditions[i].Type == ct {
			return &pvc.Status.Conditions[i]
		}
	}
	return nil
}

// A claim moved to a class: one call with the class's parameters; the PV
// and then the claim name the class, and nothing of the modify is left in
// the claim's status.
func TestModifySucceeds(t *testing.T) {
	e := newModifyEnv(t, "fast", "", vac("fast", map[string]string{"readAheadKiB": "64"}))
	if err := e.sync(t); err != nil {
		t.Fatal(err)
	}
	if len(e.csi.calls) != 1 || e.csi.calls[0].GetVolumeId() != "hpv1-0123" || !maps.Equal(e.csi.calls[0].GetMutableParameters(), map[string]string{"readAheadKiB": "64"}) {
		t.Fatalf("calls %v", e.csi.calls)
	}
	pvc := e.claim(t)
	if deref(pvc.Status.CurrentVolumeAttributesClassName) != "fast" || pvc.Status.ModifyVolumeStatus != nil || len(pvc.Status.Conditions) != 0 {
		t.Fatalf("claim status after the modify: %+v", pvc.Status)
	}
	obj, _, _ := e.m.c.volumes.GetByKey("pv-db")
	if pv := obj.(*v1.PersistentVolume); deref(pv.Spec.VolumeAttributesClassName) != "fast" {
		t.Fatalf("PV class %v", pv.Spec.VolumeAttributesClassName)
	}
	// Done: the next pass calls nothing.
	if err := e.sync(t); err != nil || len(e.csi.calls) != 1 {
		t.Fatalf("a second pass: %v, %d calls", err, len(e.csi.calls))
	}
}

// INVALID_ARGUMENT: Infeasible with the target and the driver's message in
// a ModifyVolumeError condition; the class stays the old one.
func TestModifyInfeasible(t *testing.T) {
	e := newModifyEnv(t, "bad", "slow", vac("bad", map[string]string{"iops": "1"}))
	e.csi.err = status.Error(codes.InvalidArgument, `mutable parameter "iops" cannot be set`)
	if err := e.sync(t); err == nil {
		t.Fatal("no error")
	}
	pvc := e.claim(t)
	s := pvc.Status.ModifyVolumeStatus
	if s == nil || s.Status != v1.PersistentVolumeClaimModifyVolumeInfeasible || s.TargetVolumeAttributesClassName != "bad" {
		t.Fatalf("modify status %+v", s)
	}
	if c := conditionOf(pvc, v1.PersistentVolumeClaimVolumeModifyVolumeError); c == nil || c.Reason != "InvalidArgument" || c.Message != `mutable parameter "iops" cannot be set` {
		t.Fatalf("conditions %+v", pvc.Status.Conditions)
	}
	if deref(pvc.Status.CurrentVolumeAttributesClassName) != "slow" {
		t.Fatalf("current class %v", pvc.Status.CurrentVolumeAttributesClassName)
	}
	// Retried slowly: the next pass makes no call.
	if _ = e.sync(t); len(e.csi.calls) != 1 {
		t.Fatalf("%d calls after an immediate retry of an infeasible modify, want 1", len(e.csi.calls))
	}
}

// A call that timed out may still be acting: the claim stays InProgress,
// and the retry keeps the target it had, even if the claim names another
// class meanwhile.
func TestModifyUncertainKeepsItsTarget(t *testing.T) {
	e := newModifyEnv(t, "fast", "", vac("fast", map[string]string{"readAheadKiB": "64"}), vac("faster", map[string]string{"readAheadKiB": "128"}))
	e.csi.err = status.Error(codes.DeadlineExceeded, "timeout")
	if err := e.sync(t); err == nil {
		t.Fatal("no error")
	}
	if s := e.claim(t).Status.ModifyVolumeStatus; s == nil || s.Status != v1.PersistentVolumeClaimModifyVolumeInProgress {
		t.Fatalf("modify status %+v", s)
	}
	pvc := e.claim(t).DeepCopy()
	other := "faster"
	pvc.Spec.VolumeAttributesClassName = &other
	_ = e.m.c.claims.Update(pvc)
	e.csi.err = nil
	if err := e.m.sync(context.Background(), "app/db"); err != nil {
		t.Fatal(err)
	}
	if got := e.csi.calls[len(e.csi.calls)-1].GetMutableParameters()["readAheadKiB"]; got != "64" {
		t.Fatalf("the retry after a timeout asked readAheadKiB %s, want the first target's 64", got)
	}
}

// A class that does not exist: Pending, and no call.
func TestModifyPendingForAMissingClass(t *testing.T) {
	e := newModifyEnv(t, "nowhere", "")
	if err := e.sync(t); err == nil {
		t.Fatal("no error")
	}
	if s := e.claim(t).Status.ModifyVolumeStatus; s == nil || s.Status != v1.PersistentVolumeClaimModifyVolumePending {
		t.Fatalf("modify status %+v", s)
	}
	if len(e.csi.calls) != 0 {
		t.Fatalf("%d calls", len(e.csi.calls))
	}
}
