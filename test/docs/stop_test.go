package docs

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// serveEnv makes the test binary a process that serves the unix
	// socket it names, and waits to be killed (see TestMain).
	serveEnv = "DOCTEST_SERVE_SOCKET"
	// helperEnv makes TestStopsCleanly the child it names a scenario of;
	// helperBinEnv is where the parent built the binaries, helperReadyEnv
	// the file the child's command writes its bash's PID to.
	helperEnv      = "DOCTEST_HELPER"
	helperBinEnv   = "DOCTEST_HELPER_BIN"
	helperReadyEnv = "DOCTEST_HELPER_READY"
)

func serveAndWait(sock string) {
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(2)
		}
		c.Close()
	}
}

// alive says whether process pid runs (a zombie does not).
func alive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && !st.zombie
}

func waitDead(t *testing.T, pid int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Errorf("%s (process %d) still runs", what, pid)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// A command past its time is killed with its whole process group, even
// where it has left the scratch directory; so is one left in the
// background.
func TestTimeoutKillsTheGroupWhereverItWorks(t *testing.T) {
	s := newShellSession(t)
	s.Timeout = 2 * time.Second
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	_, err := s.Run("cd / && echo $BASHPID >" + shellQuote(pidFile) + " && exec sleep 12")
	if err == nil || !strings.Contains(err.Error(), "still running after 2s") {
		t.Errorf("error %v, want still running after 2s", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("took %v: the command outlived its timeout", d)
	}
	waitDead(t, readPID(t, pidFile), "sleep 12 working in /")

	_, err = s.Run("(cd / && exec sleep 30) & echo $! >" + shellQuote(pidFile))
	if err == nil || !strings.Contains(err.Error(), "running in the background, and no driver runs here") {
		t.Errorf("error %v, want the background process refused", err)
	}
	waitDead(t, readPID(t, pidFile), "sleep 30 left in the background, working in /")
}

// KillAll stops the groups the runner kept (a driver in the background)
// by their IDs, wherever their processes work, reaps their leaders, and
// leaves alone a process the runner did not start.
func TestKillAllKillsItsGroupsWhereverTheyWork(t *testing.T) {
	outside := exec.Command("sleep", "60")
	outside.Dir = t.TempDir()
	outside.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := outside.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = outside.Process.Kill()
		_ = outside.Wait()
	})

	s := newShellSession(t)
	s.Socket = filepath.Join(t.TempDir(), "s.sock")
	s.Env = CommandEnv(serveEnv+"="+s.Socket, "DOCTEST_EXE="+os.Args[0])
	pidFile := filepath.Join(t.TempDir(), "pid")
	r, err := s.Run(`(cd / && exec "$DOCTEST_EXE") & echo $! >` + shellQuote(pidFile))
	if err != nil {
		t.Fatal(err)
	}
	if r.Running || len(s.groups) != 1 {
		t.Fatalf("running %v, %d groups kept: want the background server kept", r.Running, len(s.groups))
	}
	leader, server := s.groups[0].pgid, readPID(t, pidFile)
	if !alive(server) {
		t.Fatal("the server is not running")
	}
	if err := s.KillAll(); err != nil {
		t.Fatal(err)
	}
	waitDead(t, server, "the server working in /")
	if _, err := os.Stat("/proc/" + strconv.Itoa(leader)); !os.IsNotExist(err) {
		t.Errorf("the group's leader %d is not reaped: %v", leader, err)
	}
	if !alive(outside.Process.Pid) {
		t.Error("KillAll killed a process it did not start")
	}
}

