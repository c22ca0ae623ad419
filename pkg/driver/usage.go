package driver

import "sync"

// usageCache keeps the last usage NodeGetVolumeStats measured per volume,
// for the used-bytes metric (a scrape must not walk every volume).
type usageCache struct {
	mu sync.Mutex
	m  map[string]int64
}

func (u *usageCache) set(id string, bytes int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string]int64{}
	}
	u.m[id] = bytes
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
	for _, b := range u.m {
		t += b
	}
	return t
}
