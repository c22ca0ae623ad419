package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

const driverName = "hostpath-csi.github.io"

// Every overlay and every example passes the API server's own validation
// (admission, schemas of the CRDs) without being created.
func testServerSideDryRun(t *testing.T, c *cluster) {
	overlays, _ := filepath.Glob(filepath.Join(c.root, "deploy/kubernetes/overlays/*"))
	if len(overlays) < 3 {
		t.Fatalf("expected the single-node, distributed and snapshot-controller overlays, found %v", overlays)
	}
	for _, o := range overlays {
		c.k(t, "apply", "--dry-run=server", "-k", o)
	}
	ns := c.namespace(t, "dry-run")
	examples, _ := filepath.Glob(filepath.Join(c.root, "examples/*.yaml"))
	if len(examples) == 0 {
		t.Fatal("no examples found")
	}
	for _, e := range examples {
		c.k(t, "apply", "--dry-run=server", "-n", ns, "-f", e)
	}
}

// driverPod is the DaemonSet's pod on node.
func (c *cluster) driverPod(t *testing.T, node string) *v1.Pod {
	t.Helper()
	var pods v1.PodList
	c.get(t, &pods, "-n", "hostpath-csi", "pods", "-l", "app.kubernetes.io/name=hostpath-csi",
		"--field-selector", "spec.nodeName="+node)
	if len(pods.Items) != 1 {
		t.Fatalf("%d driver pods on %s, want 1", len(pods.Items), node)
	}
	return &pods.Items[0]
}

// The driver pod runs every sidecar, ready, from the images the manifests
// name (pulled IfNotPresent, so a locally imported image is used); the
// kubelet lists the driver in CSINode with its topology key, and the node
// carries the key.
func testDriverDeployed(t *testing.T, c *cluster) {
	p := c.driverPod(t, c.node1)
	want := map[string]bool{"hostpath-plugin": true, "csi-provisioner": true, "csi-snapshotter": true,
		"csi-resizer": true, "node-driver-registrar": true, "liveness-probe": true}
	for _, s := range p.Status.ContainerStatuses {
		if !s.Ready {
			t.Errorf("container %s is not ready", s.Name)
		}
		delete(want, s.Name)
	}
	if len(want) > 0 {
		t.Errorf("containers missing from the driver pod: %v", want)
	}
	for _, ct := range p.Spec.Containers {
		if ct.ImagePullPolicy != v1.PullIfNotPresent || strings.HasSuffix(ct.Image, ":latest") || !strings.Contains(ct.Image, ":v") {
			t.Errorf("container %s: image %s with pull policy %s; want a versioned tag, IfNotPresent", ct.Name, ct.Image, ct.ImagePullPolicy)
		}
	}
	// Only the sidecars that call the API get a ServiceAccount token: the
	// driver, which a tenant's volume reaches, holds no credentials.
	const tokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"
	callsAPI := map[string]bool{"csi-provisioner": true, "csi-snapshotter": true, "csi-resizer": true}
	for _, ct := range p.Spec.Containers {
		has := false
		for _, m := range ct.VolumeMounts {
			has = has || m.MountPath == tokenDir
		}
		if has != callsAPI[ct.Name] {
			t.Errorf("container %s: token mounted %v, want %v", ct.Name, has, callsAPI[ct.Name])
		}
	}
	// The namespace says the level its privileged pods need, so a cluster
	// whose default Pod Security level is baseline or restricted runs them.
	var ns v1.Namespace
	c.get(t, &ns, "namespace", "hostpath-csi")
	if got := ns.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace hostpath-csi: pod-security.kubernetes.io/enforce=%q, want privileged", got)
	}
	var csinode storagev1.CSINode
	c.get(t, &csinode, "csinode", c.node1)
	found := false
	for _, d := range csinode.Spec.Drivers {
		if d.Name == driverName {
			found = true
			if d.NodeID != c.node1 || len(d.TopologyKeys) != 1 || d.TopologyKeys[0] != topologyKey {
				t.Errorf("CSINode driver entry %+v; want node ID %s and topology key %s", d, c.node1, topologyKey)
			}
		}
	}
	if !found {
		t.Errorf("CSINode %s does not list %s", c.node1, driverName)
	}
	// The driver's own /healthz answers on the pod's address (the readiness
	// probe's target), reached through the API server's pod proxy.
	if out := c.driverHTTP(t, c.node1, "/healthz"); !strings.Contains(strings.ToLower(out), "ok") {
		t.Errorf("the driver's /healthz answered %q", out)
	}
	var node v1.Node
	c.get(t, &node, "node", c.node1)
	if node.Labels[topologyKey] != c.node1 {
		t.Errorf("node %s label %s=%q, want %q", c.node1, topologyKey, node.Labels[topologyKey], c.node1)
	}
}

