package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// examples/volume-attributes.yaml: a claim made with a
// VolumeAttributesClass gets its read-ahead at create (csi-provisioner
// passes the class as mutable_parameters); patching the claim to another
// class changes the device under the running pod (csi-resizer's modify
// controller calls ControllerModifyVolume), and the claim and its PV name
// the new class. A class the volume cannot take leaves the claim
// Infeasible with the driver's reason, and the volume as it was.
func testModifyVolume(t *testing.T, c *cluster) {
	start := time.Now()
	step := func(what string) { t.Logf("%s after %s", what, time.Since(start).Round(time.Second)) }
	// After the namespace (cleanups run last first): a class in use by a
	// claim or PV is kept (vac-protection) until they are gone.
	t.Cleanup(func() {
		c.run("", "delete", "volumeattributesclass", "hostpath-csi-random-reads", "hostpath-csi-sequential-reads", "e2e-modify-unknown", "--ignore-not-found")
	})
	ns := c.namespace(t, "modify")
	c.apply(t, ns, c.example(t, "volume-attributes.yaml"))
	c.waitPodPhase(t, ns, "tuned", v1.PodRunning, 3*time.Minute)
	readAhead := func() string {
		return strings.TrimSpace(c.k(t, "-n", ns, "exec", "tuned", "--", "blockdev", "--getra", "/dev/xvda"))
	}
	if got := readAhead(); got != "32" {
		t.Fatalf("read-ahead in the pod of a claim made with readAheadKiB 16: %s sectors, want 32", got)
	}
	claimOn := func(class string) func() (bool, error) {
		return func() (bool, error) {
			var pvc v1.PersistentVolumeClaim
			if ok, err := c.tryGet(&pvc, "-n", ns, "pvc", "tuned"); !ok || err != nil {
				return false, err
			}
			cur := ""
			if pvc.Status.CurrentVolumeAttributesClassName != nil {
				cur = *pvc.Status.CurrentVolumeAttributesClassName
			}
			return cur == class && pvc.Status.ModifyVolumeStatus == nil,
				fmt.Errorf("current class %q, modify status %+v, conditions %+v", cur, pvc.Status.ModifyVolumeStatus, pvc.Status.Conditions)
		}
	}
	eventually(t, time.Minute, "the claim on hostpath-csi-random-reads", claimOn("hostpath-csi-random-reads"))
	step("pod running on the first class")

	c.k(t, "-n", ns, "patch", "pvc", "tuned", "--type=merge", "-p", `{"spec":{"volumeAttributesClassName":"hostpath-csi-sequential-reads"}}`)
	eventually(t, 2*time.Minute, "the claim on hostpath-csi-sequential-reads", claimOn("hostpath-csi-sequential-reads"))
	if got := readAhead(); got != "8192" {
		t.Fatalf("read-ahead in the running pod after the claim moved to readAheadKiB 4096: %s sectors, want 8192", got)
	}
	step("moved to the second class")
	pv := c.boundPV(t, ns, "tuned")
	if pv.Spec.VolumeAttributesClassName == nil || *pv.Spec.VolumeAttributesClassName != "hostpath-csi-sequential-reads" {
		t.Fatalf("PV %s names class %v, want hostpath-csi-sequential-reads", pv.Name, pv.Spec.VolumeAttributesClassName)
	}

	// A key the driver does not take: Infeasible, with its message, and
	// nothing changed.
	c.apply(t, "", `apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata:
  name: e2e-modify-unknown
driverName: hostpath-csi.github.io
parameters:
  iops: "100"
`)
	c.k(t, "-n", ns, "patch", "pvc", "tuned", "--type=merge", "-p", `{"spec":{"volumeAttributesClassName":"e2e-modify-unknown"}}`)
	eventually(t, 2*time.Minute, "the claim Infeasible, saying why", func() (bool, error) {
		var pvc v1.PersistentVolumeClaim
		if ok, err := c.tryGet(&pvc, "-n", ns, "pvc", "tuned"); !ok || err != nil {
			return false, err
		}
		s := pvc.Status.ModifyVolumeStatus
		said := false
		for _, cond := range pvc.Status.Conditions {
			said = said || (cond.Type == v1.PersistentVolumeClaimVolumeModifyVolumeError && cond.Reason == "InvalidArgument" && strings.Contains(cond.Message, `"iops"`))
		}
		return s != nil && s.Status == v1.PersistentVolumeClaimModifyVolumeInfeasible && said,
			fmt.Errorf("modify status %+v, conditions %+v", s, pvc.Status.Conditions)
	})
	step("infeasible")
	if got := readAhead(); got != "8192" {
		t.Fatalf("read-ahead after a refused class: %s sectors, want 8192 still", got)
	}
}
