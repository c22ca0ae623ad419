package driver

import (
	"context"
	"errors"
	"io/fs"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// The node mount journal: every stage and publish a node makes, of either
// family, is recorded in the node's state before it is made (phase
// mounting) and after (mounted), and marked before it is undone
// (unmounting), so that a crash at any point is finished or undone by the
// kubelet's retry or by start-up (reconcile.go). The journal is written
// once, over what each family says of its own mounts (a mounter: the
// hostpath family's in attach.go, the NFS family's in nfs_node.go).

// mounter is what the journal needs to know of a family's mounts of one
// volume on this node. Its errors are the call's answer, as the family
// words it.
type mounter interface {
	// mountPoint reports whether path is a mount point; a path that does
	// not exist is not one.
	mountPoint(path string) (bool, error)
	// present reports whether what rec records is in place.
	present(ctx context.Context, rec *state.Publication) (bool, error)
	// clear undoes what is left of rec (a mount half made, or gone) before
	// it is made again.
	clear(ctx context.Context, rec *state.Publication) error
	// unmount undoes pub for good, and removes a publish target (the
	// driver made it).
	unmount(ctx context.Context, pub *state.Publication) error
	// mountFailed is the answer to a mount of pub that failed with err.
	mountFailed(pub *state.Publication, err error) error
}

// prepareMountPoint handles what is already at pub's path before mounting
// there. It reports done=true when the same mount is already in place (an
// idempotent retry: sameAs says whether the record on file asked for the
// same), clears a half-made mount a crash left, and refuses a path that is
// mounted but not by us, or mounted by us differently.
func (c *core) prepareMountPoint(ctx context.Context, m mounter, pub *state.Publication, sameAs func(*state.Publication) bool) (done bool, err error) {
	rec, err := c.store.GetPublication(pub.VolumeID, pub.Kind, pub.Path)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return false, stateError(err)
	}
	if rec == nil {
		return false, refuseForeignMount(pub.Path, pub.VolumeID, m.mountPoint)
	}
	present, err := m.present(ctx, rec)
	if err != nil {
		return false, err
	}
	if rec.Phase == state.PhaseMounted && present {
		if !sameAs(rec) {
			return false, status.Errorf(codes.AlreadyExists, "volume %s is already %sd at %s with another capability (access mode %s, read-only %v, flags %v)",
				pub.VolumeID, pub.Kind, pub.Path, rec.AccessMode, rec.ReadOnly, rec.MountFlags)
		}
		return true, nil
	}
	// A record whose mount is missing or half made: start over.
	if err := m.clear(ctx, rec); err != nil {
		return false, err
	}
	if err := c.store.DeletePublication(pub.VolumeID, pub.Kind, pub.Path); err != nil {
		return false, stateError(err)
	}
	return false, nil
}

// mountRecorded records the intent to mount, mounts, and records the result;
// a failed mount leaves neither a mount nor a record.
func (c *core) mountRecorded(m mounter, pub *state.Publication, mount func() error) error {
	pub.Phase = state.PhaseMounting
	if err := c.store.PutPublication(pub); err != nil {
		return stateError(err)
	}
	if err := mount(); err != nil {
		if derr := c.store.DeletePublication(pub.VolumeID, pub.Kind, pub.Path); derr != nil {
			klog.ErrorS(derr, "Cannot remove the record of a failed mount; start-up will", "path", pub.Path)
		}
		return m.mountFailed(pub, err)
	}
	pub.Phase = state.PhaseMounted
	if err := c.store.PutPublication(pub); err != nil {
		return stateError(err)
	}
	return nil
}

// unmountRecorded marks a publication as being removed, unmounts (a publish
// target's directory goes too: the driver made it; a staging path belongs to
// the CO and stays), and drops the record.
func (c *core) unmountRecorded(ctx context.Context, m mounter, pub *state.Publication) error {
	pub.Phase = state.PhaseUnmounting
	if err := c.store.PutPublication(pub); err != nil {
		return stateError(err)
	}
	if err := m.unmount(ctx, pub); err != nil {
		return err
	}
	if err := c.store.DeletePublication(pub.VolumeID, pub.Kind, pub.Path); err != nil {
		return stateError(err)
	}
	return nil
}

// retryPublication retries, while the driver serves, what start-up could not
// reconcile of p: under lock (the locks of a node call on the volume), the
// record is read again, since a call may have settled it meanwhile, and
// reconciled.
func (c *core) retryPublication(p *state.Publication, lock func(context.Context, string) (func(), error), reconcile func(*state.Publication) error) error {
	unlock, err := lock(context.Background(), p.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := c.store.GetPublication(p.VolumeID, p.Kind, p.Path)
	if errors.Is(err, state.ErrNotFound) {
		return nil
	}
	if err != nil || cur.Phase == state.PhaseMounted && p.Phase != state.PhaseMounted {
		return err // remounted by the kubelet meanwhile: nothing to undo
	}
	return reconcile(cur)
}

// checkSingleWriter enforces SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod):
// such a volume is published at one target at a time.
func (c *core) checkSingleWriter(id string, pub *state.Publication) error {
	single := csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER.String()
	pubs, err := c.store.PublicationsOf(id)
	if err != nil {
		return stateError(err)
	}
	for _, p := range pubs {
		if p.Kind == state.KindPublish && p.Path != pub.Path && (p.AccessMode == single || pub.AccessMode == single) {
			return status.Errorf(codes.FailedPrecondition, "volume %s is single-writer (ReadWriteOncePod) and already published at %s", id, p.Path)
		}
	}
	return nil
}

// refuseForeignMount fails when path is a mount point that no record of ours
// explains: it is someone else's, and never ours to remove.
func refuseForeignMount(path, id string, mountPoint func(string) (bool, error)) error {
	mounted, err := mountPoint(path)
	if err != nil {
		return status.Errorf(codes.Internal, "check mount point %s: %v", path, err)
	}
	if mounted {
		return status.Errorf(codes.FailedPrecondition, "%s is mounted, but not by this driver for volume %s; not touching it", path, id)
	}
	return nil
}

// removeTarget removes a publish target that no record of ours mounts (the
// driver made the directory), unless something else is mounted there.
func removeTarget(path, id string, mountPoint func(string) (bool, error)) error {
	if err := refuseForeignMount(path, id, mountPoint); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return status.Errorf(codes.Internal, "remove target path %s: %v", path, err)
	}
	return nil
}
