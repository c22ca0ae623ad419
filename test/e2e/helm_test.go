package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/test/e2e/markdown"
)

// helm runs last, on the cluster the documented uninstall left without the
// driver: the docs' Helm install (charts/hostpath-csi, the single-node
// flavour, snapshot-controller and the CRDs), the scenarios a user meets on
// it, the switch of the release to the distributed flavour, and the
// documented uninstall of the release, after which nothing of it is left.
var helm = []scenario{
	{"helm-install", testHelmInstall},
	{"claim-bound-and-used", testClaimBoundAndUsed},
	{"statefulset-keeps-data", testStatefulSet},
	{"snapshot-restore-clone", testSnapshotRestoreClone},
	{"modify-volume", testModifyVolume},
	{"block-volume", testBlockVolume},
	{"helm-distributed", testHelmDistributed},
	{"pod-on-node1", testClaimBoundAndUsed},
	{"nothing-mounted", testNothingMounted},
	{"helm-uninstall", testHelmUninstall},
}

// The docs' helm upgrade --install lines; then the driver is registered on
// node 1, and the release is deployed.
func testHelmInstall(t *testing.T, c *cluster) {
	if runDocsPhase(t, c, markdown.E2EHelm) == 0 {
		t.Fatal("no <!-- doctest: e2e helm --> block in docs/")
	}
	c.waitDriverRegistered(t)
	// The NFS release's controller runs every sidecar (csi-resizer
	// beside a controller alone included) without an NFS server: it needs
	// one only for a claim.
	c.k(t, "-n", "hostpath-csi", "rollout", "status", "deployment/hostpath-csi-nfs-controller", "--timeout=180s")
	if out := c.k(t, "get", "secrets", "-n", "default", "-l", "owner=helm,name=hostpath-csi,status=deployed", "-o", "name"); strings.TrimSpace(out) == "" {
		t.Fatal("no deployed Helm release hostpath-csi in the namespace default")
	}
}

// The docs' line that turns the release into the distributed flavour: the
// driver runs as that overlay has it (ControllerModifyVolume off).
func testHelmDistributed(t *testing.T, c *cluster) {
	if runDocsPhase(t, c, markdown.E2EHelmDistributed) == 0 {
		t.Fatal("no <!-- doctest: e2e helm-distributed --> block in docs/")
	}
	c.k(t, "-n", "hostpath-csi", "rollout", "status", "daemonset/hostpath-csi", "--timeout=180s")
	if args := c.k(t, "-n", "hostpath-csi", "get", "daemonset", "hostpath-csi", "-o", "jsonpath={.spec.template.spec.containers[?(@.name==\"hostpath-plugin\")].args}"); !strings.Contains(args, "--modify-volume=false") {
		t.Fatalf("the distributed release's driver runs with %s, without --modify-volume=false", args)
	}
	c.waitDriverRegistered(t)
}

// The docs' helm uninstall lines: then no object of the driver, no CRD and
// no release record is left.
func testHelmUninstall(t *testing.T, c *cluster) {
	if runDocsPhase(t, c, markdown.E2EHelmUninstall) == 0 {
		t.Fatal("no <!-- doctest: e2e helm-uninstall --> block in docs/")
	}
	eventually(t, 2*time.Minute, "the namespace hostpath-csi gone", func() (bool, error) {
		out, err := c.run("", "get", "namespace", "hostpath-csi", "--ignore-not-found", "-o", "name")
		return err == nil && strings.TrimSpace(out) == "", err
	})
	c.nothingOfTheDriverLeft(t, "Helm release record", "get secrets -n default -l owner=helm -o name", "secret/")
}

// waitDriverRegistered waits until the kubelet of node 1 lists the driver in
// CSINode, as deploy.sh does after a kustomize install.
func (c *cluster) waitDriverRegistered(t *testing.T) {
	t.Helper()
	eventually(t, time.Minute, "the driver in CSINode "+c.node1, func() (bool, error) {
		out, err := c.run("", "get", "csinode", c.node1, "-o", "jsonpath={.spec.drivers[*].name}")
		return err == nil && strings.Contains(" "+out+" ", " hostpath-csi.github.io "), err
	})
}