// A command stops stopMargin before the test binary's deadline.
func TestDeadlineStopsACommand(t *testing.T) {
	s := newShellSession(t)
	s.Deadline = time.Now().Add(time.Second)
	start := time.Now()
	_, err := s.Run("sleep 30")
	if err == nil || !strings.Contains(err.Error(), "before the test binary's deadline (go test -timeout)") {
		t.Errorf("error %v, want the deadline's", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
	if _, err := s.Run("true"); err == nil {
		t.Error("a command started after the deadline")
	}
}

// The test binary stopped by a signal, by its deadline (go test -timeout)
// or killed: each scenario runs this test again as a child process, with
// TMPDIR a directory of its own, which must be left empty, with nothing
// running or mounted there; killed (SIGKILL), its bash must go.
func TestStopsCleanly(t *testing.T) {
	if sc := os.Getenv(helperEnv); sc != "" {
		stopHelper(t, sc)
		return
	}
	for _, tc := range []struct {
		name    string
		driver  bool
		sig     syscall.Signal // 0: wait for the deadline
		timeout string
	}{
		{name: "SIGINT", driver: true, sig: syscall.SIGINT, timeout: "10m"},
		{name: "SIGTERM", driver: true, sig: syscall.SIGTERM, timeout: "10m"},
		{name: "deadline", driver: true, timeout: "25s"},
		{name: "SIGKILL", sig: syscall.SIGKILL, timeout: "10m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bin string
			if tc.driver {
				bin = builtTree(t).Bin
			}
			// Short: the child's scratch directories, and its driver's
			// socket, are below it.
			tmp, err := os.MkdirTemp("", "dts")
			if err == nil {
				tmp, err = absDir(tmp)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { // what the child left, so that nothing stays
				defer os.RemoveAll(tmp)
				if err := killUnder(tmp); err != nil {
					t.Error(err)
				}
				if err := cleanupMountsAndLoops(t.Logf, tmp); err != nil {
					t.Error(err)
				}
			})
			ready := filepath.Join(t.TempDir(), "ready")
			scenario := "shell"
			if tc.driver {
				scenario = "driver"
			}
			child := exec.Command(os.Args[0], "-test.run=^TestStopsCleanly$", "-test.v", "-test.timeout="+tc.timeout)
			child.Env = append(CommandEnv(), "TMPDIR="+tmp, helperEnv+"="+scenario, helperBinEnv+"="+bin,
				helperReadyEnv+"="+ready, "HOSTPATH_TEST_REQUIRE_ALL=1")
			var out bytes.Buffer
			child.Stdout, child.Stderr = &out, &out
			child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- child.Wait() }()
			var exitErr error
			if tc.sig != 0 {
				deadline := time.Now().Add(time.Minute)
				for {
					if b, err := os.ReadFile(ready); err == nil && strings.HasSuffix(string(b), "\n") {
						break
					}
					select {
					case err := <-exited:
						t.Fatalf("the child exited (%v) before its command ran:\n%s", err, out.String())
					case <-time.After(20 * time.Millisecond):
					}
					if time.Now().After(deadline) {
						_ = child.Process.Kill()
						<-exited
						t.Fatalf("the child's command did not start in a minute:\n%s", out.String())
					}
				}
				if err := child.Process.Signal(tc.sig); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case exitErr = <-exited:
			case <-time.After(time.Minute):
				_ = child.Process.Kill()
				<-exited
				t.Fatalf("the child did not exit in a minute:\n%s", out.String())
			}
			var ee *exec.ExitError
			if !errors.As(exitErr, &ee) {
				t.Fatalf("the child exited with %v, want a failure:\n%s", exitErr, out.String())
			}
			switch {
			case tc.sig == syscall.SIGKILL:
				waitDead(t, readPID(t, ready), "the killed test binary's bash")
				return // the rest is left: nothing handles a SIGKILL
			case tc.sig != 0:
				if code := ee.ExitCode(); code != 128+int(tc.sig) || !strings.Contains(out.String(), "stopping what the docs runner started") {
					t.Errorf("exit status %d, want %d, and the runner's message:\n%s", code, 128+int(tc.sig), out.String())
				}
			default:
				if strings.Contains(out.String(), "panic: test timed out") || !strings.Contains(out.String(), "before the test binary's deadline") {
					t.Errorf("the child did not stop before its deadline:\n%s", out.String())
				}
			}
			if _, err := os.Stat(ready); err == nil && alive(readPID(t, ready)) {
				t.Errorf("the child's bash still runs")
			}
			for _, p := range allProcs() {
				cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(p.pid) + "/cmdline")
				if cwdUnder(p.pid, tmp) || strings.Contains(string(cmdline), tmp) {
					t.Errorf("process %d left: %s", p.pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
				}
			}
			if m, err := mountsUnder(tmp); err != nil || len(m) > 0 {
				t.Errorf("mounts left: %v %v", m, err)
			}
			if l := loopDevicesUnder(tmp); len(l) > 0 {
				t.Errorf("loop devices left: %v", l)
			}
			if ents, err := os.ReadDir(tmp); err != nil || len(ents) > 0 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Errorf("left in TMPDIR: %v %v\n%s", names, err, out.String())
			}
		})
	}
}

// stopHelper is TestStopsCleanly's child: a command that runs until the
// test binary is stopped, in a driver's scratch directory or a shell's.
func stopHelper(t *testing.T, scenario string) {
	command := `echo $$ >"$` + helperReadyEnv + `.tmp" && mv "$` + helperReadyEnv + `.tmp" "$` + helperReadyEnv + `" && sleep 600`
	var s Session
	switch scenario {
	case "driver":
		d, err := StartDriver(t, builtTree(t))
		if err != nil {
			t.Fatal(err)
		}
		s = d
	case "shell":
		s = newShellSession(t)
	default:
		t.Fatalf("unknown scenario %q", scenario)
	}
	if _, err := s.Run(command); err != nil {
		t.Fatal(err)
	}
	t.Fatal("the command ended")
}
