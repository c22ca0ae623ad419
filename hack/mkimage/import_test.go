package main

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// containerd is a throw-away containerd: its own root, state, socket and
// config under a temporary directory, stopped by its PID when the test ends.
type containerd struct {
	dir, sock, ctr string
}

func startContainerd(t *testing.T) *containerd {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Missing(t, "not root: containerd needs root to import images", "run the tests as root")
	}
	ctr := testutil.RequireCommand(t, "ctr")
	bin := testutil.RequireCommand(t, "containerd")
	dir := t.TempDir()
	c := &containerd{dir: dir, sock: filepath.Join(dir, "containerd.sock"), ctr: ctr}
	// Version 2 is what Debian 12's containerd (1.6) reads; containerd 2
	// migrates it. No CRI (no Kubernetes here), and nothing outside dir.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "opt"))
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Errorf("containerd (PID %d) did not stop on SIGTERM: killing it", cmd.Process.Pid)
			_ = cmd.Process.Kill()
			<-exited
		}
		logf.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd's log:\n%s", tail(string(log), 40))
			}
		}
		// Unpacking mounts snapshots only while it applies a layer.
		if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), " "+dir+"/") {
			t.Errorf("something is still mounted under %s", dir)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(ctr, "--address", c.sock, "version").CombinedOutput()
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			log, _ := os.ReadFile(logPath)
			t.Fatalf("containerd exited (%v):\n%s", err, tail(string(log), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer on %s within 30 s: %v: %s", c.sock, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return c
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs ctr against this containerd in namespace ns, with the file
// stdin (if not empty) as its standard input.
func (c *containerd) run(t *testing.T, ns, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.ctr, append([]string{"--address", c.sock, "--namespace", ns}, args...)...)
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdin = f
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// images lists the names of the images in namespace ns.
func (c *containerd) images(t *testing.T, ns string) []string {
	t.Helper()
	return strings.Fields(c.run(t, ns, "", "images", "ls", "-q"))
}

// importAsLoadersDo imports archive p into a fresh containerd the ways the
// loaders do, and checks that each lists the image under name:
//   - kind load image-archive: ctr --namespace=k8s.io images import
//     --all-platforms --digests --snapshotter=... - (the archive on stdin);
//   - minikube image load (containerd runtime) and k3s ctr images import:
//     ctr -n k8s.io images import FILE;
//   - the archive read as a Docker archive only (manifest.json, as docker
//     load reads it), the OCI layout's files left out: containerd's
//     importer takes that format too.
//
// Each import unpacks the layer (the native snapshotter: no dependency on
// the filesystem under the temporary directory).
func importAsLoadersDo(t *testing.T, p, name string) {
	c := startContainerd(t)
	dockerOnly := filepath.Join(t.TempDir(), "docker-archive.tar")
	copyWithout(t, p, dockerOnly, "oci-layout", "index.json")
	for _, tc := range []struct {
		loader, ns, stdin string
		args              []string
	}{
		{"kind load image-archive", "k8s.io", p,
			[]string{"images", "import", "--all-platforms", "--digests", "--snapshotter=native", "-"}},
		{"minikube image load, k3s ctr images import", "k3s", "",
			[]string{"images", "import", "--snapshotter=native", p}},
		{"the Docker archive (manifest.json) alone", "docker", "",
			[]string{"images", "import", "--snapshotter=native", dockerOnly}},
	} {
		t.Run(tc.loader, func(t *testing.T) {
			c.run(t, tc.ns, tc.stdin, tc.args...)
			got := c.images(t, tc.ns)
			found := false
			for _, n := range got {
				found = found || n == name
			}
			if !found {
				t.Fatalf("after the import, namespace %s lists %q, not %s", tc.ns, got, name)
			}
			// Its content is all there, and its layer was unpacked.
			if out := c.run(t, tc.ns, "", "images", "check", "name=="+name); !strings.Contains(out, "complete") {
				t.Errorf("ctr images check %s:\n%s", name, out)
			}
			snaps := strings.Split(strings.TrimSpace(c.run(t, tc.ns, "", "snapshots", "--snapshotter", "native", "ls")), "\n")
			if len(snaps) < 2 || !strings.Contains(snaps[1], "Committed") {
				t.Errorf("no committed snapshot: the layer was not unpacked:\n%s", strings.Join(snaps, "\n"))
			}
		})
	}
}

// copyWithout copies the archive src to dst, leaving out the members named.
func copyWithout(t *testing.T, src, dst string, names ...string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(names, hdr.Name) {
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestContainerdImportsTheArchive(t *testing.T) {
	importAsLoadersDo(t, writeTestArchive(t, testEntrypoint), testName)
}

// TestContainerdImportsMakeImageArchive checks the archive make image
// wrote, named by HOSTPATH_IMAGE_ARCHIVE (with HOSTPATH_IMAGE_NAME, its
// full name). Without them it skips: making that archive takes debootstrap
// and root, which is make image's work, not make test's.
func TestContainerdImportsMakeImageArchive(t *testing.T) {
	p, name := os.Getenv("HOSTPATH_IMAGE_ARCHIVE"), os.Getenv("HOSTPATH_IMAGE_NAME")
	if p == "" || name == "" {
		t.Skip("skipping: set HOSTPATH_IMAGE_ARCHIVE and HOSTPATH_IMAGE_NAME to check an archive make image wrote")
	}
	if !filepath.IsAbs(p) { // relative to the repository's root, where make writes it
		p = filepath.Join("..", "..", p)
	}
	if _, err := check(p, name, testEntrypoint); err != nil {
		t.Fatalf("check: %v", err)
	}
	importAsLoadersDo(t, p, name)
}
