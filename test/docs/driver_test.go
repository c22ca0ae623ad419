package docs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A transcript against a real driver: IDs bound across commands, a crash
// by kill -9 $(pgrep ...) and make run & and make run, make demo, the
// restart directive with and without flags, the HTTP port and the paths of
// the docs. A process elsewhere whose command line names
// _output/hostpath-plugin (another driver on this machine) is left alone.
func TestDriverTranscript(t *testing.T) {
	tree := builtTree(t)
	testutil.RequireCommand(t, "curl") // the fixture asks the driver's /healthz
	decoy := exec.Command("bash", "-c", `exec -a _output/hostpath-plugin sleep 600`)
	decoy.Dir = t.TempDir()
	decoy.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := decoy.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- decoy.Wait() }()
	t.Cleanup(func() {
		_ = decoy.Process.Kill()
		<-exited
	})

	d, err := StartDriver(t, tree)
	if err != nil {
		t.Fatal(err)
	}
	root := d.root
	checkScratchFS(t, d.Dir)
	name := "testdata/driver/real.md"
	if err := RunTranscripts(name, readTranscripts(t, name), d, NewBindings()); err != nil {
		b, _ := os.ReadFile(filepath.Join(d.Private, "out-001"))
		t.Fatalf("%v\nthe first driver's log:\n%s", err, b)
	}
	select {
	case err := <-exited:
		t.Errorf("the decoy outside the scratch directory was killed: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d.Shell = nil // closed
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("scratch directory %s left: %v", root, err)
	}
	for _, p := range allProcs() {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/cmdline"); err == nil && strings.Contains(string(b), root) {
			t.Errorf("process %d left: %s", p.pid, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}

// A mismatch against a real driver fails, naming the file, the line and
// the command, with the IDs bound so far shown as the doc's.
func TestDriverTranscriptMismatch(t *testing.T) {
	tree := builtTree(t)
	d, err := StartDriver(t, tree)
	if err != nil {
		t.Fatal(err)
	}
	name := "testdata/driver/real-fail.md"
	err = RunTranscripts(name, readTranscripts(t, name), d, NewBindings())
	want := name + ":4: $ ./_output/csictl list\noutput differs (- expected, + actual):\n" +
		"  VOLUME ID                                   CAPACITY  PUBLISHED ON\n" +
		"- hpv1-6c741192973b9ff1f0a9991527cc05ef 2147483648\n" +
		"+ hpv1-6c741192973b9ff1f0a9991527cc05ef"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error:\n%v\nwant it to contain:\n%s", err, want)
	}
}

// checkScratchFS: the scratch directory is on an ext4 of its own, the
// size of scratchFSMiB, on a loop device: not on the machine's /tmp.
func checkScratchFS(t *testing.T, dir string) {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.EXT4_SUPER_MAGIC {
		t.Errorf("the scratch filesystem is of type %#x, want ext4", fs.Type)
	}
	if size := int64(fs.Blocks) * fs.Bsize >> 20; size < scratchFSMiB*9/10 || size > scratchFSMiB {
		t.Errorf("the scratch filesystem has %d MiB, want about %d", size, scratchFSMiB)
	}
	var st, tmp unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(os.TempDir(), &tmp); err != nil {
		t.Fatal(err)
	}
	if st.Dev == tmp.Dev {
		t.Errorf("the scratch directory %s is on the filesystem of %s", dir, os.TempDir())
	}
	if major := unix.Major(st.Dev); major != 7 { // loop devices
		t.Errorf("the scratch filesystem is on device %d:%d, not a loop device", major, unix.Minor(st.Dev))
	}
}

// RUN_FLAGS and make's variables in the test's environment (go test run
// by make, or by someone with RUN_FLAGS set) reach neither the scratch
// Makefile nor the commands: the driver still runs in the scratch
// directory.
func TestDriverIgnoresMakeEnvironment(t *testing.T) {
	tree := builtTree(t)
	t.Setenv("RUN_FLAGS", "--endpoint=unix:///tmp/doctest-elsewhere.sock --no-such-flag")
	t.Setenv("MAKEFLAGS", "RUN_FLAGS=--no-such-flag")
	t.Setenv("MFLAGS", "-k")
	t.Setenv("MAKELEVEL", "1")
	d, err := StartDriver(t, tree)
	if err != nil {
		t.Fatal(err)
	}
	// make -n: what make run would run, even with RUN_FLAGS on its command line.
	r, err := d.Run(`echo "[$RUN_FLAGS][$MAKEFLAGS][$MFLAGS][$MAKELEVEL]"; make -n run RUN_FLAGS=--no-such-flag | grep -c -- "--endpoint=unix://$PWD/_output/csi.sock"`)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[][][][]\n1\n"; r.Output != want {
		t.Errorf("output %q, want %q: the environment or make's command line changed what make run runs", r.Output, want)
	}
	if _, err := os.Stat(filepath.Join(d.Dir, "_output", "csi.sock")); err != nil {
		t.Errorf("the driver does not serve the scratch directory's socket: %v", err)
	}
}
