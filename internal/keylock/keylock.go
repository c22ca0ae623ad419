// Package keylock provides one readers-writer lock per key, so that calls on
// different volumes never wait for each other, calls that only read a volume
// (a snapshot copying it, a clone, a mount) run side by side, and a call that
// changes it (a delete) runs alone.
package keylock

import (
	"context"
	"sync"
)

// Locks is a set of per-key readers-writer locks. The zero value is ready to
// use. Entries live only while someone holds or waits for them, so memory
// stays bounded by the number of calls in flight.
//
// Readers are preferred: a waiting writer does not hold back new readers.
// A long reader (a copy that takes minutes) must therefore never make
// writers wait for it in a queue; callers check for such work first and
// answer at once instead (see the driver's in-flight jobs).
type Locks struct {
	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	readers int
	writer  bool
	waiting int // goroutines holding or waiting for this entry
	// changed is closed (and replaced) whenever the lock is released, to
	// wake every waiter so it can try again.
	changed chan struct{}
}

// Lock waits for the key's exclusive lock or for ctx to end. On success it
// returns the function that releases the lock; on ctx's end, ctx.Err().
func (l *Locks) Lock(ctx context.Context, key string) (unlock func(), err error) {
	return l.acquire(ctx, key, true)
}

// RLock waits for a shared hold of the key: any number of readers at once,
// never together with a writer.
func (l *Locks) RLock(ctx context.Context, key string) (unlock func(), err error) {
	return l.acquire(ctx, key, false)
}

func (l *Locks) acquire(ctx context.Context, key string, exclusive bool) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*entry)
	}
	e := l.m[key]
	if e == nil {
		e = &entry{changed: make(chan struct{})}
		l.m[key] = e
	}
	e.waiting++
	for {
		if !e.writer && (!exclusive || e.readers == 0) {
			if exclusive {
				e.writer = true
			} else {
				e.readers++
			}
			l.mu.Unlock()
			var once sync.Once
			return func() { once.Do(func() { l.release(key, e, exclusive) }) }, nil
		}
		wake := e.changed
		l.mu.Unlock()
		select {
		case <-wake:
			l.mu.Lock()
		case <-ctx.Done():
			l.mu.Lock()
			l.drop(key, e)
			l.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

func (l *Locks) release(key string, e *entry, exclusive bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if exclusive {
		e.writer = false
	} else {
		e.readers--
	}
	close(e.changed)
	e.changed = make(chan struct{})
	l.drop(key, e)
}

// drop forgets one holder or waiter; the entry goes when nobody is left.
// l.mu is held.
func (l *Locks) drop(key string, e *entry) {
	e.waiting--
	if e.waiting == 0 {
		delete(l.m, key)
	}
}

// Len is the number of keys held or waited for (for tests and metrics).
func (l *Locks) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
