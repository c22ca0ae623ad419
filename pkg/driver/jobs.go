package driver

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
)

// A job is a long operation (the copy behind a snapshot, a restore, a clone
// or a group snapshot) that runs detached from the call that started it.
// csi-provisioner and csi-snapshotter give each call 10 s by default and
// retry; a copy of tens of GiB takes longer, so a copy bound to the call
// would be cancelled and started over at every retry and never finish.
// Instead the copy goes on when the caller gives up; a retry while it runs
// is answered at once with ABORTED (the spec's "operation pending"), and
// the first retry after it ended gets its result.
type job struct {
	key   string   // what the caller names: "volume/<name>", "snapshot/<name>", "group/<name>"
	id    string   // the ID of what the job makes
	reads []string // lock keys of the sources it copies ("vol/<id>", "snap/<id>")
	what  string   // for messages: "restore of volume X from snapshot Y"

	started time.Time
	cancel  context.CancelFunc
	done    chan struct{}
	err     error     // set before done is closed
	ended   time.Time // set before done is closed
}

func (j *job) finished() bool {
	select {
	case <-j.done:
		return true
	default:
		return false
	}
}

// inProgress is the answer to a call that finds its job still running.
func (j *job) inProgress() error {
	return status.Errorf(codes.Aborted, "%s is in progress (running for %s); it goes on without the caller: retry to get its result",
		j.what, time.Since(j.started).Round(time.Millisecond))
}

// jobs tracks the detached operations of one driver.
type jobs struct {
	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	byKey map[string]*job
	// keep is how long a finished job's result waits for a retry to
	// collect it before it is forgotten (the caller gave up for good).
	keep time.Duration
	// slots bounds the copies that run at once: detached from their calls,
	// copies are no longer bounded by the sidecars' worker pools, and each
	// holds threads and descriptors. A job waits for a slot without
	// holding a thread.
	slots chan struct{}
	// looks are the slots of the looks for another share inside an NFS
	// volume (lookpool.go), apart from the copies'.
	looks *lookPool
	// lookBackoff is how long a look's refusal answers the retries
	// (nfsLookBackoff).
	lookBackoff time.Duration
}

func newJobs(maxCopies int) *jobs {
	base, cancel := context.WithCancel(context.Background())
	return &jobs{base: base, cancel: cancel, byKey: map[string]*job{}, keep: 15 * time.Minute,
		slots: make(chan struct{}, max(1, maxCopies)), looks: newLookPool(maxLooks), lookBackoff: nfsLookBackoff}
}

// start runs fn detached. fn's context ends only when the job is cancelled
// (a delete of what it makes, or the driver shutting down). There must be
// no job under key already (the caller holds the name lock and checked).
//
// When a job that succeeded waits for keep without anyone collecting its
// result, abandon runs: the caller gave up for good (the claim or snapshot
// was deleted while it was copied) and never learned the ID, so nobody
// could ever delete what it made. abandon takes the name's lock, checks
// with stillUncollected that no retry collected the result meanwhile, and
// removes what the job made.
func (js *jobs) start(key, id, what string, reads []string, fn func(context.Context) error, abandon func(*job)) *job {
	return js.startIn(js.copySlot, key, id, what, reads, fn, abandon)
}

