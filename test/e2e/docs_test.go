package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/hostpath-csi/hostpath-csi/test/e2e/markdown"
)

// docCommand is a line of a docs block marked <!-- doctest: e2e -->.
type docCommand struct {
	file string // relative to the repository: docs/x.md
	markdown.Line
}

// docsE2ECommands are the e2e lines of root's docs/*.md of one phase
// (markdown.E2EPhases), file by file, in order (test/docs accounts for
// these lines as run here).
func docsE2ECommands(root, phase string) ([]docCommand, error) {
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	var out []docCommand
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(root, f)
		d, err := markdown.Parse(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		for _, l := range markdown.E2ELines(d, phase) {
			out = append(out, docCommand{file: rel, Line: l})
		}
	}
	return out, nil
}

// The commands the docs show for a cluster work on one: each line of the
// docs' e2e blocks runs with bash from the repository's root, kubectl on
// PATH, in a namespace of its own as the default, and must exit 0. The
// dry-run blocks' lines (an NFS overlay, which needs a server this cluster
// lacks) are checked by the API server with --dry-run=server.
func testDocsCommands(t *testing.T, c *cluster) {
	runDocsPhase(t, c, markdown.E2ESingleNode)
	runDocsPhase(t, c, markdown.E2EDryRun)
}

// After the switch to overlays/distributed: the many-node install.
func testDocsDistributed(t *testing.T, c *cluster) {
	runDocsPhase(t, c, markdown.E2EDistributed)
}

// Last of all: the documented uninstall, on a namespace holding what a
// user has (a claim used by a pod, a snapshot of it), then nothing of the
// driver is left in the cluster, and the volume's data is gone from the
// node (the nodes' other leftovers are cluster-down's check).
func testDocsUninstall(t *testing.T, c *cluster) {
	// The docs' uninstall names this namespace.
	ns := c.namespaceNamed(t, "my-app")
	c.k(t, "apply", "-n", ns, "-f", filepath.Join(c.root, "examples/pvc-and-pod.yaml"))
	c.waitPodPhase(t, ns, "writer", v1.PodRunning, 3*time.Minute)
	pv := c.boundPV(t, ns, "data")
	dir := volumeDir(c.dataDir1, pv.Spec.CSI.VolumeHandle)
	if !exists(dir) {
		t.Fatalf("the claim's volume is not in %s", dir)
	}
	c.apply(t, ns, `apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: data-snap
spec:
  volumeSnapshotClassName: hostpath-csi
  source:
    persistentVolumeClaimName: data
`)
	var content string
	eventually(t, 2*time.Minute, "VolumeSnapshot data-snap ready", func() (bool, error) {
		out, err := c.run("", "-n", ns, "get", "volumesnapshot", "data-snap", "-o",
			"jsonpath={.status.readyToUse} {.status.boundVolumeSnapshotContentName}")
		f := strings.Fields(out)
		if err != nil || len(f) != 2 || f[0] != "true" {
			return false, err
		}
		content = f[1]
		return true, nil
	})

	handle := strings.TrimSpace(c.k(t, "get", "volumesnapshotcontent", content, "-o", "jsonpath={.status.snapshotHandle}"))
	snapDir := snapshotDir(c.dataDir1, handle)
	if !exists(snapDir) {
		t.Fatalf("the snapshot %s is not in %s", handle, snapDir)
	}

	// Before the driver goes, the documented wait has seen its volume and
	// snapshot removed: with the driver gone first they would stay.
	driverDeleted := false
	before := func(cmd docCommand) {
		if driverDeleted || !strings.Contains(cmd.Text, "kubectl delete -k") {
			return
		}
		driverDeleted = true
		var p v1.PersistentVolume
		if ok, err := c.tryGet(&p, "pv", pv.Name); ok || err != nil {
			t.Errorf("the driver is about to be deleted while PV %s is still there (%v)", pv.Name, err)
		}
		if out, err := c.run("", "get", "volumesnapshotcontent", content, "-o", "name", "--ignore-not-found"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("the driver is about to be deleted while VolumeSnapshotContent %s is still there: %q %v", content, out, err)
		}
		if exists(dir) || exists(snapDir) {
			t.Errorf("the driver is about to be deleted while the claim's or the snapshot's data is on the node: %s %v, %s %v", dir, exists(dir), snapDir, exists(snapDir))
		}
	}
	if runDocsPhaseWith(t, c, markdown.E2EUninstall, before) == 0 {
		t.Fatal("docs/install.md has no <!-- doctest: e2e uninstall --> block")
	}
	if !driverDeleted {
		t.Fatal("the documented uninstall has no kubectl delete -k of the driver")
	}

	c.nothingOfTheDriverLeft(t, "pod in "+ns, "get pods -n "+ns+" -o name", "pod/")
	if exists(dir) {
		t.Errorf("after the documented uninstall the claim's data %s is still on the node", dir)
	}
	if exists(snapDir) {
		t.Errorf("after the documented uninstall the snapshot's data %s is still on the node", snapDir)
	}
}

