package nfs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrTimeout: an operation on an export did not return within the timeout
// (a dead or unreachable server: a hard NFS mount blocks forever).
var ErrTimeout = errors.New("NFS server did not answer in time")

// ErrBusy: an earlier operation on the same export is still stuck; no more
// are started until it returns, so a dead server cannot pile up threads.
var ErrBusy = errors.New("NFS server is not answering")

// guard runs operations on exports under a timeout. An operation that does
// not return in time is left to return on its own (a thread blocked in the
// kernel on a hard mount cannot be interrupted) and its export is marked
// busy until it does: later calls on that export fail at once, calls on
// other exports are not affected.
type guard struct {
	timeout time.Duration
	mu      sync.Mutex
	stuck   map[string]*stuckOp // by export ("server:/share")
	// down holds exports whose mount timed out, until when calls on them
	// fail at once: a mount is killed at its timeout, so nothing stays
	// stuck, but every call would otherwise wait the whole timeout again
	// (and a listing of all exports would wait for each dead one).
	down map[string]downUntil
	// detaches holds the forced unmounts in flight, by target.
	detaches map[string]*detaching
	// forceUnmount is the system call detach makes: forceUnmountSyscall,
	// or what a test puts in its place on its own guard.
	forceUnmount func(target string) error
}

type downUntil struct {
	what  string
	until time.Time
}

// downFor is how long an export whose mount timed out is not tried again.
func (g *guard) downFor() time.Duration { return min(g.timeout, 30*time.Second) }

// markDown marks export down after a mount that timed out.
func (g *guard) markDown(export, what string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.down[export] = downUntil{what: what, until: time.Now().Add(g.downFor())}
}

// markUp clears a down mark after a mount that worked.
func (g *guard) markUp(export string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.down, export)
}

type stuckOp struct {
	what     string
	since    time.Time
	n        int // operations still stuck
	timedOut int // of which outlived the timeout
}

func newGuard(timeout time.Duration) *guard {
	return &guard{timeout: timeout, stuck: map[string]*stuckOp{}, down: map[string]downUntil{}, detaches: map[string]*detaching{},
		forceUnmount: forceUnmountSyscall}
}

// do runs fn for export under the timeout. When ctx ends first the caller
// gets ctx's error at once while fn goes on; if fn outlives the timeout the
// export is marked busy until it returns.
func (g *guard) do(ctx context.Context, export, what string, fn func() error) error {
	if err := g.busy(export); err != nil {
		return err
	}
	return g.run(ctx, export, what, fn)
}

// run is do without the busy check: for an unmount, which is worth trying
// on an export that is busy only because a caller gave up (see unmount).
func (g *guard) run(ctx context.Context, export, what string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	timer := time.NewTimer(g.timeout)
	select {
	case err := <-done:
		timer.Stop()
		return err
	case <-timer.C:
		g.markStuck(export, what, done)
		return fmt.Errorf("%w: %s on %s did not return within %s (the server is down or unreachable; a hard mount waits for it)", ErrTimeout, what, export, g.timeout)
	case <-ctx.Done():
		// The caller gave up (a sidecar's deadline is often far shorter
		// than the timeout); fn goes on. Until it returns, the export is
		// busy: a retry must not start another operation behind it, nor
		// wait the whole timeout again.
		timer.Stop()
		g.hold(export, what, time.Now(), done)
		return fmt.Errorf("%s on %s: %w", what, export, ctx.Err())
	}
}

func (g *guard) busy(export string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s, ok := g.stuck[export]; ok {
		return fmt.Errorf("%w: %s on %s has not returned for %s; not starting another operation on that export until it does",
			ErrBusy, s.what, export, time.Since(s.since).Round(time.Second))
	}
	if d, ok := g.down[export]; ok && time.Now().Before(d.until) {
		return fmt.Errorf("%w: %s timed out; %s is not tried again for %s", ErrBusy, d.what, export, time.Until(d.until).Round(time.Second))
	}
	return nil
}

// markStuck marks export busy until the operation whose result comes on
// done returns.
func (g *guard) markStuck(export, what string, done <-chan error) {
	g.mark(export, what, time.Now().Add(-g.timeout), true, done)
}

// timedOut reports whether an operation on export outlived the timeout
// and has not returned yet, or its mount timed out recently: the server is
// not answering, as opposed to an export busy only because a caller gave
// up on an operation the server may answer a moment later.
func (g *guard) timedOut(export string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s, ok := g.stuck[export]; ok && s.timedOut > 0 {
		return true
	}
	d, ok := g.down[export]
	return ok && time.Now().Before(d.until)
}

// hold marks export busy, with an operation running since since, until
// the operation whose result comes on done returns.
func (g *guard) hold(export, what string, since time.Time, done <-chan error) {
	g.mark(export, what, since, false, done)
}

func (g *guard) mark(export, what string, since time.Time, timedOut bool, done <-chan error) {
	g.mu.Lock()
	s := g.stuck[export]
	if s == nil {
		s = &stuckOp{what: what, since: since}
		g.stuck[export] = s
	}
	s.n++
	if timedOut {
		s.timedOut++
	}
	g.mu.Unlock()
	go func() {
		if !timedOut {
			// An operation whose caller gave up: once it outlives the
			// timeout it counts as timed out too.
			late := time.NewTimer(g.timeout - time.Since(since))
			select {
			case <-done:
				late.Stop()
			case <-late.C:
				g.mu.Lock()
				s.timedOut++
				timedOut = true
				g.mu.Unlock()
				<-done
			}
		} else {
			<-done
		}
		g.mu.Lock()
		if timedOut {
			s.timedOut--
		}
		if s.n--; s.n == 0 {
			delete(g.stuck, export)
		}
		g.mu.Unlock()
	}()
}
