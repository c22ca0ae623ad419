package docs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	// Deadline, if not zero, is when every command is stopped, whatever
	// Timeout says: stopMargin before the test binary's (see testDeadline).
	Deadline time.Time

	n      int
	groups []*proc // process groups still running (drivers)
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
	limit, why := s.limit()
	if !time.Now().Before(limit) {
		return Result{}, errors.New(why)
	}
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
	// The command is sourced from a file, not passed on bash's command
	// line, so that pgrep -f and ps see what a terminal's shell shows.
	cmd := exec.Command("bash", "-c", `set -o pipefail; . "$0"`, script)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = s.Dir, s.Env, out, out
	p, err := startProc(cmd)
	out.Close() // bash has its own: ours would keep the scratch filesystem busy
	if err != nil {
		return Result{}, fmt.Errorf("start bash: %w", err)
	}
	output := func() string {
		b, _ := os.ReadFile(outPath)
		return s.toDoc(string(b))
	}
	var r Result
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-p.exited:
			waitIfStopping() // killed by stopAll: not the command's doing
			if p.status < 0 {
				_ = p.kill()
				return Result{}, errors.New("wait for bash: no exit status")
			}
			r.Status = p.status
			break wait
		case <-tick.C:
			if s.served(p.pgid) {
				r.Running = true // a driver in the foreground, as in a terminal left open
				break wait
			}
			if time.Now().After(limit) {
				err := p.kill()
				return Result{}, errors.Join(fmt.Errorf("%s; its output:\n%s", why, output()), err)
			}
		}
	}
	if !r.Running && len(groupMembers(p.pgid)) > 0 {
		// Left running in the background (make run &): the reader waits
		// for the driver to answer before typing the next command.
		for !s.served(p.pgid) {
			if len(groupMembers(p.pgid)) == 0 {
				break
			}
			if s.Socket == "" || time.Now().After(limit) {
				members := groupMembers(p.pgid)
				err := p.kill()
				what := "no driver runs here"
				if s.Socket != "" {
					what = "they do not serve the driver's socket " + s.toDoc(s.Socket) + ": " + why
				}
				return Result{}, errors.Join(fmt.Errorf("left processes %v running in the background, and %s", members, what), err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(groupMembers(p.pgid)) > 0 {
		s.groups = append(s.groups, p)
	} else {
		p.reaped()
	}
	r.Output = output()
	return r, nil
}

// limit is when a command started now must be done, and what to say if it
// is not: after Timeout, or at Deadline if that comes first.
func (s *Shell) limit() (time.Time, string) {
	limit := time.Now().Add(s.Timeout)
	if !s.Deadline.IsZero() && s.Deadline.Before(limit) {
		return s.Deadline, fmt.Sprintf("stopped %v before the test binary's deadline (go test -timeout), to clean up before it: give go test a longer -timeout", stopMargin)
	}
	return limit, fmt.Sprintf("still running after %v", s.Timeout)
}

// KillAll stops (SIGKILL) every process group the commands left running,
// by its ID (see proc), and any process that left its group but still
// works in Dir.
func (s *Shell) KillAll() error {
	var errs []error
	for _, p := range s.groups {
		errs = append(errs, p.kill())
	}
	s.groups = nil
	errs = append(errs, killUnder(s.Dir))
	return errors.Join(errs...)
}
