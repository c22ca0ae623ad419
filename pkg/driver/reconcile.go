package driver

import (
	"fmt"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/pkg/mountutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// reconcile runs once at start-up, before anything is served, and brings the
// disk and the records back in line after a crash:
//
//   - a volume still "creating" was never acknowledged: its data and record
//     are removed (the CO retries the create by name);
//   - a volume "deleting" had its delete requested: the delete is finished;
//   - a ready volume whose data is gone is kept and logged; volume health
//     reports it as DATA_LOSS;
//   - a directory in volumes/ with no record is moved to quarantine/, never
//     deleted, and logged;
//   - a mount half made or half removed is undone, and a record of a mount
//     that no longer exists (the node rebooted) is dropped;
//   - the trash (deletes cut short) and partial/ (copies cut short) are
//     emptied;
//   - snapshots get the same treatment as volumes, and a group snapshot
//     that was not complete is removed with all its members.
func (d *Driver) reconcile() error {
	d.vols.EmptyTrash()
	if err := d.reconcilePublications(); err != nil {
		return err
	}
	vols, _, err := d.store.ListVolumes("", 0, nil)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(vols))
	for _, v := range vols {
		known[v.ID] = true
		if err := d.reconcileVolume(v); err != nil {
			return err
		}
	}
	names, err := d.vols.List()
	if err != nil {
		return err
	}
	if err := quarantineUnknown(names, known, d.vols.Quarantine, "volume"); err != nil {
		return err
	}
	return d.reconcileSnapshots()
}

// reconcileGroups finishes or undoes group snapshots a crash interrupted,
// members and all. It runs before reconcileSnapshots.
func (d *Driver) reconcileGroups() error {
	groups, err := d.store.Groups()
	if err != nil {
		return err
	}
	for _, g := range groups {
		if g.Phase == state.PhaseReady {
			continue
		}
		if err := d.removeGroupMembers(g); err != nil {
			return fmt.Errorf("group snapshot %s (%s when interrupted): %w", g.ID, g.Phase, err)
		}
		if err := d.store.DeleteGroup(g.ID); err != nil {
			return err
		}
		klog.InfoS("Removed a group snapshot that a crash interrupted", "groupSnapshotID", g.ID, "name", g.Name, "phase", g.Phase)
	}
	return nil
}

// reconcileSnapshots does for snapshots what reconcile does for volumes.
func (d *Driver) reconcileSnapshots() error {
	if err := d.reconcileGroups(); err != nil {
		return err
	}
	snaps, _, err := d.store.ListSnapshots("", 0, nil)
	if err != nil {
		return err
	}
	known := make(map[string]bool, len(snaps))
	for _, s := range snaps {
		known[s.ID] = true
		switch s.Phase {
		case state.PhaseCreating, state.PhaseDeleting:
			if err := d.vols.DeleteSnapshot(s.ID); err != nil {
				return fmt.Errorf("snapshot %s (%s when interrupted): remove data: %w", s.ID, s.Phase, err)
			}
			if err := d.store.DeleteSnapshot(s.ID); err != nil {
				return err
			}
			klog.InfoS("Removed a snapshot that a crash interrupted", "snapshotID", s.ID, "name", s.Name, "phase", s.Phase)
		case state.PhaseReady:
			if ok, err := d.vols.SnapshotExists(s.ID); !ok || err != nil {
				klog.ErrorS(err, "Snapshot data is missing or unusable; keeping the record", "snapshotID", s.ID, "name", s.Name)
			}
		}
	}
	names, err := d.vols.ListSnapshots()
	if err != nil {
		return err
	}
	return quarantineUnknown(names, known, d.vols.QuarantineSnapshot, "snapshot")
}

// quarantineUnknown moves every entry without a record out of the way.
func quarantineUnknown(names []string, known map[string]bool, quarantine func(string) (string, error), kind string) error {
	for _, name := range names {
		if known[name] {
			continue
		}
		dst, err := quarantine(name)
		if err != nil {
			return err
		}
		klog.ErrorS(nil, "Found "+kind+" data without a record; moved it to quarantine for an operator to inspect",
			"entry", name, "quarantine", dst)
	}
	return nil
}

func (d *Driver) reconcileVolume(v *state.Volume) error {
	switch v.Phase {
	case state.PhaseCreating, state.PhaseDeleting:
		if err := d.vols.Delete(v.ID); err != nil {
			return fmt.Errorf("volume %s (%s when interrupted): remove data: %w", v.ID, v.Phase, err)
		}
		if err := d.store.DeleteVolume(v.ID); err != nil {
			return err
		}
		what := "Rolled back a create that a crash interrupted"
		if v.Phase == state.PhaseDeleting {
			what = "Finished a delete that a crash interrupted"
		}
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

// reconcilePublications runs publish targets before staging paths, so that
// a staging mount is never removed from under a target still bound to it.
func (d *Driver) reconcilePublications() error {
	pubs, err := d.store.AllPublications()
	if err != nil {
		return err
	}
	for _, kind := range []state.PublicationKind{state.KindPublish, state.KindStage} {
		for _, p := range pubs {
			if p.Kind != kind {
				continue
			}
			if err := d.reconcilePublication(p); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *Driver) reconcilePublication(p *state.Publication) error {
	mounted, err := mountutil.IsMountPoint(p.Path)
	if err != nil {
		mounted = false // a missing path is simply not mounted
	}
	switch {
	case p.Phase == state.PhaseMounted && mounted:
		return nil
	case p.Phase == state.PhaseMounted:
		klog.InfoS("Mount on record is gone (node restarted?); dropping the record; the CO will publish again",
			"volumeID", p.VolumeID, "kind", p.Kind, "path", p.Path)
	default:
		// Mounting or unmounting when interrupted: the CO never got an
		// answer and will call again, so undo what may be half done.
		if err := mountutil.Unmount(p.Path, false); err != nil {
			return fmt.Errorf("undo interrupted %s of volume %s at %s: %w", p.Kind, p.VolumeID, p.Path, err)
		}
		klog.InfoS("Undid a mount change that a crash interrupted", "volumeID", p.VolumeID, "kind", p.Kind, "path", p.Path, "phase", p.Phase)
	}
	return d.store.DeletePublication(p.VolumeID, p.Kind, p.Path)
}
