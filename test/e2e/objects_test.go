package e2e

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// busybox is the image of every test pod (and of examples/): Debian's
// busybox-static, imported under this name by test/e2e/scripts/build.sh.
const busybox = "busybox:1.35"

// claim is a PersistentVolumeClaim manifest of the default class; extra is
// indented YAML added under spec (a dataSource, say).
func claim(name, size, extra string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %s
spec:
  accessModes: ["ReadWriteOnce"]
  resources:
    requests:
      storage: %s
%s`, name, size, extra)
}

// pod is a pod that mounts claim at /data and runs script in sh. A pod with
// restartPolicy Never reports through its exit code; keep=true keeps it
// running after the script (for kubectl exec), exiting at once on SIGTERM.
func pod(name, claimName, script string, keep bool) string {
	policy := "Never"
	if keep {
		policy = "Always"
		script += "\ntrap 'exit 0' TERM; sleep 3600 & wait"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  restartPolicy: %s
  terminationGracePeriodSeconds: 5
  containers:
    - name: main
      image: %s
      imagePullPolicy: IfNotPresent
      command: ["sh", "-ec", %q]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: %s
`, name, policy, busybox, script, claimName)
}

// waitPodPhase waits for the pod to reach phase; a pod that ends in the
// other terminal phase fails the test at once, with its log.
func (c *cluster) waitPodPhase(t *testing.T, ns, name string, phase v1.PodPhase, timeout time.Duration) *v1.Pod {
	t.Helper()
	var p v1.Pod
	eventually(t, timeout, fmt.Sprintf("pod %s/%s %s", ns, name, phase), func() (bool, error) {
		ok, err := c.tryGet(&p, "-n", ns, "pod", name)
		if err != nil || !ok {
			return false, err
		}
		if p.Status.Phase == phase {
			return phase != v1.PodRunning || podReady(&p), nil
		}
		if p.Status.Phase == v1.PodFailed || (p.Status.Phase == v1.PodSucceeded && phase == v1.PodRunning) {
			out, _ := c.run("", "-n", ns, "logs", name)
			t.Fatalf("pod %s/%s ended %s, not %s; its log:\n%s", ns, name, p.Status.Phase, phase, out)
		}
		return false, fmt.Errorf("phase %s", p.Status.Phase)
	})
	return &p
}

func podReady(p *v1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// runPod runs script in a pod on claim and requires it to exit 0.
func (c *cluster) runPod(t *testing.T, ns, name, claimName, script string) string {
	t.Helper()
	c.apply(t, ns, pod(name, claimName, script, false))
	c.waitPodPhase(t, ns, name, v1.PodSucceeded, 3*time.Minute)
	return c.k(t, "-n", ns, "logs", name)
}

// boundPV waits for the claim to be Bound and returns its PV.
func (c *cluster) boundPV(t *testing.T, ns, name string) *v1.PersistentVolume {
	t.Helper()
	var pvc v1.PersistentVolumeClaim
	eventually(t, 3*time.Minute, fmt.Sprintf("claim %s/%s Bound", ns, name), func() (bool, error) {
		ok, err := c.tryGet(&pvc, "-n", ns, "pvc", name)
		return ok && pvc.Status.Phase == v1.ClaimBound, err
	})
	var pv v1.PersistentVolume
	c.get(t, &pv, "pv", pvc.Spec.VolumeName)
	return &pv
}

// pvNode is the node named by the PV's node affinity (the driver's topology
// key), or "" if there is none.
func pvNode(pv *v1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == topologyKey && e.Operator == v1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

const topologyKey = "topology.hostpath-csi.github.io/node"

// volumeDir is where the driver keeps a volume's data on the host.
func volumeDir(dataDir, volumeHandle string) string {
	return filepath.Join(dataDir, "volumes", volumeHandle)
}

func snapshotDir(dataDir, snapshotHandle string) string {
	return filepath.Join(dataDir, "snapshots", snapshotHandle)
}

func exists(path string) bool {
	// Only "no such file" is gone: any other error (a path the test may
	// not read) must not pass a check that data was removed.
	_, err := os.Lstat(path)
	return err == nil || !errors.Is(err, fs.ErrNotExist)
}

// hostMountsOf lists the host's mount points whose source is below dir
// (a bind mount of a volume: its root field in mountinfo), so a test can
// tell which pods' mounts of the driver's volumes are left.
func hostMountsOf(t *testing.T, rootPrefix string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[3], rootPrefix) {
			out = append(out, f[4])
		}
	}
	return out
}
