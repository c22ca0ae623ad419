package docs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Subst is a text the docs write (Doc) and the one a run has instead
// (Actual): the checkout /work/main and the scratch directory, the driver's
// HTTP address and the free port it runs on here.
type Subst struct{ Doc, Actual string }

// Shell runs commands as a reader types them into a terminal in Dir: each
// with bash (set -o pipefail), stdout and stderr into one file, in a process
// group of its own. A command that leaves a driver serving Socket (make run,
// make run &) is done when the driver serves it; its group is kept and
// killed by Close.
type Shell struct {
	Dir     string   // working directory (absolute, no symlinks)
	Private string   // the runner's own files: scripts, outputs (outside Dir)
	Env     []string // environment of the commands
	Socket  string   // the driver's socket; "" when no driver runs
	Subst   []Subst
	Timeout time.Duration // of one command, and of a driver's start

	n      int
	groups []int // process groups still running (drivers)
}

// toActual and toDoc apply s.Subst to a command and to its output.
func (s *Shell) toActual(t string) string {
	for _, r := range s.Subst {
		t = strings.ReplaceAll(t, r.Doc, r.Actual)
	}
	return t
}

func (s *Shell) toDoc(t string) string {
	for _, r := range s.Subst {
		t = strings.ReplaceAll(t, r.Actual, r.Doc)
	}
	return t
}

// served says whether a process of group pgid serves s.Socket.
func (s *Shell) served(pgid int) bool {
	if s.Socket == "" {
		return false
	}
	g, err := socketServerGroup(s.Socket)
	return err == nil && g == pgid
}

// Run runs command (as the docs write it: substitutions are applied here).
func (s *Shell) Run(command string) (Result, error) {
	s.n++
	script := filepath.Join(s.Private, fmt.Sprintf("cmd-%03d.sh", s.n))
	outPath := filepath.Join(s.Private, fmt.Sprintf("out-%03d", s.n))
	if err := os.WriteFile(script, []byte(s.toActual(command)+"\n"), 0o600); err != nil {
		return Result{}, err
	}
	out, err := os.Create(outPath)
	if err != nil {
		return Result{}, err
	}
	defer out.Close()
	// The command is sourced from a file, not passed on bash's command
	// line, so that pgrep -f and ps see what a terminal's shell shows.
	cmd := exec.Command("bash", "-c", `set -o pipefail; . "$0"`, script)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = s.Dir, s.Env, out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start bash: %w", err)
	}
	pgid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var r Result
	deadline := time.Now().Add(s.Timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-done:
			var ee *exec.ExitError
			switch {
			case err == nil:
			case errors.As(err, &ee):
				r.Status = ee.ExitCode()
				if r.Status < 0 { // bash itself killed by a signal
					r.Status = 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
				}
			default:
				return Result{}, fmt.Errorf("wait for bash: %w", err)
			}
			break wait
		case <-tick.C:
			if s.served(pgid) {
				r.Running = true // a driver in the foreground, as in a terminal left open
				break wait
			}
			if time.Now().After(deadline) {
				_ = killGroup(pgid, s.Dir)
				<-done
				b, _ := os.ReadFile(outPath)
				return Result{}, fmt.Errorf("still running after %v; its output:\n%s", s.Timeout, s.toDoc(string(b)))
			}
		}
	}
	if !r.Running && len(groupMembers(pgid)) > 0 {
		// Left running in the background (make run &): the reader waits
		// for the driver to answer before typing the next command.
		for !s.served(pgid) {
			if len(groupMembers(pgid)) == 0 {
				break
			}
			if s.Socket == "" || time.Now().After(deadline) {
				members := groupMembers(pgid)
				_ = killGroup(pgid, s.Dir)
				what := "no driver runs here"
				if s.Socket != "" {
					what = "they do not serve the driver's socket " + s.toDoc(s.Socket) + " after " + s.Timeout.String()
				}
				return Result{}, fmt.Errorf("left processes %v running in the background, and %s", members, what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(groupMembers(pgid)) > 0 {
		s.groups = append(s.groups, pgid)
	}
	b, err := os.ReadFile(outPath)
	if err != nil {
		return Result{}, err
	}
	r.Output = s.toDoc(string(b))
	return r, nil
}

// KillAll stops (SIGKILL) every process group the commands left running.
func (s *Shell) KillAll() error {
	var errs []error
	for _, g := range s.groups {
		errs = append(errs, killGroup(g, s.Dir))
	}
	s.groups = nil
	errs = append(errs, killUnder(s.Dir))
	return errors.Join(errs...)
}
