package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// reconcile runs once at start-up, before anything is served, and brings the
// disk and the records back in line after a crash or a power cut:
//
//   - a copy left in partial/ (or data left in trash/) whose ID a ready
//     record names, while the record's data is missing, is moved into place:
//     data a ready record points to is never deleted;
//   - every other entry of partial/ (copies cut short) and trash/ (deletes
//     cut short) is removed;
//   - a mount half made or half removed is undone, and a record of a mount
//     that no longer exists (the node rebooted) is dropped;
//   - a volume still "creating" was never acknowledged: its data and record
//     are removed (the CO retries the create by name);
//   - a volume "deleting" had its delete requested: the delete is finished;
//   - a ready volume whose data is gone is kept and logged; volume health
//     reports it as DATA_LOSS;
//   - a directory in volumes/ with no record is moved to quarantine/, never
//     deleted, and logged;
//   - snapshots get the same treatment as volumes, and a group snapshot
//     that was not complete is removed with all its members.
//
// Start-up fails open: what cannot be put right (an unmount that fails, a
// removal blocked by a mount) is logged, reported by NodeGetStorageHealth
// and retried in the background, while the driver serves. Refusing to start
// would leave every pod on the node without a driver to unpublish its
// volumes.
func (d *Driver) reconcile() []*problem {
	var problems []*problem
	add := func(what string, err error, retry func() error) {
		if err != nil {
			d.metrics.reconcileAction("failed")
			klog.ErrorS(err, "Cannot reconcile at start-up; serving anyway and retrying in the background", "what", what)
			problems = append(problems, &problem{what: what, err: err, retry: retry})
		}
	}
	vols, _, err := d.store.ListVolumes("", 0, nil)
	if err != nil {
		add("list volume records", err, nil)
		return problems
	}
	snaps, _, err := d.store.ListSnapshots("", 0, nil)
	if err != nil {
		add("list snapshot records", err, nil)
		return problems
	}
	add("leftovers in partial/ and trash/", d.hostpath.reconcileLeftovers(vols, snaps, add), nil)

	pubs, err := d.store.AllPublications()
	add("list mount records", err, nil)
	// Publish targets before staging paths, so that a staging mount is never
	// removed from under a target still bound to it.
	for _, kind := range []state.PublicationKind{state.KindPublish, state.KindStage} {
		for _, p := range pubs {
			if p.Kind == kind && p.Backend == backendNFS {
				// An NFS volume's mount: no volume record on this node.
				add(fmt.Sprintf("NFS %s of volume %s at %s", p.Kind, p.VolumeID, p.Path), d.nfs.reconcileNFSPublication(p),
					func() error { return d.retryPublication(p, d.nfs.lockNode, d.nfs.reconcileNFSPublication) })
				continue
			}
			if p.Kind == kind {
				add(fmt.Sprintf("%s of volume %s at %s", p.Kind, p.VolumeID, p.Path), d.hostpath.reconcilePublication(p),
					func() error { return d.retryPublication(p, d.hostpath.lockForNode, d.hostpath.reconcilePublication) })
			}
		}
	}

	add("loop devices left attached", d.hostpath.detachLeakedDevices(), nil)
	add("held volume files", d.hostpath.holdVolumeFiles(vols), func() error { return d.hostpath.holdVolumeFiles(nil) })

	known := make(map[string]bool, len(vols))
	for _, v := range vols {
		known[v.ID] = true
		add(fmt.Sprintf("volume %s (%s)", v.ID, v.Phase), d.hostpath.reconcileVolume(v), func() error { return d.hostpath.retryVolume(v.ID) })
	}
	// An inline volume that no mount holds after the mounts were checked
	// belongs to no running pod (a crash between its create and its
	// publish, or a reboot): it goes. A kubelet's retry makes it afresh.
	for _, v := range vols {
		if v.Ephemeral && v.Phase == state.PhaseReady {
			add(fmt.Sprintf("inline volume %s", v.ID), d.hostpath.reconcileEphemeral(v), func() error { return d.hostpath.reconcileEphemeral(v) })
		}
	}
	names, err := d.hostpath.vols.List()
	add("list volume directories", err, nil)
	d.hostpath.quarantineUnknown(names, known, d.hostpath.vols.Quarantine, "volume", add)

	groups, err := d.store.Groups()
	add("list group snapshot records", err, nil)
	for _, g := range groups {
		if g.Phase != state.PhaseReady {
			add(fmt.Sprintf("group snapshot %s (%s)", g.ID, g.Phase), d.hostpath.reconcileGroup(g), func() error { return d.hostpath.retryGroup(g.ID) })
		}
	}
	// Groups may have removed member snapshots: read them again.
	if snaps, _, err = d.store.ListSnapshots("", 0, nil); err != nil {
		add("list snapshot records", err, nil)
		return problems
	}
	knownSnaps := make(map[string]bool, len(snaps))
	for _, s := range snaps {
		knownSnaps[s.ID] = true
		add(fmt.Sprintf("snapshot %s (%s)", s.ID, s.Phase), d.hostpath.reconcileSnapshot(s), func() error { return d.hostpath.retrySnapshot(s.ID) })
	}
	names, err = d.hostpath.vols.ListSnapshots()
	add("list snapshot directories", err, nil)
	d.hostpath.quarantineUnknown(names, knownSnaps, d.hostpath.vols.QuarantineSnapshot, "snapshot", add)
	return problems
}

