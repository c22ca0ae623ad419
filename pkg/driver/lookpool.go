package driver

import (
	"context"
	"sync"
)

// The looks for another share inside an NFS volume (before its delete,
// archive, or a takeover of retained data) read a whole tenant tree: they
// may run long, and a tenant chooses how long. They do not take the copy
// slots (a tenant deleting a few large volumes would have every other
// tenant's snapshots, restores and clones ABORTED meanwhile), but slots of
// their own: at most one look per owner (a namespace) at a time, at most
// maxLooks of all owners, and owners waiting are served in the order they
// came, past one whose look is running. One tenant's looks then queue
// behind each other, not in front of another's.

// maxLooks bounds the looks running at once. Each holds a descriptor per
// level of the tree it reads and one 16 KiB buffer.
const maxLooks = 8

type lookPool struct {
	mu      sync.Mutex
	max     int
	running int
	busy    map[string]bool // owners with a look running
	queue   []*lookWaiter
}

type lookWaiter struct {
	owner string
	ready chan struct{} // closed when the slot is given
	given bool
}

func newLookPool(n int) *lookPool {
	return &lookPool{max: max(1, n), busy: map[string]bool{}}
}

// acquire waits for a slot for owner, or for ctx; the caller calls release
// once its look ends.
func (p *lookPool) acquire(ctx context.Context, owner string) (release func(), err error) {
	w := &lookWaiter{owner: owner, ready: make(chan struct{})}
	p.mu.Lock()
	p.queue = append(p.queue, w)
	p.grantLocked()
	p.mu.Unlock()
	release = func() {
		p.mu.Lock()
		p.running--
		delete(p.busy, owner)
		p.grantLocked()
		p.mu.Unlock()
	}
	select {
	case <-w.ready:
		return release, nil
	case <-ctx.Done():
		p.mu.Lock()
		if w.given {
			p.mu.Unlock()
			release()
			return nil, ctx.Err()
		}
		for i, q := range p.queue {
			if q == w {
				p.queue = append(p.queue[:i], p.queue[i+1:]...)
				break
			}
		}
		p.mu.Unlock()
		return nil, ctx.Err()
	}
}

// grantLocked gives free slots to the first waiters whose owner has no look
// running.
func (p *lookPool) grantLocked() {
	for i := 0; i < len(p.queue) && p.running < p.max; {
		w := p.queue[i]
		if p.busy[w.owner] {
			i++
			continue
		}
		p.queue = append(p.queue[:i], p.queue[i+1:]...)
		p.running++
		p.busy[w.owner] = true
		w.given = true
		close(w.ready)
	}
}

// waiting reports whether owner has a look queued, for messages.
func (p *lookPool) waiting(owner string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.queue {
		if w.owner == owner {
			return true
		}
	}
	return false
}
