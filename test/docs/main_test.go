package docs

import (
	"context"
	"fmt"
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

// transcriptTools are the commands the transcripts need beyond Debian's
// essential packages (see essentialCommands), each found on PATH or the
// test stops (testutil.Missing): what runs the commands, what the docs'
// commands run, and what the driver runs for them.
var transcriptTools = []string{
	"bash",      // runs each command
	"make",      // make run, make demo
	"pgrep",     // kill -9 $(pgrep -f ...)
	"curl",      // docs/metrics.md scrapes /metrics
	"losetup",   // each file's scratch filesystem is a loop-mounted image
	"mkfs.ext4", // that filesystem, and the driver's ext4 image volumes
	"mkfs.xfs",  // docs/sizes.md's xfs image volumes (-fstype xfs)
	"mount",     // the driver's mounts (make demo stages and publishes)
}

// builtTree builds the binaries once per test run, for every test that
// runs a driver, and stops the test where a driver cannot run.
func builtTree(t *testing.T) *Tree {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Missing(t, "the docs' transcripts run the driver, which bind-mounts: needs root", "run the tests as root, as CI and the development machine do")
	}
	for _, c := range transcriptTools {
		testutil.RequireCommand(t, c)
	}
	if bin := os.Getenv(helperBinEnv); bin != "" { // a helper process of a test of the runner
		tree, err := ReadTree(repoRoot, bin)
		if err != nil {
			t.Fatal(err)
		}
		return tree
	}
	built.once.Do(func() {
		ctx := context.Background()
		if d := testDeadline(t); !d.IsZero() {
			var cancel func()
			ctx, cancel = context.WithDeadline(ctx, d)
			defer cancel()
		}
		if built.dir, built.err = os.MkdirTemp("", "doctest-bin-"); built.err == nil {
			registerScratch(built.dir, false)
			built.tree, built.err = BuildTree(ctx, repoRoot, built.dir)
			if ctx.Err() != nil {
				built.err = fmt.Errorf("the build stopped %v before the test binary's deadline (go test -timeout), to clean up before it: give go test a longer -timeout (%w)", stopMargin, ctx.Err())
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.tree
}

func TestMain(m *testing.M) {
	if sock := os.Getenv(serveEnv); sock != "" { // a helper process of TestKillAllKillsItsGroupsWhereverTheyWork
		serveAndWait(sock)
	}
	stop := HandleSignals()
	code := m.Run()
	stop()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}