// holdVolumeFiles gives volumes an earlier version made what a held image
// or block volume is promised now: every block of its file allocated (an
// earlier version left them sparse; their holes are already counted as set
// aside, so allocating them takes no room from anyone), and discard off on
// the loop devices that hold them (one attached before the upgrade stays
// attached, with discard on, until its next stage). vols nil: read the
// records again (a retry).
func (d *hostpathDriver) holdVolumeFiles(vols []*state.Volume) error {
	if vols == nil {
		var err error
		if vols, _, err = d.store.ListVolumes("", 0, nil); err != nil {
			return stateError(err)
		}
	}
	var errs []error
	for _, v := range vols {
		if v.Phase != state.PhaseReady || v.Limit != hostpath.EnforceImage {
			continue
		}
		if err := d.vols.HoldImage(v.ID); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("allocate the file of volume %s: %w", v.ID, err))
		}
	}
	d.reserved.invalidate() // what was allocated is on disk now
	n, err := d.vols.DisableDiscardOnVolumeDevices()
	if n > 0 {
		klog.InfoS("Turned discard off on loop devices of volume files attached before", "devices", n)
	}
	return errors.Join(append(errs, err)...)
}

// detachLeakedDevices detaches loop devices of files under the data
// directory that no mount record holds: a crash between an attach and its
// record, or a deleted volume's device. A stage holds a volume's device,
// and so does a publish: an inline image volume has no stage, its image is
// mounted at the pod's target itself.
func (d *hostpathDriver) detachLeakedDevices() error {
	pubs, err := d.store.AllPublications()
	if err != nil {
		return err
	}
	held := map[string]bool{}
	for _, p := range pubs {
		held[p.VolumeID] = true
	}
	leaked, err := d.vols.LeakedBlockDevices(held)
	if err != nil {
		return err
	}
	var errs []error
	for i := range leaked {
		if err := d.vols.DetachDevice(&leaked[i]); err != nil {
			errs = append(errs, err)
			continue
		}
		d.metrics.reconcileAction("detached_loop_device")
		klog.InfoS("Detached a loop device no mount holds", "device", leaked[i].Path, "file", leaked[i].BackingFile)
	}
	return errors.Join(errs...)
}

// reconcileLeftovers adopts or removes what partial/ and trash/ hold. Only a
// ready record whose data is missing adopts a leftover of its ID; a copy
// renamed into place is durable before its record says ready, so this
// happens only when a disk broke that promise, and then the data is kept.
func (d *hostpathDriver) reconcileLeftovers(vols []*state.Volume, snaps []*state.Snapshot, add func(string, error, func() error)) error {
	left, err := d.vols.Leftovers()
	if err != nil {
		return err
	}
	readyVol := map[string]bool{}
	for _, v := range vols {
		if v.Phase == state.PhaseReady {
			readyVol[v.ID] = true
		}
	}
	readySnap := map[string]bool{}
	for _, s := range snaps {
		if s.Phase == state.PhaseReady {
			readySnap[s.ID] = true
		}
	}
	for _, l := range left {
		switch {
		case readyVol[l.ID] && ids.ValidateVolumeID(l.ID) == nil && d.missingVolume(l.ID):
			add("adopt "+l.Path, d.vols.AdoptVolume(l), nil)
			d.metrics.reconcileAction("adopted_copy")
			klog.ErrorS(nil, "A ready volume's data was found outside its place after a crash; moved it back", "volumeID", l.ID, "from", l.Path)
			readyVol[l.ID] = false
		case readySnap[l.ID] && ids.ValidateSnapshotID(l.ID) == nil && d.missingSnapshot(l.ID):
			add("adopt "+l.Path, d.vols.AdoptSnapshot(l), nil)
			d.metrics.reconcileAction("adopted_copy")
			klog.ErrorS(nil, "A ready snapshot's data was found outside its place after a crash; moved it back", "snapshotID", l.ID, "from", l.Path)
			readySnap[l.ID] = false
		default:
			add("remove "+l.Path, d.vols.RemoveLeftover(l), func() error { return d.vols.RemoveLeftover(l) })
			d.metrics.reconcileAction("removed_leftover")
		}
	}
	return nil
}

