package driver

import (
	"context"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Locks: the per-key readers-writer locks (their keys: see core), the locks
// of a node call, and those a copy of a volume holds (withCopyLocks).

// lock takes a per-key exclusive lock. If ctx ends first, the call is
// Aborted: another call on the same volume is still running and the CO
// should retry.
func (c *core) lock(ctx context.Context, kind, key string) (func(), error) {
	unlock, err := c.locks.Lock(ctx, kind+"/"+key)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "another operation on %s %q is in progress: %v", kind, key, err)
	}
	return unlock, nil
}

// rlock takes a per-key shared lock: readers of a volume or snapshot (a
// copy, a mount) run side by side; only a delete excludes them.
func (c *core) rlock(ctx context.Context, kind, key string) (func(), error) {
	unlock, err := c.locks.RLock(ctx, kind+"/"+key)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "%s %q is being deleted or changed: %v", kind, key, err)
	}
	return unlock, nil
}

// lockForDelete takes the lock of a volume ("vol") or snapshot ("snap") that
// a delete is about to remove. Whoever deletes what is still being copied
// wants it gone: that copy is stopped first (it removes what it made). One
// that is the source of a running copy is ABORTED at once instead of
// queueing behind it.
func (c *core) lockForDelete(ctx context.Context, kind, id string) (func(), error) {
	if j := c.jobs.making(id); j != nil {
		if err := c.jobs.cancelAndWait(ctx, j); err != nil {
			return nil, err
		}
	}
	if j := c.jobs.reading(kind + "/" + id); j != nil {
		what := map[string]string{"vol": "volume", "snap": "snapshot"}[kind]
		return nil, status.Errorf(codes.Aborted, "%s %s is the source of a %s; retry once it ends", what, id, j.what)
	}
	return c.lock(ctx, kind, id)
}

// lockForNode holds a volume for a node call: shared, so that a snapshot or
// a clone copying it never holds up its pods' mounts (a pod would otherwise
// stay Terminating until the copy ends), yet a delete cannot run meanwhile;
// and the volume's node lock, so its own stage and publish calls run one at
// a time.
func (d *hostpathDriver) lockForNode(ctx context.Context, id string) (func(), error) {
	unlockVol, err := d.rlock(ctx, "vol", id)
	if err != nil {
		return nil, err
	}
	unlockNode, err := d.lock(ctx, "node", id)
	if err != nil {
		unlockVol()
		return nil, err
	}
	return func() { unlockNode(); unlockVol() }, nil
}

// copyPlan says how volume v is copied as one whole now: the mounts of its
// filesystem image to freeze during the copy (a point in time even while
// pods write), or, for a block volume pods write to on a data filesystem
// without reflinks, that it cannot be (a copy taken while the device is
// written would be torn; a read-only bind of a device node does not stop
// writes through it, so every publication counts). Only a mount that really
// is the image's filesystem is frozen: a staging path whose mount is gone
// is a plain directory of the node's own filesystem, which must never be.
func (d *hostpathDriver) copyPlan(v *state.Volume) ([]string, error) { return d.copyPlanOf(v, false) }

// copyPlanOf is copyPlan of a copy kept on the data filesystem, or, with
// offNode, of one to an NFS export (offnode.go), which copies every byte
// whatever the data filesystem can share.
func (d *hostpathDriver) copyPlanOf(v *state.Volume, offNode bool) ([]string, error) {
	pubs, err := d.store.PublicationsOf(v.ID)
	if err != nil {
		return nil, stateError(err)
	}
	var freeze []string
	for _, p := range pubs {
		switch kindOf(v).layout {
		case LayoutImage:
			if p.Kind == state.KindStage && p.Phase == state.PhaseMounted {
				if ok, err := d.vols.IsImageMount(v.ID, p.Path); err != nil {
					return nil, diskError("check the image's mount", err)
				} else if ok {
					freeze = append(freeze, p.Path)
				}
			}
		case layoutBlock:
			if p.Kind == state.KindPublish && offNode {
				return nil, status.Errorf(codes.FailedPrecondition,
					"block volume %s is published at %s, and a snapshot kept on an NFS export copies every byte: a copy of a device being written would be torn; stop the pod, or take the snapshot with a VolumeSnapshotClass without server and share",
					v.ID, p.Path)
			}
			if p.Kind == state.KindPublish && !d.vols.CanReflink() {
				return nil, status.Errorf(codes.FailedPrecondition,
					"block volume %s is published at %s, and the data directory's filesystem cannot reflink: a copy of a device being written would be torn; stop the pod, or keep the data directory on xfs (reflink=1) or btrfs",
					v.ID, p.Path)
			}
		}
	}
	return freeze, nil
}

