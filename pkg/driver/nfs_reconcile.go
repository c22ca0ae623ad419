package driver

import (
	"context"
	"fmt"
	"os"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// reconcileNFSPublication is reconcilePublication for an NFS mount: kept
// when in place, its record dropped when gone (a reboot), undone when a
// crash interrupted it.
func (d *nfsDriver) reconcileNFSPublication(p *state.Publication) error {
	v, err := ids.ParseNFSVolumeID(p.VolumeID)
	if err != nil {
		return d.store.DeletePublication(p.VolumeID, p.Kind, p.Path)
	}
	mounted, err := nfsMounted(p.Path)
	if err != nil {
		return err
	}
	switch {
	case p.Phase == state.PhaseMounted && mounted:
		return nil
	case p.Phase == state.PhaseMounted:
		d.metrics.reconcileAction("dropped_mount_record")
		klog.InfoS("NFS mount on record is gone (node restarted?); dropping the record; the CO will publish again", "volumeID", p.VolumeID, "kind", p.Kind, "path", p.Path)
	default:
		ctx, cancel := context.WithTimeout(context.Background(), d.exports.Timeout())
		defer cancel()
		if err := d.exports.Unmount(ctx, v.Export(), p.Path); err != nil {
			return fmt.Errorf("undo interrupted %s: %w", p.Kind, err)
		}
		if p.Kind == state.KindPublish {
			_ = os.Remove(p.Path)
		}
		d.metrics.reconcileAction("undid_mount")
		klog.InfoS("Undid an NFS mount change that a crash interrupted", "volumeID", p.VolumeID, "kind", p.Kind, "path", p.Path, "phase", p.Phase)
	}
	return d.store.DeletePublication(p.VolumeID, p.Kind, p.Path)
}