func (d *hostpathDriver) missingVolume(id string) bool {
	ok, err := d.vols.Exists(id)
	return !ok && err == nil
}

func (d *hostpathDriver) missingSnapshot(id string) bool {
	ok, err := d.vols.SnapshotExists(id)
	return !ok && err == nil
}

// quarantineUnknown moves every entry without a record out of the way.
func (d *hostpathDriver) quarantineUnknown(names []string, known map[string]bool, quarantine func(string) (string, error), kind string, add func(string, error, func() error)) {
	for _, name := range names {
		if known[name] {
			continue
		}
		dst, err := quarantine(name)
		if err != nil {
			// Not retried while serving: a create of that ID may have
			// made it by then. The next start-up looks again.
			add("quarantine "+kind+" entry "+name, err, nil)
			continue
		}
		d.metrics.reconcileAction("quarantined")
		klog.ErrorS(nil, "Found "+kind+" data without a record; moved it to quarantine for an operator to inspect",
			"entry", name, "quarantine", dst)
	}
}

func (d *hostpathDriver) reconcileVolume(v *state.Volume) error {
	switch v.Phase {
	case state.PhaseCreating, state.PhaseDeleting:
		if err := d.removeVolumeData(v); err != nil {
			return fmt.Errorf("remove data: %w", err)
		}
		if err := d.store.DeleteVolume(v.ID); err != nil {
			return err
		}
		what, action := "Rolled back a create that a crash interrupted", "rolled_back_create"
		if v.Phase == state.PhaseDeleting {
			what, action = "Finished a delete that a crash interrupted", "finished_delete"
		}
		d.metrics.reconcileAction(action)
		klog.InfoS(what, "volumeID", v.ID, "name", v.Name)
	case state.PhaseReady:
		if h := d.dataHealth(v); len(h) > 0 {
			klog.ErrorS(nil, "Volume data is missing or unusable; keeping the record and reporting it through volume health",
				"volumeID", v.ID, "name", v.Name, "reason", h[0].Reason, "detail", h[0].Message)
		}
	default:
		klog.ErrorS(nil, "Volume record in an unknown phase; leaving it alone", "volumeID", v.ID, "phase", v.Phase)
	}
	return nil
}

func (d *hostpathDriver) reconcileEphemeral(v *state.Volume) error {
	unlock, err := d.lock(context.Background(), "name", v.Name)
	if err != nil {
		return err
	}
	defer unlock()
	pubs, err := d.store.PublicationsOf(v.ID)
	if err != nil || len(pubs) > 0 {
		return err
	}
	if ok, err := d.store.VolumeExists(v.ID); err != nil || !ok {
		return err
	}
	if err := d.removeEphemeral(context.Background(), v, ""); err != nil {
		return err
	}
	d.metrics.reconcileAction("removed_inline_volume")
	klog.InfoS("Removed an inline volume that no pod mounts any more", "volumeID", v.ID, "name", v.Name)
	return nil
}

func (d *hostpathDriver) reconcileSnapshot(s *state.Snapshot) error {
	switch s.Phase {
	case state.PhaseCreating, state.PhaseDeleting:
		if err := d.vols.DeleteSnapshot(s.ID); err != nil {
			return fmt.Errorf("remove data: %w", err)
		}
		if err := d.store.DeleteSnapshot(s.ID); err != nil {
			return err
		}
		d.metrics.reconcileAction("removed_snapshot")
		klog.InfoS("Removed a snapshot that a crash interrupted", "snapshotID", s.ID, "name", s.Name, "phase", s.Phase)
	case state.PhaseReady:
		if ok, err := d.vols.SnapshotExists(s.ID); !ok || err != nil {
			klog.ErrorS(err, "Snapshot data is missing or unusable; keeping the record", "snapshotID", s.ID, "name", s.Name)
		}
	}
	return nil
}

// reconcileGroup removes a group snapshot that a crash interrupted, with its
// members.
func (d *hostpathDriver) reconcileGroup(g *state.GroupSnapshot) error {
	if err := d.undoGroup(g); err != nil {
		return err
	}
	d.metrics.reconcileAction("removed_group_snapshot")
	klog.InfoS("Removed a group snapshot that a crash interrupted", "groupSnapshotID", g.ID, "name", g.Name, "phase", g.Phase)
	return nil
}