// driverHTTP gets path from the driver's --http-endpoint (port 9809 of the
// driver pod on node) through the API server's proxy to the pod.
func (c *cluster) driverHTTP(t *testing.T, node, path string) string {
	t.Helper()
	p := c.driverPod(t, node)
	return c.k(t, "get", "--raw", "/api/v1/namespaces/hostpath-csi/pods/"+p.Name+":9809/proxy"+path)
}

// A claim binds when its pod is scheduled, to a volume on that pod's node;
// the pod writes, another pod reads the same bytes; the bytes are in the
// volume's directory on the host; kubectl logs and exec reach the pods.
func testClaimBoundAndUsed(t *testing.T, c *cluster) {
	ns := c.namespace(t, "claim")
	c.apply(t, ns, claim("data", "64Mi", ""))
	c.apply(t, ns, pod("writer", "data",
		"head -c 1048576 /dev/urandom > /data/blob; sha256sum /data/blob > /data/blob.sha256; cat /data/blob.sha256", true))
	p := c.waitPodPhase(t, ns, "writer", v1.PodRunning, 3*time.Minute)
	pv := c.boundPV(t, ns, "data")
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driverName {
		t.Fatalf("PV %s is not a volume of %s: %+v", pv.Name, driverName, pv.Spec.PersistentVolumeSource)
	}
	if got := pvNode(pv); got != p.Spec.NodeName || got != c.node1 {
		t.Errorf("PV %s is on node %q, pod on %q; want both on %s", pv.Name, got, p.Spec.NodeName, c.node1)
	}
	logged := strings.Fields(c.k(t, "-n", ns, "logs", "writer"))
	if len(logged) != 2 {
		t.Fatalf("kubectl logs writer: %q, want a sha256sum line", logged)
	}
	onHost, err := os.ReadFile(filepath.Join(volumeDir(c.dataDir1, pv.Spec.CSI.VolumeHandle), "blob"))
	if err != nil {
		t.Fatalf("the volume's data on the host: %v", err)
	}
	if sum := sha256.Sum256(onHost); hex.EncodeToString(sum[:]) != logged[0] {
		t.Errorf("the host holds other bytes than the pod wrote")
	}
	if out := c.k(t, "-n", ns, "exec", "writer", "--", "sha256sum", "-c", "/data/blob.sha256"); !strings.Contains(out, "OK") {
		t.Errorf("kubectl exec sha256sum -c: %q", out)
	}
	c.k(t, "-n", ns, "delete", "pod", "writer")
	c.runPod(t, ns, "reader", "data", "sha256sum -c /data/blob.sha256")
}

