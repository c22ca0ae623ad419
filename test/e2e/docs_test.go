package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/test/e2e/markdown"
)

// docCommand is a line of a docs block marked <!-- doctest: e2e -->.
type docCommand struct {
	file string // relative to the repository: docs/x.md
	markdown.Line
}

// docsE2ECommands are the e2e lines of root's docs/*.md, file by file, in
// order (test/docs accounts for these lines as run here).
func docsE2ECommands(root string) ([]docCommand, error) {
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
		for _, l := range markdown.E2ELines(d) {
			out = append(out, docCommand{file: rel, Line: l})
		}
	}
	return out, nil
}

// The commands the docs show for a cluster work on one: each line of the
// docs' e2e blocks runs with bash from the repository's root, kubectl on
// PATH, in a namespace of its own as the default, and must exit 0.
func testDocsCommands(t *testing.T, c *cluster) {
	cmds, err := docsE2ECommands(c.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(cmds) == 0 {
		t.Log("no <!-- doctest: e2e --> blocks in docs/*.md")
		return
	}
	ns := c.namespace(t, "docs")
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
	env := append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+bin+":"+os.Getenv("PATH"))
	for _, cmd := range cmds {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		x := exec.CommandContext(ctx, "bash", "-c", "set -o pipefail\n"+cmd.Text)
		x.Dir, x.Env = c.root, env
		out, err := x.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s:%d: %s: %v\n%s", cmd.file, cmd.N, cmd.Text, err, out)
		}
		t.Logf("%s:%d: %s\n%s", cmd.file, cmd.N, cmd.Text, out)
	}
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
	got, err := docsE2ECommands(root)
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
	if _, err := docsE2ECommands(root); err == nil {
		t.Error("an unclosed block in docs/c.md parsed")
	}
}