// nothingOfTheDriverLeft fails t for each object of the driver left in the
// cluster after an uninstall; more are triples of what, kubectl arguments
// and a text their output must not hold.
func (c *cluster) nothingOfTheDriverLeft(t *testing.T, more ...string) {
	t.Helper()
	checks := []string{
		"CSIDriver", "get csidrivers -o name", "hostpath-csi.github.io",
		"PersistentVolume", "get pv -o jsonpath={.items[*].spec.csi.driver}", "hostpath-csi.github.io",
		"namespace", "get namespaces -o name", "namespace/hostpath-csi\n",
		"StorageClass", "get storageclasses -o jsonpath={.items[*].provisioner}", "hostpath-csi.github.io",
		"VolumeSnapshot CRD", "get crd -o name", "volumesnapshots.snapshot.storage.k8s.io",
		"snapshot-controller", "get deployments -n kube-system -o name", "snapshot-controller",
	}
	checks = append(checks, more...)
	for i := 0; i+2 < len(checks); i += 3 {
		out := c.k(t, strings.Fields(checks[i+1])...)
		if strings.Contains(out+"\n", checks[i+2]) {
			t.Errorf("after the documented uninstall a %s is left: %s", checks[i], out)
		}
	}
}

// runDocsPhase runs the docs' e2e lines of one phase and says how many.
func runDocsPhase(t *testing.T, c *cluster, phase string) int {
	t.Helper()
	return runDocsPhaseWith(t, c, phase, nil)
}

// runDocsPhaseWith is runDocsPhase, calling before (if not nil) ahead of
// each line.
func runDocsPhaseWith(t *testing.T, c *cluster, phase string, before func(docCommand)) int {
	t.Helper()
	cmds, err := docsE2ECommands(c.root, phase)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) == 0 {
		t.Logf("no <!-- doctest: e2e %s --> blocks in docs/*.md", phase)
		return 0
	}
	ns := "default" // where the docs' helm lines keep the release's record
	switch phase {
	case markdown.E2EHelm, markdown.E2EHelmDistributed, markdown.E2EHelmUninstall:
	default:
		ns = c.namespace(t, "docs-"+phase)
	}
	dir := t.TempDir()
	kc, err := os.ReadFile(c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(c.kubectl, "--kubeconfig", kubeconfig, "config", "set-context", "--current", "--namespace", ns).CombinedOutput(); err != nil {
		t.Fatalf("kubectl config set-context --namespace %s: %v\n%s", ns, err, out)
	}
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(c.kubectl, filepath.Join(bin, "kubectl")); err != nil {
		t.Fatal(err)
	}
	// ROTATE_WAIT: deploy/kubernetes/transfer-keys.sh rotate waits this
	// long between its steps, twice the kubelet's sync period here
	// (cluster-up.sh) and node 2's copy of the Secret (node2.sh).
	env := append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+bin+":"+os.Getenv("PATH"), "ROTATE_WAIT=45s")
	for _, cmd := range cmds {
		if before != nil {
			before(cmd)
		}
		text := cmd.Text
		if phase == markdown.E2EDryRun {
			if err := markdown.DryRunnable(text); err != nil {
				t.Fatalf("%s:%d: %v", cmd.file, cmd.N, err)
			}
			text = markdown.DryRunCommand(text)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		x := exec.CommandContext(ctx, "bash", "-c", "set -o pipefail\n"+text)
		x.Dir, x.Env = c.root, env
		out, err := x.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s:%d: %s: %v\n%s", cmd.file, cmd.N, text, err, out)
		}
		t.Logf("%s:%d: %s\n%s", cmd.file, cmd.N, text, out)
	}
	return len(cmds)
}