// withCopyLocks runs a copy of the volumes ids in a job. For image and
// block volumes it takes their node locks, so no stage, unstage, publish or
// expansion changes what is copied or what is frozen, and reads the volumes
// and their plans again under those locks: the ones computed when the call
// came in may be stale by the time a copy slot is free. Where the copy is a
// reflink (milliseconds), it holds the node locks for the copy. A full copy
// (a data filesystem without reflinks: as long as the bytes take) holds them
// only while it plans and registers itself in d.wholeCopies: meanwhile the
// node calls that would change the volume or write it answer ABORTED at
// once (see copyInProgress), and the others go on.
func (d *hostpathDriver) withCopyLocks(ctx context.Context, ids []string, copy func(map[string]*state.Volume, []string) error) error {
	return d.withCopyLocksOf(ctx, ids, false, copy)
}

// withCopyLocksOf is withCopyLocks of a copy on the data filesystem, or,
// with offNode, of one to an NFS export: a full copy, whatever the data
// filesystem can share (see copyPlanOf).
func (d *hostpathDriver) withCopyLocksOf(ctx context.Context, ids []string, offNode bool, copy func(map[string]*state.Volume, []string) error) error {
	vols := make(map[string]*state.Volume, len(ids))
	var freeze []string
	for _, id := range slices.Sorted(slices.Values(ids)) {
		v, err := d.store.GetVolume(id)
		if err != nil {
			return stateError(err)
		}
		if kindOf(v).layout != LayoutDirectory {
			unlock, err := d.lock(ctx, "node", id)
			if err != nil {
				return err
			}
			var f []string
			if v, f, err = d.planCopy(id, offNode); err != nil {
				unlock()
				return err
			}
			if offNode || d.fullCopy(kindOf(v)) {
				d.wholeCopies.add(id, 1)
				defer d.wholeCopies.add(id, -1)
				unlock()
			} else {
				defer unlock()
			}
			freeze = append(freeze, f...)
		}
		vols[id] = v
	}
	return copy(vols, freeze)
}

// planCopy reads volume id and its copy plan again, under its node lock
// (offNode: see copyPlanOf).
func (d *hostpathDriver) planCopy(id string, offNode bool) (*state.Volume, []string, error) {
	v, err := d.store.GetVolume(id)
	if err != nil {
		return nil, nil, stateError(err)
	}
	freeze, err := d.copyPlanOf(v, offNode)
	return v, freeze, err
}

// fullCopy says whether a copy of a volume of kind k copies every byte: an
// image or block file on a data filesystem that cannot reflink.
func (d *hostpathDriver) fullCopy(k volumeKind) bool {
	return k.layout != LayoutDirectory && !d.vols.CanReflink()
}

// copyInProgress refuses, at once, a node call that would change an image
// or block volume that a full copy is reading (or, with writes, a block
// volume's publish: a read-only bind of a device does not stop them).
func (d *hostpathDriver) copyInProgress(v *state.Volume, what string) error {
	if kindOf(v).layout == LayoutDirectory || !d.wholeCopies.has(v.ID) {
		return nil
	}
	return status.Errorf(codes.Aborted, "volume %s is being copied whole (a snapshot or a clone on a data filesystem without reflinks); %s once the copy ends", v.ID, what)
}

// wholeCopies counts the full copies running per volume ID.
type wholeCopies struct {
	mu sync.Mutex
	n  map[string]int
}

func (w *wholeCopies) add(id string, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == nil {
		w.n = map[string]int{}
	}
	if w.n[id] += n; w.n[id] <= 0 {
		delete(w.n, id)
	}
}

func (w *wholeCopies) has(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[id] > 0
}
