package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cluster is the running end-to-end cluster (test/e2e/scripts/cluster-up.sh),
// driven as a user drives one: with kubectl.
type cluster struct {
	kubectl    string // the kubectl binary
	kubeconfig string
	root       string // the repository checkout
	scripts    string
	node1      string // the node with a kubelet
	node2      string // distributed flavour: a driver as processes, no kubelet
	dataDir1   string // the driver's --data-dir on node 1 (hostPath of the DaemonSet)
	dataDir2   string // on node 2
	ctr        []string
}

func newCluster() (*cluster, error) {
	kc := os.Getenv("E2E_KUBECONFIG")
	if kc == "" {
		return nil, nil
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(kc)
	return &cluster{
		kubectl:    os.Getenv("E2E_KUBECTL"),
		kubeconfig: kc,
		root:       root,
		scripts:    filepath.Join(root, "test/e2e/scripts"),
		node1:      os.Getenv("E2E_NODE1"),
		node2:      os.Getenv("E2E_NODE2"),
		dataDir1:   "/var/lib/hostpath-csi/data",
		dataDir2:   filepath.Join(dir, "node2/data"),
		ctr:        strings.Fields(os.Getenv("E2E_CTR")),
	}, nil
}

// run runs kubectl with args and returns its standard output.
func (c *cluster) run(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.kubectl, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// k runs kubectl and fails the test if it fails.
func (c *cluster) k(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.run("", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// apply applies a manifest given as text.
func (c *cluster) apply(t *testing.T, ns, manifest string) {
	t.Helper()
	args := []string{"apply", "-f", "-"}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	if _, err := c.run(manifest, args...); err != nil {
		t.Fatal(err)
	}
}

// get decodes `kubectl get ... -o json` into v.
func (c *cluster) get(t *testing.T, v any, args ...string) {
	t.Helper()
	out := c.k(t, append([]string{"get", "-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decode kubectl get %v: %v", args, err)
	}
}

// tryGet is get for an object that may not exist: false if it does not.
func (c *cluster) tryGet(v any, args ...string) (bool, error) {
	out, err := c.run("", append([]string{"get", "--ignore-not-found", "-o", "json"}, args...)...)
	if err != nil {
		return false, err
	}
	if strings.TrimSpace(out) == "" {
		return false, nil
	}
	return true, json.Unmarshal([]byte(out), v)
}

// list decodes a list (kubectl prints nothing for an empty one with
// --ignore-not-found, so tryGet does not serve lists).
func (c *cluster) list(v any, args ...string) error {
	out, err := c.run("", append([]string{"get", "-o", "json"}, args...)...)
	if err != nil {
		return err
	}
	return json.Unmarshal([]byte(out), v)
}

// eventually polls cond until it returns true, failing the test with what
// after the timeout (and with the last error cond returned).
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// namespace makes a namespace for one scenario and deletes it (with its
// claims, so their volumes) when the scenario ends; on failure it first logs
// what the namespace held and the driver's recent logs.
func (c *cluster) namespace(t *testing.T, name string) string {
	t.Helper()
	return c.namespaceNamed(t, "e2e-"+name)
}

// namespaceNamed is namespace with the name as given (one the docs name).
func (c *cluster) namespaceNamed(t *testing.T, ns string) string {
	t.Helper()
	c.k(t, "create", "namespace", ns)
	// A pod may start before the default ServiceAccount exists.
	eventually(t, time.Minute, "default service account in "+ns, func() (bool, error) {
		_, err := c.run("", "-n", ns, "get", "serviceaccount", "default")
		return err == nil, err
	})
	t.Cleanup(func() {
		if t.Failed() {
			c.dump(t, ns)
		}
		if _, err := c.run("", "delete", "namespace", ns, "--wait=true", "--timeout=180s"); err != nil {
			t.Errorf("delete namespace %s: %v", ns, err)
		}
	})
	return ns
}

func (c *cluster) dump(t *testing.T, ns string) {
	for _, args := range [][]string{
		{"-n", ns, "get", "pods,pvc,volumesnapshots", "-o", "wide"},
		{"-n", ns, "describe", "pods,pvc"},
		{"get", "pv,volumesnapshotcontents", "-o", "wide"},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", "hostpath-csi", "logs", "daemonset/hostpath-csi", "--all-containers", "--prefix", "--tail=60"},
	} {
		out, err := c.run("", args...)
		t.Logf("kubectl %s:\n%s%v", strings.Join(args, " "), out, errOrEmpty(err))
	}
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// script runs one of test/e2e/scripts with the cluster's environment.
func (c *cluster) script(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.scripts, name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out.String())
	}
}