// The StatefulSet of examples/statefulset.yaml: web-0 records its start in
// its volume, is deleted, and its successor finds that record, as the same
// non-root user (fsGroup).
func testStatefulSet(t *testing.T, c *cluster) {
	ns := c.namespace(t, "statefulset")
	c.k(t, "apply", "-n", ns, "-f", filepath.Join(c.root, "examples/statefulset.yaml"))
	first := c.waitPodPhase(t, ns, "web-0", v1.PodRunning, 3*time.Minute)
	c.waitPodPhase(t, ns, "web-1", v1.PodRunning, 3*time.Minute)
	before := c.k(t, "-n", ns, "exec", "web-0", "--", "cat", "/data/starts")
	if lines := strings.Split(strings.TrimSpace(before), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "web-0 started") {
		t.Fatalf("web-0's first start recorded %q", before)
	}
	if id := strings.TrimSpace(c.k(t, "-n", ns, "exec", "web-0", "--", "id", "-u")); id != "999" {
		t.Errorf("web-0 runs as uid %s, want 999", id)
	}
	pvBefore := c.boundPV(t, ns, "data-web-0")
	c.k(t, "-n", ns, "delete", "pod", "web-0")
	var second *v1.Pod
	eventually(t, 3*time.Minute, "a new web-0", func() (bool, error) {
		var p v1.Pod
		ok, err := c.tryGet(&p, "-n", ns, "pod", "web-0")
		if !ok || err != nil || p.UID == first.UID || !podReady(&p) {
			return false, err
		}
		second = &p
		return true, nil
	})
	after := c.k(t, "-n", ns, "exec", "web-0", "--", "cat", "/data/starts")
	lines := strings.Split(strings.TrimSpace(after), "\n")
	if len(lines) != 2 || lines[0]+"\n" != before {
		t.Fatalf("after the restart web-0 reads %q; want its first line %q and a second", after, before)
	}
	if pv := c.boundPV(t, ns, "data-web-0"); pv.Name != pvBefore.Name || second.Spec.NodeName != c.node1 {
		t.Errorf("web-0 came back with PV %s on %s; want %s on %s", pv.Name, second.Spec.NodeName, pvBefore.Name, c.node1)
	}
}

// examples/pvc-and-pod.yaml, then examples/snapshot.yaml: the snapshot
// becomes ready, and the claim restored from it holds what the source held
// when it was taken, even after the source changed; examples/clone.yaml
// clones the source as it is now. The example pods exit at once on SIGTERM.
func testSnapshotRestoreClone(t *testing.T, c *cluster) {
	ns := c.namespace(t, "snapshot")
	c.k(t, "apply", "-n", ns, "-f", filepath.Join(c.root, "examples/pvc-and-pod.yaml"))
	c.waitPodPhase(t, ns, "writer", v1.PodRunning, 3*time.Minute)
	if out := c.k(t, "-n", ns, "logs", "writer"); strings.Count(out, "\n") != 1 {
		t.Errorf("the writer logged %q, want one date line", out)
	}
	c.k(t, "-n", ns, "exec", "writer", "--", "sh", "-c",
		"head -c 2097152 /dev/urandom > /data/blob && sha256sum /data/blob > /data/blob.sha256")

	c.k(t, "apply", "-n", ns, "-f", filepath.Join(c.root, "examples/snapshot.yaml"))
	var snap volumeSnapshot
	eventually(t, 2*time.Minute, "VolumeSnapshot data-snap ready", func() (bool, error) {
		ok, err := c.tryGet(&snap, "-n", ns, "volumesnapshot", "data-snap")
		return ok && snap.Status != nil && snap.Status.ReadyToUse != nil && *snap.Status.ReadyToUse, err
	})
	var content volumeSnapshotContent
	c.get(t, &content, "volumesnapshotcontent", *snap.Status.BoundVolumeSnapshotContentName)
	if content.Status == nil || content.Status.SnapshotHandle == nil || !exists(snapshotDir(c.dataDir1, *content.Status.SnapshotHandle)) {
		t.Fatalf("the snapshot's data is not on the node: content status %+v", content.Status)
	}
	if snap.Status.RestoreSize == nil {
		t.Errorf("the snapshot has no restoreSize")
	}
	// Break the source: the restore must not see it.
	c.k(t, "-n", ns, "exec", "writer", "--", "sh", "-c", "echo broken > /data/blob")
	c.waitPodPhase(t, ns, "restored-reader", v1.PodRunning, 3*time.Minute)
	c.k(t, "-n", ns, "exec", "restored-reader", "--", "sha256sum", "-c", "/data/blob.sha256")
	if out := c.k(t, "-n", ns, "logs", "restored-reader"); strings.Count(out, "\n") != 1 {
		t.Errorf("the restored volume's log reads %q, want the writer's one line", out)
	}

	c.k(t, "apply", "-n", ns, "-f", filepath.Join(c.root, "examples/clone.yaml"))
	c.waitPodPhase(t, ns, "clone-reader", v1.PodRunning, 3*time.Minute)
	if out := c.k(t, "-n", ns, "exec", "clone-reader", "--", "cat", "/data/blob"); out != "broken\n" {
		t.Errorf("the clone's blob reads %q, want the source's current \"broken\"", out)
	}
	cl, src := c.boundPV(t, ns, "data-clone"), c.boundPV(t, ns, "data")
	if cl.Spec.CSI.VolumeHandle == src.Spec.CSI.VolumeHandle {
		t.Errorf("the clone is the source volume itself")
	}

	// SIGTERM ends the example pod's shell at once with status 0; the kubelet
	// restarts it (restartPolicy Always). A shell that ignored SIGTERM would
	// not restart at all and would make every delete wait 30 s.
	// The exec'd kill lives in the container it ends: when the shell exits
	// first, the runtime kills the exec too and kubectl reports 137. Either
	// way the signal was sent; what counts is the restart below.
	if out, err := c.run("", "-n", ns, "exec", "writer", "--", "kill", "-TERM", "1"); err != nil && !strings.Contains(err.Error(), "exit code 137") {
		t.Fatalf("send SIGTERM to the writer: %v\n%s", err, out)
	}
	eventually(t, time.Minute, "writer restarted after SIGTERM", func() (bool, error) {
		var p v1.Pod
		ok, err := c.tryGet(&p, "-n", ns, "pod", "writer")
		if !ok || err != nil || len(p.Status.ContainerStatuses) == 0 {
			return false, err
		}
		s := p.Status.ContainerStatuses[0]
		if s.RestartCount == 0 || s.LastTerminationState.Terminated == nil {
			return false, nil
		}
		if code := s.LastTerminationState.Terminated.ExitCode; code != 0 {
			t.Fatalf("the writer exited %d on SIGTERM, want 0", code)
		}
		return true, nil
	})
}

