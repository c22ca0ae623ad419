package driver

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// The export is the NFS volumes' state, so what a hostpath start-up
// reconciles from its database an NFS controller reconciles from the
// export, once per export per process, at the first call that uses it: a
// create, snapshot or delete whose controller was killed and that no retry
// of its name ever came for (the claim was deleted meanwhile) is rolled
// back or finished, and the trash a killed delete left is removed. Only records older than nfsSweepAge are touched: a
// younger one may be in the hands of a live controller (the old pod of a
// moved Deployment) or of a CO retrying it. A snapshot's age is that of its
// last heartbeat where it has one (SnapshotRecord.LastAlive): the copy of a
// hostpath volume to the export runs on the volume's node, in a job no
// other process knows of, for as long as the bytes take.

// nfsSweepAge is how old an unfinished record must be before a sweep
// touches it: the time a detached copy's result waits for its caller.
const nfsSweepAge = 15 * time.Minute

type nfsSweeps struct {
	done    sync.Map // export "server:/share" -> struct{}
	running sync.Map // export "server:/share" -> struct{}, while its sweep runs
	wg      sync.WaitGroup
	age     time.Duration // nfsSweepAge; shorter in tests
}

// sweepOnce starts the sweep of x's export if this process has not swept
// it yet.
func (d *nfsDriver) sweepOnce(x *nfs.Export) {
	if _, seen := d.sweeps.done.LoadOrStore(x.Name(), struct{}{}); seen || d.jobs.shuttingDown() {
		return
	}
	server, share := x.Server(), x.Share()
	d.sweeps.wg.Add(1)
	d.sweeps.running.Store(x.Name(), struct{}{})
	go func() {
		defer d.sweeps.wg.Done()
		defer d.sweeps.running.Delete(server + ":" + share)
		if err := d.sweepExport(server, share); err != nil {
			klog.ErrorS(err, "Cannot reconcile the unfinished NFS operations of an export; the next process to use it retries", "export", server+":"+share)
			d.sweeps.done.Delete(server + ":" + share)
		}
	}()
}

// waitSweeps waits for the sweeps still running, at most the NFS timeout:
// each of their steps is bounded by the guard, but a sweep of many records
// on a slow export must not hold up a shutdown past the kubelet's grace
// period. What is abandoned is finished by the next process's first use of
// the export.
func (d *nfsDriver) waitSweeps() {
	done := make(chan struct{})
	go func() { d.sweeps.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d.exports.Timeout()):
		var running []string
		d.sweeps.running.Range(func(k, _ any) bool { running = append(running, k.(string)); return true })
		klog.InfoS("NFS export sweeps still run at shutdown; not waiting for them any longer (the next process to use the export sweeps it again)",
			"waited", d.exports.Timeout(), "exports", running)
	}
}

func (d *nfsDriver) sweepExport(server, share string) error {
	ctx := d.jobs.base
	x, err := d.exports.Use(ctx, server, share)
	if err != nil {
		return err
	}
	defer x.Release()
	age := d.sweeps.age
	if age == 0 {
		age = nfsSweepAge
	}
	// Data of deletes a kill cut short (the removal from trash/ runs
	// after the delete has answered).
	x.PurgeTrash()
	vols, err := x.ListVolumes(ctx)
	if err != nil {
		return err
	}
	var todo []*nfs.VolumeRecord
	for _, rec := range vols {
		if rec.Phase == nfs.PhaseReady || time.Since(rec.CreatedAt) < age || d.jobs.making(rec.ID) != nil {
			continue
		}
		todo = append(todo, rec)
		// The looks inside the trees of the deletes to finish start
		// first, all of them (in their own slots): the deletes below then
		// wait for looks that ran side by side, not one after another.
		if rec.Phase == nfs.PhaseDeleting && rec.OnDelete != OnDeleteRetain {
			if owner, err := x.SubDirOwner(ctx, rec.SubDir); err == nil && owner == rec.ID || errors.Is(err, nfs.ErrNotFound) {
				_, _ = d.nfsStartLook(x, rec, nfsDeleteWhat(rec))
			}
		}
	}
	for _, rec := range todo {
		if err := d.sweepVolume(ctx, x, rec); status.Code(err) == codes.FailedPrecondition {
			// A delete refused for good (its tree holds another share):
			// said, and the others swept.
			klog.ErrorS(err, "Cannot finish an NFS volume delete that a crash interrupted", "volumeID", rec.ID)
		} else if err != nil {
			return err
		}
	}
	snaps, err := x.ListSnapshots(ctx)
	if err != nil {
		return err
	}
	for _, rec := range snaps {
		// A snapshot of a hostpath volume is copied by a job on its node,
		// not in this process: its record is in that job's hands while
		// the job's heartbeat is fresh (see takeOffNodeSnapshot).
		if rec.Phase == nfs.PhaseReady || time.Since(rec.LastAlive()) < age || d.jobs.making(rec.ID) != nil {
			continue
		}
		s, err := ids.ParseNFSSnapshotID(rec.ID)
		if err != nil {
			continue
		}
		unlock, err := d.lock(ctx, "snapname", rec.Name)
		if err != nil {
			return err
		}
		cur, err := x.GetSnapshot(ctx, s.Key)
		if err == nil && cur.Phase != nfs.PhaseReady && time.Since(cur.LastAlive()) >= age {
			err = d.nfsUndoSnapshot(ctx, x, cur, s.Key)
			if err == nil {
				klog.InfoS("Removed an NFS snapshot whose create or delete a crash interrupted", "snapshotID", rec.ID, "name", rec.Name, "phase", cur.Phase)
			}
		}
		unlock()
		if err != nil && !errors.Is(err, nfs.ErrNotFound) {
			return err
		}
	}
	return nil
}

// sweepVolume finishes an interrupted delete, or rolls back an interrupted
// create: its copy, or the empty directory it made.
func (d *nfsDriver) sweepVolume(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord) error {
	v, err := ids.ParseNFSVolumeID(rec.ID)
	if err != nil {
		return nil
	}
	unlockName, err := d.lock(ctx, "name", rec.Name)
	if err != nil {
		return err
	}
	defer unlockName()
	unlock, err := d.lock(ctx, "vol", rec.ID)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := x.GetVolume(ctx, v.Key)
	if errors.Is(err, nfs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	switch cur.Phase {
	case nfs.PhaseDeleting:
		if err := d.nfsRemoveVolume(ctx, x, cur, v.Key, cur.OnDelete); err != nil {
			return err
		}
		klog.InfoS("Finished an NFS volume delete that a crash interrupted", "volumeID", cur.ID, "name", cur.Name)
	case nfs.PhaseCreating:
		if cur.SourceSnapshotID == "" && cur.SourceVolumeID == "" && cur.TakesOver == nil && (cur.MakingDir || !cur.Exclusive) {
			// An empty create that made its directory (or an older
			// driver's, which may have): the directory goes if it is
			// still empty. Retained data it was taking over stays, and
			// its claim is given back.
			if owner, err := x.SubDirOwner(ctx, cur.SubDir); err == nil && owner == cur.ID {
				if err := x.RemoveDirIfEmpty(ctx, cur.SubDir); err != nil {
					return err
				}
			}
		}
		if err := d.nfsUndoCreate(ctx, x, cur, v.Key); err != nil {
			return err
		}
		klog.InfoS("Rolled back an NFS volume create that a crash interrupted and nobody retried", "volumeID", cur.ID, "name", cur.Name)
	}
	return nil
}
