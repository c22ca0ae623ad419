package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// example is the text of a file in examples/.
func (c *cluster) example(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.root, "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// dfTotalKiB is the size of the filesystem at path in the pod, from df.
func (c *cluster) dfTotalKiB(t *testing.T, ns, pod, path string) int64 {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(c.k(t, "-n", ns, "exec", pod, "--", "df", "-k", path)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		t.Fatalf("df -k %s in %s: %q", path, pod, lines)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("df -k %s in %s: %q", path, pod, lines)
	}
	return n
}

// examples/image-volume.yaml: a pod's filesystem is the volume's size (df
// in the pod), a write past it fails, and `kubectl patch` of the claim grows
// it online: df in the running pod shows the new size and the same write
// succeeds.
func testImageVolume(t *testing.T, c *cluster) {
	ns := c.namespace(t, "image")
	t.Cleanup(func() { c.run("", "delete", "storageclass", "hostpath-csi-image", "--ignore-not-found") })
	c.apply(t, ns, c.example(t, "image-volume.yaml"))
	c.waitPodPhase(t, ns, "db", v1.PodRunning, 3*time.Minute)
	if total := c.dfTotalKiB(t, ns, "db", "/data"); total < 900<<10 || total > 1<<20 {
		t.Fatalf("df in the pod: %d KiB for a 1 GiB claim", total)
	}
	if out, err := c.run("", "-n", ns, "exec", "db", "--", "dd", "if=/dev/zero", "of=/data/big", "bs=1M", "count=1100"); err == nil {
		t.Fatalf("1100 MiB written into a 1 GiB volume: %s", out)
	}
	c.k(t, "-n", ns, "exec", "db", "--", "rm", "/data/big")
	c.k(t, "-n", ns, "patch", "pvc", "db-data", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`)
	eventually(t, 3*time.Minute, "df in the pod shows about 2 GiB", func() (bool, error) {
		return c.dfTotalKiB(t, ns, "db", "/data") > 1900<<10, nil
	})
	c.k(t, "-n", ns, "exec", "db", "--", "dd", "if=/dev/zero", "of=/data/big", "bs=1M", "count=1100")
}

// examples/block.yaml: the pod gets a raw device of the claim's size; what
// it writes is there for the next pod on the same claim.
func testBlockVolume(t *testing.T, c *cluster) {
	ns := c.namespace(t, "block")
	c.apply(t, ns, c.example(t, "block.yaml"))
	c.waitPodPhase(t, ns, "raw", v1.PodRunning, 3*time.Minute)
	pv := c.boundPV(t, ns, "raw")
	if pv.Spec.VolumeMode == nil || *pv.Spec.VolumeMode != v1.PersistentVolumeBlock {
		t.Fatalf("PV %s is not a block volume", pv.Name)
	}
	if size := strings.TrimSpace(c.k(t, "-n", ns, "exec", "raw", "--", "blockdev", "--getsize64", "/dev/xvda")); size != "1073741824" {
		t.Fatalf("the pod's device has %s bytes, want 1073741824", size)
	}
	eventually(t, time.Minute, "the example's write", func() (bool, error) {
		out := c.k(t, "-n", ns, "exec", "raw", "--", "head", "-c", "11", "/dev/xvda")
		return out == "hello-block", nil
	})
	c.k(t, "-n", ns, "delete", "pod", "raw")
	c.apply(t, ns, c.example(t, "block.yaml"))
	c.waitPodPhase(t, ns, "raw", v1.PodRunning, 3*time.Minute)
	if log := c.k(t, "-n", ns, "logs", "raw"); !strings.Contains(log, "found: hello-block") {
		t.Fatalf("the second pod does not find the first pod's bytes: %q", log)
	}
}

// examples/inline.yaml: an inline csi: volume is made when the pod starts
// (a volume directory appears on the node), is held to the size asked (df
// in the pod; a write past it fails) and is removed when the pod goes.
func testInlineVolume(t *testing.T, c *cluster) {
	ns := c.namespace(t, "inline")
	before, _ := os.ReadDir(filepath.Join(c.dataDir1, "volumes"))
	c.apply(t, ns, c.example(t, "inline.yaml"))
	c.waitPodPhase(t, ns, "scratch", v1.PodRunning, 3*time.Minute)
	if out := c.k(t, "-n", ns, "exec", "scratch", "--", "cat", "/scratch/started"); out == "" {
		t.Fatal("the pod wrote nothing to its inline volume")
	}
	if total := c.dfTotalKiB(t, ns, "scratch", "/scratch"); total < 200<<10 || total > 256<<10 {
		t.Fatalf("df in the pod: %d KiB for a 256 MiB inline volume", total)
	}
	if out, err := c.run("", "-n", ns, "exec", "scratch", "--", "dd", "if=/dev/zero", "of=/scratch/big", "bs=1M", "count=300"); err == nil {
		t.Fatalf("300 MiB written into a 256 MiB inline volume: %s", out)
	}
	during, _ := os.ReadDir(filepath.Join(c.dataDir1, "volumes"))
	if len(during) != len(before)+1 {
		t.Fatalf("%d volume directories while the pod runs, %d before: want one more", len(during), len(before))
	}
	c.k(t, "-n", ns, "delete", "pod", "scratch")
	eventually(t, 2*time.Minute, "the inline volume removed with its pod", func() (bool, error) {
		after, err := os.ReadDir(filepath.Join(c.dataDir1, "volumes"))
		return len(after) == len(before), err
	})
}

// /metrics on the driver's --http-endpoint (what Prometheus scrapes):
// calls by method and code, and volumes by phase.
func testMetrics(t *testing.T, c *cluster) {
	body := c.driverHTTP(t, c.node1, "/metrics")
	for _, want := range []string{
		`csi_plugin_operations_seconds_count{driver_name="hostpath-csi.github.io",grpc_status_code="OK",method_name="/csi.v1.Controller/CreateVolume"}`,
		`csi_plugin_operations_seconds_count{driver_name="hostpath-csi.github.io",grpc_status_code="OK",method_name="/csi.v1.Node/NodePublishVolume"}`,
		`hostpath_csi_volumes{kind="persistent",phase="ready"}`,
		`hostpath_csi_data_filesystem_bytes{kind="available"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}
