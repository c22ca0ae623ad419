package docs

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runner is what the Shells of this test binary started and the scratch
// directories they use, so that a SIGINT or SIGTERM stops all of it (see
// HandleSignals): the testing package would run no cleanup.
var runner = struct {
	mu       sync.Mutex
	stopping bool           // a signal's stopAll began: nothing more is started
	procs    map[*proc]bool // not reaped yet
	scratch  []scratchDir   // in the order made
	// making is held while a scratch filesystem is made (mkfs, losetup,
	// mount), until it is registered: stopAll waits for it.
	making sync.Mutex
}{procs: map[*proc]bool{}}

// waitIfStopping never returns once stopAll has begun on a signal: the
// handler exits the test binary when it is done, and until then a test
// must not go on (start a command, or take its killed driver for a
// failure and clean up beside the handler).
func waitIfStopping() {
	runner.mu.Lock()
	stopping := runner.stopping
	runner.mu.Unlock()
	if stopping {
		select {}
	}
}

// A scratchDir is removed, with whatever is mounted and attached under
// it, on a signal; parent too: the per-test directory of a t.TempDir.
type scratchDir struct {
	dir    string
	parent bool
}

// registerScratch adds dir to what stopAll cleans up; the returned func
// takes it off (once the test cleaned it up itself).
func registerScratch(dir string, parent bool) (unregister func()) {
	runner.mu.Lock()
	defer runner.mu.Unlock()
	runner.scratch = append(runner.scratch, scratchDir{dir, parent})
	return func() {
		runner.mu.Lock()
		defer runner.mu.Unlock()
		runner.scratch = slices.DeleteFunc(runner.scratch, func(s scratchDir) bool { return s.dir == dir })
	}
}

// stopMargin is how long before the test binary's deadline (go test
// -timeout) the runner stops a command, so that the test fails and cleans
// up before the testing package panics, which runs no cleanup.
const stopMargin = 20 * time.Second

// testDeadline is when t's commands are stopped: stopMargin before the
// test binary's deadline; zero without one (or for a benchmark).
func testDeadline(t testing.TB) time.Time {
	dt, ok := t.(interface{ Deadline() (time.Time, bool) })
	if !ok {
		return time.Time{}
	}
	d, ok := dt.Deadline()
	if !ok {
		return time.Time{}
	}
	return d.Add(-stopMargin)
}

// stopAll kills (SIGKILL) every process group the runner started and has
// not reaped, then every process left working in a scratch directory, and
// unmounts, detaches and removes the scratch directories, latest first.
// After it the runner starts nothing.
func stopAll(logf func(format string, args ...any)) error {
	runner.making.Lock()
	defer runner.making.Unlock()
	runner.mu.Lock()
	runner.stopping = true
	var procs []*proc
	for p := range runner.procs {
		procs = append(procs, p)
	}
	dirs := slices.Clone(runner.scratch)
	runner.mu.Unlock()
	var errs []error
	for _, p := range procs { // all at once: a driver in one group is not restarted by another
		if err := syscall.Kill(-p.pgid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
			errs = append(errs, fmt.Errorf("kill process group %d: %w", p.pgid, err))
		}
	}
	for _, p := range procs {
		errs = append(errs, p.kill())
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		errs = append(errs, killUnder(d.dir))
		if err := cleanupMountsAndLoops(logf, d.dir); err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, os.RemoveAll(d.dir))
		if d.parent {
			_ = os.Remove(filepath.Dir(d.dir)) // if nothing else is there
		}
	}
	return errors.Join(errs...)
}

// HandleSignals makes a SIGINT or SIGTERM stop what the runner started
// and remove its scratch directories (stopAll), then exit 128+signal. The
// returned func stops handling them.
func HandleSignals() (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "test/docs: %v: stopping what the docs runner started and removing its scratch directories\n", sig)
			logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "test/docs: "+format+"\n", args...) }
			if err := stopAll(logf); err != nil {
				logf("%v", err)
			}
			os.Exit(128 + int(sig.(syscall.Signal)))
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
		waitIfStopping() // the tests ended as the handler began
	}
}
