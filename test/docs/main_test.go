package docs

import (
	"os"
	"sync"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// repoRoot is the checkout the tests run in.
const repoRoot = "../.."

var built struct {
	once sync.Once
	dir  string
	tree *Tree
	err  error
}

// builtTree builds the binaries once per test run, for every test that
// runs a driver, and stops the test where a driver cannot run.
func builtTree(t *testing.T) *Tree {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Missing(t, "the docs' transcripts run the driver, which bind-mounts: needs root", "run the tests as root, as CI and the development machine do")
	}
	for _, c := range []string{"bash", "make", "pgrep"} {
		testutil.RequireCommand(t, c)
	}
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "doctest-bin-"); built.err == nil {
			built.tree, built.err = BuildTree(repoRoot, built.dir)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.tree
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}
