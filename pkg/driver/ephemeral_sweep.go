package driver

import (
	"context"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// An inline volume lives as long as its pod's mount: the kubelet calls
// NodeUnpublishVolume when the pod goes, and after a final publish error it
// calls nothing (publishEphemeral then removes what it made). What is left
// without a mount all the same (a publish that failed with a code the
// kubelet retries, and whose pod went before the retry; a removal that
// failed) would keep its slot, its share and its image until a restart.
// The sweep removes an inline volume that no mount holds and that no
// publish has tried for DefaultEphemeralSweepAfter. It holds the volume's
// name lock, as a publish does, so it never takes a volume a publish is
// making or mounting; and it removes through the same recorded steps as an
// unpublish, so a kill half way is finished at start-up (which removes
// every inline volume no mount holds).

// DefaultEphemeralSweepAfter is how long an inline volume may be without a
// mount (and without a publish trying) before the sweep removes it.
const DefaultEphemeralSweepAfter = 5 * time.Minute

// ephemeralSweep is the sweep's state: when a publish last tried each
// inline volume (by record name), and the loop's stop.
type ephemeralSweep struct {
	mu    sync.Mutex
	tried map[string]time.Time
	stop  context.CancelFunc
	done  chan struct{}
}

// ephemeralSeen notes that a publish of the inline volume name is under
// way (the caller holds its name lock).
func (d *hostpathDriver) ephemeralSeen(name string) {
	d.sweep.mu.Lock()
	defer d.sweep.mu.Unlock()
	if d.sweep.tried == nil {
		d.sweep.tried = map[string]time.Time{}
	}
	d.sweep.tried[name] = time.Now()
}

func (d *hostpathDriver) ephemeralForget(name string) {
	d.sweep.mu.Lock()
	defer d.sweep.mu.Unlock()
	delete(d.sweep.tried, name)
}

func (d *hostpathDriver) ephemeralLastTried(name string) time.Time {
	d.sweep.mu.Lock()
	defer d.sweep.mu.Unlock()
	return d.sweep.tried[name]
}

// startEphemeralSweep runs the sweep every fifth of after, until Close.
func (d *hostpathDriver) startEphemeralSweep(after time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	d.sweep.stop, d.sweep.done = cancel, make(chan struct{})
	go func() {
		defer close(d.sweep.done)
		t := time.NewTicker(max(after/5, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				d.sweepEphemeral(ctx, after)
			}
		}
	}()
}

func (d *hostpathDriver) stopEphemeralSweep() {
	if d.sweep.stop != nil {
		d.sweep.stop()
		<-d.sweep.done
	}
}

// sweepEphemeral removes the inline volumes no mount holds and no publish
// tried for after. It reports how many it removed.
func (d *hostpathDriver) sweepEphemeral(ctx context.Context, after time.Duration) int {
	d.sweep.mu.Lock()
	for name, at := range d.sweep.tried { // publishes that made nothing, or long ago
		if time.Since(at) >= after {
			delete(d.sweep.tried, name)
		}
	}
	d.sweep.mu.Unlock()
	vols, err := d.store.VolumesNamed(ephemeralNamePrefix)
	if err != nil {
		klog.ErrorS(err, "Sweep of unpublished inline volumes: cannot read their records; retrying later")
		return 0
	}
	removed := 0
	for _, v := range vols {
		if ctx.Err() != nil {
			return removed
		}
		if !v.Ephemeral || time.Since(v.CreatedAt) < after {
			continue
		}
		ok, err := d.sweepOneEphemeral(ctx, v.Name, after)
		if err != nil {
			klog.ErrorS(err, "Sweep of unpublished inline volumes: cannot remove one; retrying later", "volumeID", v.ID, "name", v.Name)
		}
		if ok {
			removed++
		}
	}
	return removed
}

// sweepOneEphemeral removes the inline volume of record name name if, under
// its name lock, no mount holds it and no publish tried it for after.
func (d *hostpathDriver) sweepOneEphemeral(ctx context.Context, name string, after time.Duration) (bool, error) {
	// A publish holding the name is busy with it: the next sweep looks.
	lctx, cancel := context.WithTimeout(ctx, time.Second)
	unlock, err := d.lock(lctx, "name", name)
	cancel()
	if err != nil {
		return false, nil
	}
	defer unlock()
	v, err := d.store.GetVolumeByName(name)
	if err != nil || !v.Ephemeral || v.Phase == state.PhaseDeleting {
		return false, nil // gone meanwhile, or being removed
	}
	if time.Since(v.CreatedAt) < after || time.Since(d.ephemeralLastTried(name)) < after {
		return false, nil
	}
	pubs, err := d.store.PublicationsOf(v.ID)
	if err != nil || len(pubs) > 0 {
		return false, err
	}
	if err := d.removeEphemeral(ctx, v, ""); err != nil {
		return false, err
	}
	d.ephemeralForget(name)
	klog.InfoS("Removed an inline volume that no pod has mounted for a while", "volumeID", v.ID, "name", v.Name, "after", after)
	return true, nil
}
