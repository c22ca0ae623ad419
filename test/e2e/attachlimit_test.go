package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// The driver started with --max-volumes-per-node=2 reports 2 in NodeGetInfo;
// the kubelet puts it in CSINode (allocatable count), and the scheduler
// keeps a third pod with a claim of the driver off the node: it stays
// Pending, saying why, until one of the first two goes. Then the driver is
// rolled back to its deployed arguments, and the limit is gone from CSINode.
func testAttachLimit(t *testing.T, c *cluster) {
	allocatable := func() string {
		var n storagev1.CSINode
		c.get(t, &n, "csinode", c.node1)
		for _, d := range n.Spec.Drivers {
			if d.Name == "hostpath-csi.github.io" {
				if d.Allocatable == nil || d.Allocatable.Count == nil {
					return "none"
				}
				return fmt.Sprint(*d.Allocatable.Count)
			}
		}
		return "not registered"
	}
	if got := allocatable(); got != "none" {
		t.Fatalf("CSINode %s says the driver takes %s volumes before the limit is set, want none", c.node1, got)
	}
	var ds struct {
		Spec struct {
			Template struct {
				Spec v1.PodSpec `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	c.get(t, &ds, "-n", "hostpath-csi", "daemonset", "hostpath-csi")
	index := -1
	for i, ct := range ds.Spec.Template.Spec.Containers {
		if ct.Name == "hostpath-plugin" {
			index = i
		}
	}
	if index < 0 {
		t.Fatal("no hostpath-plugin container in the DaemonSet")
	}
	restore := func() {
		// The deployed template again (the revision before the patch).
		if _, err := c.run("", "-n", "hostpath-csi", "rollout", "undo", "daemonset/hostpath-csi"); err != nil {
			t.Errorf("roll the driver back: %v", err)
			return
		}
		if _, err := c.run("", "-n", "hostpath-csi", "rollout", "status", "daemonset/hostpath-csi", "--timeout=180s"); err != nil {
			t.Errorf("the driver after the rollback: %v", err)
		}
		eventually(t, 2*time.Minute, "no limit in CSINode after the rollback", func() (bool, error) {
			return allocatable() == "none", nil
		})
	}
	c.k(t, "-n", "hostpath-csi", "patch", "daemonset", "hostpath-csi", "--type=json", "-p",
		fmt.Sprintf(`[{"op":"add","path":"/spec/template/spec/containers/%d/args/-","value":"--max-volumes-per-node=2"}]`, index))
	defer restore()
	c.k(t, "-n", "hostpath-csi", "rollout", "status", "daemonset/hostpath-csi", "--timeout=180s")
	eventually(t, 2*time.Minute, "CSINode allocatable count 2", func() (bool, error) {
		got := allocatable()
		return got == "2", fmt.Errorf("allocatable %s", got)
	})

	ns := c.namespace(t, "attach-limit")
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("v%d", i)
		c.apply(t, ns, claim(name, "16Mi", ""))
		c.apply(t, ns, pod(name, name, "echo "+name+" > /data/name", true))
		if i < 3 {
			c.waitPodPhase(t, ns, name, v1.PodRunning, 3*time.Minute)
		}
	}
	eventually(t, 2*time.Minute, "pod v3 unschedulable for the volume limit", func() (bool, error) {
		var p v1.Pod
		if ok, err := c.tryGet(&p, "-n", ns, "pod", "v3"); !ok || err != nil {
			return false, err
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == v1.PodScheduled && cond.Status == v1.ConditionFalse && strings.Contains(cond.Message, "max volume count") {
				return true, nil
			}
		}
		return false, fmt.Errorf("phase %s, node %q, conditions %+v", p.Status.Phase, p.Spec.NodeName, p.Status.Conditions)
	})
	c.k(t, "-n", ns, "delete", "pod", "v1", "--wait=true")
	c.waitPodPhase(t, ns, "v3", v1.PodRunning, 3*time.Minute)
}
