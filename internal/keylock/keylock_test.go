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

// Readers share a key; a writer excludes readers and other writers.
func TestReadersShareWritersExclude(t *testing.T) {
	var l Locks
	bg := context.Background()
	r1, err := l.RLock(bg, "k")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	r2, err := l.RLock(short, "k")
	if err != nil {
		t.Fatalf("second reader waited for the first: %v", err)
	}
	blocked, cancelBlocked := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancelBlocked()
	if _, err := l.Lock(blocked, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("writer got the key while two readers held it: %v", err)
	}
	got := make(chan func())
	go func() {
		w, err := l.Lock(bg, "k")
		if err != nil {
			t.Error(err)
		}
		got <- w
	}()
	r1()
	r1() // a second call of the same unlock is a no-op
	select {
	case <-got:
		t.Fatal("writer got the key while a reader still held it")
	case <-time.After(20 * time.Millisecond):
	}
	r2()
	w := <-got
	blockedR, cancelR := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancelR()
	if _, err := l.RLock(blockedR, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("reader got the key while a writer held it: %v", err)
	}
	w()
	if l.Len() != 0 {
		t.Fatalf("%d entries left, want 0", l.Len())
	}
}

// Many readers and writers on one key: writers are alone, readers overlap.
func TestReadersWritersStress(t *testing.T) {
	var l Locks
	var readers, writers, maxReaders atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				if (i+j)%4 == 0 {
					unlock, err := l.Lock(context.Background(), "k")
					if err != nil {
						t.Error(err)
						return
					}
					if writers.Add(1) != 1 || readers.Load() != 0 {
						t.Error("writer not alone")
					}
					writers.Add(-1)
					unlock()
					continue
				}
				unlock, err := l.RLock(context.Background(), "k")
				if err != nil {
					t.Error(err)
					return
				}
				n := readers.Add(1)
				if writers.Load() != 0 {
					t.Error("reader beside a writer")
				}
				for m := maxReaders.Load(); n > m && !maxReaders.CompareAndSwap(m, n); m = maxReaders.Load() {
				}
				time.Sleep(50 * time.Microsecond)
				readers.Add(-1)
				unlock()
			}
		}(i)
	}
	wg.Wait()
	if maxReaders.Load() < 2 {
		t.Errorf("readers never overlapped (max %d at once)", maxReaders.Load())
	}
	if l.Len() != 0 {
		t.Fatalf("%d entries left, want 0", l.Len())
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