func (d *hostpathDriver) reconcilePublication(p *state.Publication) error {
	v, err := d.store.GetVolume(p.VolumeID)
	if err != nil {
		return err
	}
	present, err := d.inPlace(v, p)
	if err != nil {
		present = false // a missing path is simply not mounted
	}
	k := kindOf(v)
	switch {
	case p.Phase == state.PhaseMounted && present:
		// A filesystem a kill left frozen mid-snapshot was thawed first
		// thing at start-up, from its marker (thawLeftFrozen); one frozen
		// by someone else is theirs to thaw.
		return nil
	case p.Phase == state.PhaseMounted && k.block() && p.Kind == state.KindStage:
		// The device went (a reboot): a block volume state knows as staged
		// is attached again, so the kubelet's publish finds it.
		d.metrics.reconcileAction("reattached_block")
		return d.reattachBlock(v, p)
	case p.Phase == state.PhaseMounted:
		d.metrics.reconcileAction("dropped_mount_record")
		klog.InfoS("Mount on record is gone (node restarted?); dropping the record; the CO will publish again",
			"volumeID", p.VolumeID, "kind", p.Kind, "path", p.Path)
	default:
		// Mounting or unmounting when interrupted: the CO never got an
		// answer and will call again, so undo what may be half done.
		if err := d.detach(v, p); err != nil {
			return fmt.Errorf("undo interrupted %s: %w", p.Kind, err)
		}
		d.metrics.reconcileAction("undid_mount")
		klog.InfoS("Undid a mount change that a crash interrupted", "volumeID", p.VolumeID, "kind", p.Kind, "path", p.Path, "phase", p.Phase)
	}
	return d.store.DeletePublication(p.VolumeID, p.Kind, p.Path)
}

// The retries below run while the driver serves: each takes the locks a
// call would, and first reads the record again, since a call may have
// settled the matter in the meantime (a kubelet retrying its mount, a CO
// retrying its delete).

func (d *hostpathDriver) retryVolume(id string) error {
	if d.jobs.making(id) != nil {
		return nil
	}
	// The name's lock first, as CreateVolume takes it: a retried create
	// may finish this very volume and answer with it meanwhile.
	v, err := d.store.GetVolume(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	unlockName, err := d.lock(context.Background(), "name", v.Name)
	if err != nil {
		return err
	}
	defer unlockName()
	unlock, err := d.lock(context.Background(), "vol", id)
	if err != nil {
		return err
	}
	defer unlock()
	v, err = d.store.GetVolume(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return d.reconcileVolume(v)
}

func (d *hostpathDriver) retrySnapshot(id string) error {
	if d.jobs.making(id) != nil {
		return nil
	}
	s, err := d.store.GetSnapshot(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	unlockName, err := d.lock(context.Background(), "snapname", s.Name)
	if err != nil {
		return err
	}
	defer unlockName()
	unlock, err := d.lock(context.Background(), "snap", id)
	if err != nil {
		return err
	}
	defer unlock()
	s, err = d.store.GetSnapshot(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return d.reconcileSnapshot(s)
}

func (d *hostpathDriver) retryGroup(id string) error {
	if d.jobs.making(id) != nil {
		return nil
	}
	g, err := d.store.GetGroup(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	unlockName, err := d.lock(context.Background(), "groupname", g.Name)
	if err != nil {
		return err
	}
	defer unlockName()
	unlock, err := d.lock(context.Background(), "group", id)
	if err != nil {
		return err
	}
	defer unlock()
	g, err = d.store.GetGroup(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil || g.Phase == state.PhaseReady {
		return err
	}
	return d.reconcileGroup(g)
}

// problem is something start-up could not put right.
type problem struct {
	what  string
	err   error
	retry func() error // nil: only the next start-up tries again
}

// pending tracks the problems start-up left and retries them in the
// background until none is left.
type pending struct {
	mu       sync.Mutex
	problems []*problem
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func startPending(problems []*problem, every time.Duration) *pending {
	p := &pending{problems: problems, stop: make(chan struct{}), done: make(chan struct{})}
	go p.loop(every)
	return p
}

func (p *pending) loop(every time.Duration) {
	defer close(p.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if p.retryOnce() {
			return
		}
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// retryOnce retries what can be retried; it reports whether nothing
// retryable is left.
func (p *pending) retryOnce() bool {
	p.mu.Lock()
	todo := p.problems
	p.mu.Unlock()
	var left []*problem
	retryable := false
	for _, pr := range todo {
		if pr.retry == nil {
			left = append(left, pr)
			continue
		}
		if err := pr.retry(); err != nil {
			left = append(left, &problem{what: pr.what, err: err, retry: pr.retry})
			retryable = true
			continue
		}
		klog.InfoS("Reconciled what start-up could not", "what", pr.what)
	}
	p.mu.Lock()
	p.problems = left
	p.mu.Unlock()
	return !retryable
}

// list returns the problems left, for health reports.
func (p *pending) list() []*problem {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*problem(nil), p.problems...)
}

func (p *pending) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
}