// examples/storageclass-private.yaml: a 0770 volume written by a non-root
// pod through its fsGroup.
func testPrivateClass(t *testing.T, c *cluster) {
	ns := c.namespace(t, "private")
	t.Cleanup(func() { c.run("", "delete", "storageclass", "hostpath-csi-private", "--ignore-not-found") })
	c.k(t, "apply", "-n", ns, "-f", filepath.Join(c.root, "examples/storageclass-private.yaml"))
	c.waitPodPhase(t, ns, "private-writer", v1.PodRunning, 3*time.Minute)
	out := c.k(t, "-n", ns, "logs", "private-writer")
	if !strings.Contains(out, "drwxrws---") || !strings.Contains(out, "uid=1000") || !strings.Contains(out, "2000") {
		t.Errorf("private-writer logged %q; want a drwxrws--- directory of group 2000 written by uid 1000", out)
	}
}

// csi-provisioner publishes a CSIStorageCapacity for the node, close to the
// free space of the data directory's filesystem, and the scheduler uses it:
// a claim larger than that keeps its pod Pending for want of storage and is
// never provisioned.
func testStorageCapacity(t *testing.T, c *cluster) {
	var caps storagev1.CSIStorageCapacityList
	var mine *storagev1.CSIStorageCapacity
	eventually(t, 2*time.Minute, "a CSIStorageCapacity for "+c.node1, func() (bool, error) {
		if err := c.list(&caps, "-n", "hostpath-csi", "csistoragecapacities"); err != nil {
			return false, err
		}
		for i, sc := range caps.Items {
			if sc.StorageClassName == "hostpath-csi" && sc.NodeTopology != nil &&
				sc.NodeTopology.MatchLabels[topologyKey] == c.node1 && sc.Capacity != nil {
				mine = &caps.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	var st syscall.Statfs_t
	if err := syscall.Statfs(c.dataDir1, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	published := mine.Capacity.Value()
	if diff := published - free; diff > free/10+1<<30 || -diff > free/10+1<<30 {
		t.Errorf("published capacity %d bytes; the data directory has %d free", published, free)
	}

	ns := c.namespace(t, "capacity")
	tooBig := resource.NewQuantity((published/(1<<30)+2)*(1<<30)*2, resource.BinarySI)
	c.apply(t, ns, claim("huge", tooBig.String(), ""))
	c.apply(t, ns, pod("wants-huge", "huge", "true", false))
	eventually(t, 2*time.Minute, "the scheduler to refuse the pod for storage", func() (bool, error) {
		var p v1.Pod
		ok, err := c.tryGet(&p, "-n", ns, "pod", "wants-huge")
		if !ok || err != nil {
			return false, err
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == v1.PodScheduled && cond.Status == v1.ConditionFalse {
				return strings.Contains(cond.Message, "did not have enough free storage"), fmt.Errorf("%s", cond.Message)
			}
		}
		return false, nil
	})
	var pvc v1.PersistentVolumeClaim
	c.get(t, &pvc, "-n", ns, "pvc", "huge")
	if pvc.Status.Phase != v1.ClaimPending || pvc.Spec.VolumeName != "" {
		t.Errorf("the oversized claim is %s with volume %q; want Pending without one", pvc.Status.Phase, pvc.Spec.VolumeName)
	}
}

// Deleting a claim deletes its PV and the data on the node, leaving nothing
// in the driver's trash or quarantine.
func testDeleteRemovesData(t *testing.T, c *cluster) {
	ns := c.namespace(t, "delete")
	c.apply(t, ns, claim("gone", "16Mi", ""))
	c.runPod(t, ns, "writer", "gone", "echo data > /data/file")
	pv := c.boundPV(t, ns, "gone")
	dir := volumeDir(c.dataDir1, pv.Spec.CSI.VolumeHandle)
	if !exists(filepath.Join(dir, "file")) {
		t.Fatalf("the written file is not in %s", dir)
	}
	c.k(t, "-n", ns, "delete", "pod", "writer")
	c.k(t, "-n", ns, "delete", "pvc", "gone")
	eventually(t, 2*time.Minute, "PV "+pv.Name+" deleted", func() (bool, error) {
		var p v1.PersistentVolume
		ok, err := c.tryGet(&p, "pv", pv.Name)
		return !ok && err == nil, err
	})
	if exists(dir) {
		t.Errorf("the volume's data %s is still on the node", dir)
	}
	for _, sub := range []string{"trash", "quarantine", "partial"} {
		entries, _ := os.ReadDir(filepath.Join(c.dataDir1, sub))
		if len(entries) != 0 {
			t.Errorf("data/%s holds %d entries after the delete", sub, len(entries))
		}
	}
}

// The liveness probe reaches the driver (through the livenessprobe sidecar
// on the pod's address): after more than a minute of service no container of
// the driver pod has been restarted. (Probing 127.0.0.1 from the kubelet
// restarted the driver every ~50 s.)
func testDriverNotRestarted(t *testing.T, c *cluster) {
	p := c.driverPod(t, c.node1)
	if p.Status.StartTime != nil {
		if wait := 75*time.Second - time.Since(p.Status.StartTime.Time); wait > 0 {
			time.Sleep(wait)
		}
	}
	p = c.driverPod(t, c.node1)
	for _, s := range p.Status.ContainerStatuses {
		if s.RestartCount != 0 || !s.Ready {
			t.Errorf("container %s: %d restarts, ready=%v", s.Name, s.RestartCount, s.Ready)
		}
	}
}

// The driver container is killed while a pod uses its volume: the pod keeps
// its mount and data, the kubelet restarts the driver, and it serves again.
func testDriverKilled(t *testing.T, c *cluster) {
	ns := c.namespace(t, "kill")
	c.apply(t, ns, claim("data", "16Mi", ""))
	c.apply(t, ns, pod("user", "data", "head -c 65536 /dev/urandom > /data/blob; sha256sum /data/blob > /data/blob.sha256", true))
	c.waitPodPhase(t, ns, "user", v1.PodRunning, 3*time.Minute)

	dp := c.driverPod(t, c.node1)
	var restarts int32
	var id string
	for _, s := range dp.Status.ContainerStatuses {
		if s.Name == "hostpath-plugin" {
			restarts, id = s.RestartCount, strings.TrimPrefix(s.ContainerID, "containerd://")
		}
	}
	// SIGKILL through containerd, which signals the container's process in
	// the node's PID namespace (its PID there is not the host's).
	if out, err := runCmd(append(c.ctr, "tasks", "kill", "--signal", "SIGKILL", id)...); err != nil {
		t.Fatalf("kill -9 the driver (container %s): %v\n%s", id, err, out)
	}
	eventually(t, 2*time.Minute, "the driver restarted and ready", func() (bool, error) {
		p := c.driverPod(t, c.node1)
		for _, s := range p.Status.ContainerStatuses {
			if s.Name == "hostpath-plugin" {
				return s.RestartCount > restarts && s.Ready, nil
			}
		}
		return false, nil
	})
	c.k(t, "-n", ns, "exec", "user", "--", "sha256sum", "-c", "/data/blob.sha256")
	c.k(t, "-n", ns, "exec", "user", "--", "sh", "-c", "echo after > /data/after && cat /data/after")
	// And it serves new volumes.
	c.apply(t, ns, claim("fresh", "16Mi", ""))
	c.runPod(t, ns, "fresh-user", "fresh", "echo ok > /data/ok")
}

// Once every scenario's namespace is gone, no volume of the driver is
// mounted anywhere on the host and no volume or snapshot is left on disk.
func testNothingMounted(t *testing.T, c *cluster) {
	t.Cleanup(func() {
		if t.Failed() {
			out, err := c.run("", "describe", "pv")
			t.Logf("kubectl describe pv:\n%s%v", out, errOrEmpty(err))
		}
	})
	eventually(t, 2*time.Minute, "no PV of the driver left", func() (bool, error) {
		var pvs v1.PersistentVolumeList
		if err := c.list(&pvs, "pv"); err != nil {
			return false, err
		}
		n := 0
		for _, pv := range pvs.Items {
			if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == driverName {
				n++
			}
		}
		return n == 0, fmt.Errorf("%d PVs left", n)
	})
	for _, dir := range []string{c.dataDir1, c.dataDir2} {
		if m := hostMountsOf(t, dir+"/"); len(m) != 0 {
			t.Errorf("still mounted from %s: %v", dir, m)
		}
		for _, sub := range []string{"volumes", "snapshots"} {
			entries, _ := os.ReadDir(filepath.Join(dir, sub))
			if len(entries) != 0 {
				t.Errorf("%s/%s still holds %d entries", dir, sub, len(entries))
			}
		}
	}
}

// A claim in use is made larger (`kubectl patch`, as `kubectl edit` does):
// csi-resizer raises the PV, the kubelet finishes the expansion on the node
// (NodeExpandVolume) and the claim reports the new size; the pod keeps its
// data. What `df` shows inside the pod is checked once the driver enforces
// sizes (see the scenario list in e2e_test.go).
func testExpansion(t *testing.T, c *cluster) {
	ns := c.namespace(t, "expand")
	c.apply(t, ns, claim("grow", "16Mi", ""))
	c.apply(t, ns, pod("user", "grow", "echo before > /data/file", true))
	c.waitPodPhase(t, ns, "user", v1.PodRunning, 3*time.Minute)
	pv := c.boundPV(t, ns, "grow")
	c.k(t, "-n", ns, "patch", "pvc", "grow", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"storage":"64Mi"}}}}`)
	want := resource.MustParse("64Mi")
	eventually(t, 3*time.Minute, "the claim and its PV at 64Mi", func() (bool, error) {
		var pvc v1.PersistentVolumeClaim
		var p v1.PersistentVolume
		if ok, err := c.tryGet(&pvc, "-n", ns, "pvc", "grow"); !ok || err != nil {
			return false, err
		}
		if ok, err := c.tryGet(&p, "pv", pv.Name); !ok || err != nil {
			return false, err
		}
		got, pvGot := pvc.Status.Capacity[v1.ResourceStorage], p.Spec.Capacity[v1.ResourceStorage]
		return got.Cmp(want) >= 0 && pvGot.Cmp(want) >= 0 && len(pvc.Status.AllocatedResourceStatuses) == 0,
			fmt.Errorf("claim %s, PV %s, resize status %v, conditions %v", got.String(), pvGot.String(),
				pvc.Status.AllocatedResourceStatuses, pvc.Status.Conditions)
	})
	if out := c.k(t, "-n", ns, "exec", "user", "--", "cat", "/data/file"); out != "before\n" {
		t.Errorf("after the expansion the pod reads %q", out)
	}
}
