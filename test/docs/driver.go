package docs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// DocRoot is the checkout the docs' paths and outputs name.
const DocRoot = "/work/main"

// Tree is the repository, built: the binaries make build makes and what
// the Makefile says make run and make demo do with them.
type Tree struct {
	Root     string // the checkout
	Bin      string // csictl and hostpath-plugin, built from it
	RunFlags string // the Makefile's RUN_FLAGS, as written there
	Recipes  map[string][]string
}

// scratchTargets are the Makefile targets a scratch directory has: those
// the docs run in transcripts. Their recipes are the Makefile's, without
// the build prerequisite (the binaries are built once per test run).
var scratchTargets = []string{"run", "demo"}

// BuildTree builds the binaries of the checkout at root into bin, as make
// build does (the same version ldflags), and reads the Makefile; ctx
// bounds the build.
func BuildTree(ctx context.Context, root, bin string) (*Tree, error) {
	t, err := ReadTree(root, bin)
	if err != nil {
		return nil, err
	}
	version := "v0.0.0-dev"
	if out, err := exec.CommandContext(ctx, "git", "-C", root, "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-ldflags", "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version="+version,
		"-o", bin+"/", "./cmd/...")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/...: %w\n%s", err, out)
	}
	return t, nil
}

// ReadTree is the checkout at root with its binaries already in bin: what
// its Makefile says make run and make demo do.
func ReadTree(root, bin string) (*Tree, error) {
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		return nil, fmt.Errorf("read the Makefile: %w", err)
	}
	t := &Tree{Root: root, Bin: bin, Recipes: map[string][]string{}}
	if t.RunFlags, err = makeVariable(string(mk), "RUN_FLAGS"); err != nil {
		return nil, err
	}
	for _, target := range scratchTargets {
		if t.Recipes[target], err = makeRecipe(string(mk), target); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// makeVariable is the text of a variable's definition (NAME ?= ..., := or
// =), continuation lines joined.
func makeVariable(mk, name string) (string, error) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*[?:]?=[ \t]*((?:.*\\\n)*.*)$`)
	m := re.FindStringSubmatch(mk)
	if m == nil {
		return "", fmt.Errorf("the Makefile defines no %s", name)
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(m[1], "\\\n", " ")), " "), nil
}

// makeRecipe is the recipe of target: the tab-indented lines after its
// rule. It may use only the variables a scratch Makefile defines.
func makeRecipe(mk, target string) ([]string, error) {
	lines := strings.Split(mk, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, target+":") {
			continue
		}
		var recipe []string
		for _, r := range lines[i+1:] {
			if !strings.HasPrefix(r, "\t") {
				break
			}
			recipe = append(recipe, r)
		}
		for _, v := range regexp.MustCompile(`\$\(([A-Za-z_]+)`).FindAllStringSubmatch(strings.Join(recipe, "\n"), -1) {
			if !slices.Contains([]string{"OUT", "RUN_FLAGS", "CURDIR"}, v[1]) {
				return nil, fmt.Errorf("the Makefile's %s recipe uses $(%s), which the docs tests' scratch Makefile does not define", target, v[1])
			}
		}
		if len(recipe) == 0 {
			return nil, fmt.Errorf("the Makefile's %s target has no recipe", target)
		}
		return recipe, nil
	}
	return nil, fmt.Errorf("the Makefile has no %s target", target)
}

var httpEndpointFlag = regexp.MustCompile(`--http-endpoint=(\S+)`)

// Driver is a scratch directory that looks like the checkout after make
// build and make run: _output/ holds the binaries, a Makefile runs them as
// the real one does, and a driver runs as make run starts it. Commands run
// there by Run see the directory as /work/main.
type Driver struct {
	*Shell
	tree     *Tree
	root     string // holds Dir (root/main) and Private
	runFlags string // RUN_FLAGS with the free HTTP port
	extra    []string
	t        testing.TB
	// unregister takes root off what a signal cleans up (see stopAll).
	unregister func()
}

// StartDriver makes a scratch directory and starts a driver in it; t's
// cleanup stops it and removes the directory.
func StartDriver(t testing.TB, tree *Tree) (*Driver, error) {
	d, err := startDriver(t, tree)
	t.Cleanup(func() {
		if d == nil {
			return
		}
		if err := d.Close(); err != nil {
			t.Errorf("clean up the docs' scratch directory: %v", err)
		}
	})
	return d, err
}

// scratchFSMiB is the size of each file's scratch filesystem: room for
// what the docs write and preallocate (docs/sizes.md's images, 5.3 GiB;
// docs/snapshots.md's 1 GiB file and its copies, 3.6 GiB) and for the room
// a copy sets aside. The image is sparse: it takes what is written.
const scratchFSMiB = 12 << 10

func startDriver(t testing.TB, tree *Tree) (d *Driver, err error) {
	root, unregister, err := scratchRoot(t)
	if err != nil {
		return nil, err
	}
	d = &Driver{tree: tree, root: root, t: t, unregister: unregister}
	dir, private := filepath.Join(root, "main"), filepath.Join(root, "runner")
	for _, p := range []string{filepath.Join(dir, "_output"), filepath.Join(private, "bin")} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return d, err
		}
	}
	for _, b := range []string{"csictl", "hostpath-plugin"} {
		if err := copyFile(filepath.Join(tree.Bin, b), filepath.Join(dir, "_output", b)); err != nil {
			return d, err
		}
	}
	d.Shell = &Shell{Dir: dir, Private: private, Socket: filepath.Join(dir, "_output", "csi.sock"),
		Subst: []Subst{{DocRoot, dir}}, Timeout: 2 * time.Minute, Deadline: testDeadline(t)}
	// The docs show the node as vm (the development machine's name); any
	// machine's transcripts say the same.
	d.runFlags = strings.ReplaceAll(tree.RunFlags, "$(shell hostname)", DocNodeID)
	if m := httpEndpointFlag.FindStringSubmatch(tree.RunFlags); m != nil {
		// Another driver on this machine may have the Makefile's port.
		host, _, err := net.SplitHostPort(m[1])
		if err != nil {
			return d, fmt.Errorf("RUN_FLAGS --http-endpoint=%s: %w", m[1], err)
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return d, fmt.Errorf("find a free port for the driver's HTTP endpoint: %w", err)
		}
		free := l.Addr().String()
		l.Close()
		d.runFlags = strings.Replace(d.runFlags, m[0], "--http-endpoint="+free, 1)
		d.Subst = append(d.Subst, Subst{m[1], free})
	}
	if err := writePgrep(filepath.Join(private, "bin", "pgrep"), dir); err != nil {
		return d, err
	}
	d.Env = CommandEnv("PATH="+filepath.Join(private, "bin")+":"+os.Getenv("PATH"), "LC_ALL=C.UTF-8")
	return d, d.start()
}

// scratchRoot makes the directory that holds a file's scratch directory,
// on a filesystem of its own: a fresh ext4 image on a loop device (so that
// what the docs show of the data filesystem, a copy's mechanism or a
// directory's blocks, is the same whatever /tmp is), which t's cleanup
// unmounts and detaches. Until then a signal removes it too (stopAll).
func scratchRoot(t testing.TB) (root string, unregister func(), err error) {
	runner.making.Lock()
	defer runner.making.Unlock()
	var unregisterFS func()
	// Registered before LoopFS, so it runs after LoopFS's cleanup.
	t.Cleanup(func() {
		if unregisterFS != nil {
			unregisterFS()
		}
	})
	mnt := testutil.LoopFS(t, "ext4", scratchFSMiB)
	unregisterFS = registerScratch(filepath.Dir(mnt), true)
	// A short name: the driver's socket path (with its .PID.tmp while it
	// binds) must fit a unix socket's 108 bytes.
	root = filepath.Join(mnt, "s")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", nil, err
	}
	if root, err = absDir(root); err != nil {
		return "", nil, err
	}
	if sock := filepath.Join(root, "main", "_output", "csi.sock.4194304.tmp"); len(sock) >= 108 {
		return "", nil, fmt.Errorf("the scratch directory %s is too deep for the driver's socket (%d bytes, a unix socket takes 107): set TMPDIR to a shorter directory", root, len(sock))
	}
	return root, registerScratch(root, false), nil
}

// commandEnvDrop are the variables of the test's environment the docs'
// commands do not get: make's own (a go test run by make passes its
// MAKEFLAGS, and with them its jobserver and command-line variables) and
// RUN_FLAGS, which would otherwise reach the scratch Makefile.
var commandEnvDrop = []string{"RUN_FLAGS", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "GNUMAKEFLAGS", "MAKEOVERRIDES"}

// CommandEnv is the test's environment without commandEnvDrop, with set
// (NAME=value) added.
func CommandEnv(set ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(commandEnvDrop, name) {
			env = append(env, kv)
		}
	}
	return append(env, set...)
}

// DocNodeID is the node ID the docs' transcripts show: make run's
// --nodeid=$(shell hostname) is this in the scratch Makefile.
const DocNodeID = "vm"

// DriverLog is where the first driver of a file logs, relative to the
// scratch directory, as `make run >_output/run.log 2>&1 &` keeps it.
const DriverLog = "_output/run.log"

// start writes the scratch Makefile (RUN_FLAGS and the extra flags) and
// runs make run, as the docs' reader does in a terminal of its own.
func (d *Driver) start() error {
	var mk strings.Builder
	mk.WriteString("# Written by test/docs: the checkout's make run and make demo, without the build.\n")
	mk.WriteString("override OUT := _output\n")
	// override: neither the environment nor make's command line changes them.
	fmt.Fprintf(&mk, "override RUN_FLAGS := %s\n", d.runFlags)
	if len(d.extra) > 0 {
		fmt.Fprintf(&mk, "override RUN_FLAGS += %s\n", d.toActual(strings.Join(d.extra, " ")))
	}
	fmt.Fprintf(&mk, ".PHONY: %s\n", strings.Join(scratchTargets, " "))
	for _, t := range scratchTargets {
		fmt.Fprintf(&mk, "%s:\n%s\n", t, strings.Join(d.tree.Recipes[t], "\n"))
	}
	if err := os.WriteFile(filepath.Join(d.Dir, "Makefile"), []byte(mk.String()), 0o644); err != nil {
		return err
	}
	// As a reader keeps make run's log: the docs grep it.
	r, err := d.Run("make run >" + DriverLog + " 2>&1 &")
	if err != nil {
		return fmt.Errorf("make run: %w", err)
	}
	if !r.Running && len(d.groups) == 0 {
		log, _ := os.ReadFile(filepath.Join(d.Dir, DriverLog))
		return fmt.Errorf("make run exited (status %d) instead of serving %s:\n%s%s", r.Status, d.toDoc(d.Socket), r.Output, d.toDoc(string(log)))
	}
	return nil
}

// Restart stops every driver (SIGKILL, as a crash) and starts one again:
// with flags, RUN_FLAGS plus those from now on; without, the same flags.
func (d *Driver) Restart(flags []string) error {
	if err := d.KillAll(); err != nil {
		return err
	}
	if len(flags) > 0 {
		d.extra = flags
	}
	return d.start()
}

// Close stops what runs in the scratch directory, undoes what the driver
// left mounted and attached there (a doc need not clean up: a reader's
// machine keeps it, the test machine does not), and removes it.
func (d *Driver) Close() error {
	var errs []error
	if d.Shell != nil {
		errs = append(errs, d.KillAll())
	}
	if err := cleanupMountsAndLoops(d.t.Logf, d.root); err != nil {
		return errors.Join(append(errs, err, fmt.Errorf("left %s in place", d.root))...)
	}
	errs = append(errs, os.RemoveAll(d.root))
	if d.unregister != nil {
		d.unregister()
	}
	return errors.Join(errs...)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// writePgrep puts a pgrep first on the commands' PATH that answers as the
// real one, but only with the processes working in dir: the docs' kill -9
// $(pgrep -f _output/hostpath-plugin) then stops this directory's driver
// and never another on the machine.
func writePgrep(path, dir string) error {
	real, err := exec.LookPath("pgrep")
	if err != nil {
		return fmt.Errorf("pgrep: %w", err)
	}
	script := `#!/bin/bash
# test/docs: pgrep, limited to the processes working in the docs' scratch
# directory, so that a doc's kill -9 $(pgrep ...) stops its own driver only.
dir=` + shellQuote(dir) + `
found=1
while read -r pid rest; do
	cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
	# Not this script, whose command line holds the pattern too.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$0" && continue
	case "$cwd" in "$dir" | "$dir"/*) echo "$pid${rest:+ $rest}"; found=0 ;; esac
done < <(` + shellQuote(real) + ` "$@")
exit $found
`
	return os.WriteFile(path, []byte(script), 0o755)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
