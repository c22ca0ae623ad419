package hostpath

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
)

// Copies across nodes: a volume received from another node's driver, and
// the point-in-time copy of a volume this node sends to one.

// ReceiveVolume makes volume id from what fill writes into an empty
// directory (a subvolume on btrfs, as every new volume here): in partial/,
// moved into volumes/ only once fill succeeded and everything it wrote is
// on disk, as a local copy is. On error nothing of it is left.
func (b *Backend) ReceiveVolume(ctx context.Context, id string, fill func(dst *beneath.Dir) error) error {
	tmp := filepath.Join(b.partial, id)
	if err := b.remove(tmp); err != nil { // a previous attempt's leftovers
		return err
	}
	err := b.receiveInto(tmp, fill)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = b.syncFS(tmp)
	}
	dst := b.Path(id)
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err == nil {
		err = b.syncDirs(filepath.Dir(dst), b.partial)
	}
	if err != nil {
		if rmErr := b.remove(tmp); rmErr != nil {
			klog.ErrorS(rmErr, "Cannot remove a failed receive; it is removed at the next start", "path", tmp)
		}
		return fmt.Errorf("receive volume %s: %w", id, err)
	}
	return nil
}

func (b *Backend) receiveInto(tmp string, fill func(dst *beneath.Dir) error) error {
	if b.btrfs {
		if err := btrfs.CreateSubvolume(tmp); err != nil {
			return fmt.Errorf("create the receiving subvolume: %w", err)
		}
	} else if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("create the receiving directory: %w", err)
	}
	dir, err := beneath.OpenRoot(tmp)
	if err != nil {
		return err
	}
	defer dir.Close()
	return fill(dir)
}

// PointInTimeCopy copies volume id, frozen as Snapshot freezes it, into a
// directory of partial/ for a peer or an NFS export to read while the
// volume goes on changing (the freeze lasts only for this copy); release
// removes it. A kill before release leaves it to the
// next start's emptying of partial/.
func (b *Backend) PointInTimeCopy(ctx context.Context, id string, freeze []string) (dir string, release func(), err error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", nil, err
	}
	dir = filepath.Join(b.partial, "send-"+id+"-"+hex.EncodeToString(r[:]))
	err = imagefs.WithFrozen(b.freezeMarkers, freeze, func() error {
		_, err := b.copyTree(ctx, b.Path(id), dir)
		return err
	})
	release = func() {
		if err := b.remove(dir); err != nil && !errors.Is(err, unix.ENOENT) {
			klog.ErrorS(err, "Cannot remove a sent copy; it is removed at the next start", "path", dir)
		}
	}
	if err != nil {
		release()
		return "", nil, fmt.Errorf("copy volume %s to send: %w", id, err)
	}
	return dir, release, nil
}