// The scenario runs the lines test/docs reads from the same blocks
// (test/docs/markdown tests the parser on this fixture too).
func TestDocsE2ECommands(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "docs"), 0o755); err != nil {
		t.Fatal(err)
	}
	fixture, err := os.ReadFile("../docs/testdata/e2e.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.md", "b.md"} {
		if err := os.WriteFile(filepath.Join(root, "docs", name), fixture, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := docsE2ECommands(root, markdown.E2ESingleNode)
	if err != nil {
		t.Fatal(err)
	}
	var want []docCommand
	for _, f := range []string{"docs/a.md", "docs/b.md"} {
		want = append(want,
			docCommand{f, markdown.Line{N: 5, Text: "kubectl apply -k deploy/kubernetes/overlays/single-node   # the driver"}},
			docCommand{f, markdown.Line{N: 8, Text: "kubectl -n hostpath-csi rollout status \\\n  daemonset/hostpath-csi"}},
			docCommand{f, markdown.Line{N: 20, Text: "kubectl get storageclass"}})
	}
	if len(got) != len(want) {
		t.Fatalf("%d commands %v, want %d %v", len(got), got, len(want), want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("command %d: %v, want %v", i, got[i], want[i])
		}
	}
	if err := os.WriteFile(filepath.Join(root, "docs", "c.md"), []byte("```sh\nunclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := docsE2ECommands(root, markdown.E2ESingleNode); err == nil {
		t.Error("an unclosed block in docs/c.md parsed")
	}
}

// The docs' default-class lines on a cluster that, as kind and minikube do,
// has a default class of its own (standard): take leaves hostpath-csi the
// only default, a StatefulSet whose claims name no class gets this driver's
// volumes, and give-back makes standard the default again. hostpath-csi is
// marked default again at the end, as deployed.
func testDocsDefaultClass(t *testing.T, c *cluster) {
	t.Cleanup(func() {
		c.run("", "delete", "storageclass", "standard", "--ignore-not-found")
		c.run("", "annotate", "storageclass", "hostpath-csi", "storageclass.kubernetes.io/is-default-class=true", "--overwrite")
	})
	c.apply(t, "", `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
`)
	isDefault := func(class string) (string, string) {
		var sc struct {
			Metadata struct {
				Annotations map[string]string `json:"annotations"`
				Labels      map[string]string `json:"labels"`
			} `json:"metadata"`
		}
		c.get(t, &sc, "storageclass", class)
		return sc.Metadata.Annotations["storageclass.kubernetes.io/is-default-class"], sc.Metadata.Labels["hostpath-csi.github.io/was-default"]
	}
	ns := "e2e-docs-" + markdown.E2EDefaultClass // runDocsPhase's
	checked := map[string]bool{}
	before := func(cmd docCommand) {
		switch {
		case !checked["take"] && strings.Contains(cmd.Text, "statefulset.yaml"):
			checked["take"] = true
			if ours, _ := isDefault("hostpath-csi"); ours != "true" {
				t.Errorf("after take, hostpath-csi is-default-class=%q, want true", ours)
			}
			if theirs, label := isDefault("standard"); theirs != "false" || label != "true" {
				t.Errorf("after take, standard is-default-class=%q and was-default label %q, want false and true", theirs, label)
			}
		case !checked["claims"] && strings.Contains(cmd.Text, "kubectl delete statefulset"):
			checked["claims"] = true
			for _, claim := range []string{"data-web-0", "data-web-1"} {
				if class := strings.TrimSpace(c.k(t, "-n", ns, "get", "pvc", claim, "-o", "jsonpath={.spec.storageClassName}")); class != "hostpath-csi" {
					t.Errorf("claim %s of the StatefulSet with no class in its template is of class %q, want hostpath-csi", claim, class)
				}
			}
		}
	}
	if runDocsPhaseWith(t, c, markdown.E2EDefaultClass, before) == 0 {
		t.Fatal("no <!-- doctest: e2e default-class --> block in docs/")
	}
	if !checked["take"] || !checked["claims"] {
		t.Fatalf("the docs' default-class lines lack the StatefulSet or its delete (checked %v)", checked)
	}
	if theirs, label := isDefault("standard"); theirs != "true" || label != "" {
		t.Errorf("after give-back, standard is-default-class=%q and was-default label %q, want true and none", theirs, label)
	}
	if ours, _ := isDefault("hostpath-csi"); ours != "false" {
		t.Errorf("after give-back, hostpath-csi is-default-class=%q, want false", ours)
	}
}
