package driver

import (
	"sync"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
)

// usageCache keeps the last usage measured per volume: for the used-bytes
// metric (a scrape must not walk every volume), and so that a directory
// volume nothing holds to its size is walked at most once per interval
// however often the kubelet asks.
type usageCache struct {
	mu sync.Mutex
	m  map[string]measured
}

type measured struct {
	u  hostpath.Usage
	at time.Time
}

func (u *usageCache) set(id string, bytes int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string]measured{}
	}
	u.m[id] = measured{u: hostpath.Usage{Bytes: bytes}, at: time.Now()}
}

// measure returns the volume's usage measured within maxAge, or measures it
// now with walk.
func (u *usageCache) measure(id string, maxAge time.Duration, walk func() (hostpath.Usage, error)) (hostpath.Usage, error) {
	u.mu.Lock()
	m, ok := u.m[id]
	u.mu.Unlock()
	if ok && m.u.Inodes > 0 && time.Since(m.at) < maxAge {
		return m.u, nil
	}
	got, err := walk()
	if err != nil {
		return got, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string]measured{}
	}
	u.m[id] = measured{u: got, at: time.Now()}
	return got, nil
}

func (u *usageCache) forget(id string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.m, id)
}

func (u *usageCache) total() int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	var t int64
	for _, m := range u.m {
		t += m.u.Bytes
	}
	return t
}