// copySlot waits for one of the copy slots.
func (js *jobs) copySlot(ctx context.Context) (func(), error) {
	select {
	case js.slots <- struct{}{}:
		return func() { <-js.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// startIn is start with the job's slot taken by slot (which returns its
// release) instead of a copy slot.
func (js *jobs) startIn(slot func(context.Context) (func(), error), key, id, what string, reads []string, fn func(context.Context) error, abandon func(*job)) *job {
	ctx, cancel := context.WithCancel(js.base)
	j := &job{key: key, id: id, what: what, reads: reads, started: time.Now(), cancel: cancel, done: make(chan struct{})}
	js.mu.Lock()
	js.byKey[key] = j
	js.mu.Unlock()
	js.wg.Add(1)
	go func() {
		defer js.wg.Done()
		defer cancel()
		if release, err := slot(ctx); err == nil {
			j.err = fn(ctx)
			release()
		} else {
			j.err = fn(ctx) // cancelled while queued: fn rolls back at once
		}
		j.ended = time.Now()
		close(j.done)
		time.AfterFunc(js.keep, func() {
			if j.err == nil && abandon != nil && !js.shuttingDown() {
				abandon(j)
			}
			js.forget(j)
		})
	}()
	return j
}

// get returns the job under key, running or finished and not yet collected.
func (js *jobs) get(key string) *job {
	js.mu.Lock()
	defer js.mu.Unlock()
	return js.byKey[key]
}

// stillUncollected reports whether j's result is still waiting for a
// retry; the caller holds the job's name lock, as collect's callers do.
func (js *jobs) stillUncollected(j *job) bool {
	js.mu.Lock()
	defer js.mu.Unlock()
	return js.byKey[j.key] == j
}

func (js *jobs) shuttingDown() bool { return js.base.Err() != nil }

// forget drops a job (its result was delivered, or nobody came for it).
func (js *jobs) forget(j *job) {
	js.mu.Lock()
	defer js.mu.Unlock()
	if js.byKey[j.key] == j {
		delete(js.byKey, j.key)
	}
}

// remember puts back a finished job whose result was collected, for a
// later call to get it again (until keep forgets it).
func (js *jobs) remember(j *job) {
	js.mu.Lock()
	defer js.mu.Unlock()
	if _, ok := js.byKey[j.key]; !ok {
		js.byKey[j.key] = j
	}
}

// reading returns a running job that copies from the given lock key.
func (js *jobs) reading(lockKey string) *job {
	js.mu.Lock()
	defer js.mu.Unlock()
	for _, j := range js.byKey {
		if j.finished() {
			continue
		}
		for _, r := range j.reads {
			if r == lockKey {
				return j
			}
		}
	}
	return nil
}

// making returns the running job that makes the volume, snapshot or group
// with this ID.
func (js *jobs) making(id string) *job {
	js.mu.Lock()
	defer js.mu.Unlock()
	for _, j := range js.byKey {
		if j.id == id && !j.finished() {
			return j
		}
	}
	return nil
}

// running counts the jobs still running.
func (js *jobs) running() int {
	js.mu.Lock()
	defer js.mu.Unlock()
	n := 0
	for _, j := range js.byKey {
		if !j.finished() {
			n++
		}
	}
	return n
}

// close cancels every job and waits for them to roll back.
func (js *jobs) close() {
	js.cancel()
	js.wg.Wait()
}

// await waits for a job the caller started (or found) until the job ends or
// the caller's context does. A result that reaches a caller is collected;
// when the caller gives up first the job goes on, and its result waits for
// the next retry.
func (js *jobs) await(ctx context.Context, j *job) error {
	select {
	case <-j.done:
		js.forget(j)
		return j.err
	case <-ctx.Done():
		return j.inProgress()
	}
}

// collect is for a call that finds a job under its key: a running one is
// answered with ABORTED; a finished one is dropped and its error returned
// (nil when it succeeded: the record then tells the result).
func (js *jobs) collect(key string) error {
	j := js.get(key)
	if j == nil {
		return nil
	}
	if !j.finished() {
		return j.inProgress()
	}
	js.forget(j)
	return j.err
}

// createByName is every create by name (of a volume, a snapshot or a group
// snapshot, of either family) over the job machinery: a layer that takes
// the name's lock in front of one that takes none. Under the lock (kind
// "name", "snapname" or "groupname"), the result of the name's job that
// ended is collected (one still running is ABORTED), and start answers from
// the records or starts the copy as a job under key ("<jobKind>/<name>")
// and returns it. Then, without the lock, the call waits for that job as
// long as its caller does (if the caller gives up, the job goes on and a
// retry gets the result), and result reads what the job made.
func createByName[R any](ctx context.Context, c *core, lockKind, jobKind, name string,
	start func(key string) (*job, R, error), result func(*job) (R, error)) (R, error) {
	var none R
	j, resp, err := func() (*job, R, error) {
		unlock, err := c.lock(ctx, lockKind, name)
		if err != nil {
			return nil, none, err
		}
		defer unlock()
		key := jobKind + "/" + name
		if err := c.jobs.collect(key); err != nil {
			return nil, none, err // a job for this name still runs, or it failed
		}
		return start(key)
	}()
	if j == nil {
		return resp, err
	}
	if err := c.jobs.await(ctx, j); err != nil {
		return none, err
	}
	return result(j)
}

// cancelAndWait stops a running job (its work is rolled back) and waits for
// it, or for ctx.
func (js *jobs) cancelAndWait(ctx context.Context, j *job) error {
	j.cancel()
	select {
	case <-j.done:
		js.forget(j)
		return nil
	case <-ctx.Done():
		return status.Errorf(codes.Aborted, "cancelling %s: %v; retry", j.what, ctx.Err())
	}
}

// copyStep runs one copy of a job, after the test seam if one is set.
func (c *core) copyStep(ctx context.Context, id string, copy func() (hostpath.CopyResult, error)) (hostpath.CopyResult, error) {
	if c.beforeCopy != nil {
		if err := c.beforeCopy(ctx, id); err != nil {
			return hostpath.CopyResult{}, err
		}
	}
	return copy()
}
