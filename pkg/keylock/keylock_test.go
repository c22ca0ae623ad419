package keylock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSameKeyExcludes(t *testing.T) {
	var l Locks
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock, err := l.Lock(context.Background(), "k")
			if err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := maxInside.Load()
				if n <= m || maxInside.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(100 * time.Microsecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders at once, want 1", maxInside.Load())
	}
	if l.Len() != 0 {
		t.Fatalf("%d entries left, want 0", l.Len())
	}
}

func TestDifferentKeysDoNotWait(t *testing.T) {
	var l Locks
	unlockA, err := l.Lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer unlockA()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlockB, err := l.Lock(ctx, "b")
	if err != nil {
		t.Fatalf("key b waited for key a: %v", err)
	}
	unlockB()
}

func TestWaitEndsWithContext(t *testing.T) {
	var l Locks
	unlock, _ := l.Lock(context.Background(), "k")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Lock(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	unlock()
	if l.Len() != 0 {
		t.Fatalf("%d entries left after a cancelled waiter", l.Len())
	}
}

func BenchmarkLockUnlockParallel(b *testing.B) {
	var l Locks
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		key := string(rune('a' + n.Add(1)%26))
		for pb.Next() {
			unlock, _ := l.Lock(context.Background(), key)
			unlock()
		}
	})
}
