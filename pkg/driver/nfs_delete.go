package driver

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

func (d *nfsDriver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		klog.V(2).InfoS("DeleteVolume of an NFS ID this driver never made; nothing to do", "volumeID", id, "err", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	unlock, err := d.lockForDelete(ctx, "vol", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	x, err := d.useExport(ctx, v.Server, v.Share)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	rec, err := x.GetVolume(ctx, v.Key)
	if errors.Is(err, nfs.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, nfsError("read volume record", err)
	}
	if rec.ID != id {
		return nil, status.Errorf(codes.Internal, "record %s on %s is of volume %s, not %s", v.Key, x.Name(), rec.ID, id)
	}
	if err := d.nfsRemoveVolume(ctx, x, rec, v.Key, rec.OnDelete); err != nil {
		return nil, err
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// nfsRemoveVolume applies onDelete to a volume's subdirectory and forgets
// the volume: intent (phase deleting) first, so that a kill half way is
// finished by the CO's retry. A tree that holds another share's records
// (.hostpath-csi) is neither archived nor deleted: FAILED_PRECONDITION,
// and the volume is left as it was.
func (d *nfsDriver) nfsRemoveVolume(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, key, onDelete string) error {
	owner, err := x.SubDirOwner(ctx, rec.SubDir)
	if err != nil && !errors.Is(err, nfs.ErrNotFound) {
		return nfsError("read subdirectory index", err)
	}
	mine := owner == "" || owner == rec.ID
	if mine && onDelete != OnDeleteRetain {
		if err := d.nfsCheckNoClaimBelow(ctx, x, rec); err != nil {
			return err
		}
		if err := d.nfsCheckNoShareInside(ctx, x, rec, nfsDeleteWhat(rec)); err != nil {
			return err
		}
	}
	if rec.Phase != nfs.PhaseDeleting {
		rec.Phase = nfs.PhaseDeleting
		if err := x.PutVolume(ctx, rec, key); err != nil {
			return nfsError("record the delete", err)
		}
	}
	if err := x.RemovePartial(ctx, key); err != nil {
		return nfsError("remove a partial copy", err)
	}
	switch {
	case !mine:
		klog.InfoS("NFS volume's subdirectory belongs to another volume now; leaving it", "volumeID", rec.ID, "subDir", rec.SubDir, "owner", owner)
	case onDelete == OnDeleteRetain:
		klog.InfoS("NFS volume deleted; its data is retained (onDelete: retain)", "volumeID", rec.ID, "export", x.Name(), "subDir", rec.SubDir,
			"retainedFor", claimRefOf(rec.Name, rec.Parameters).String())
	case onDelete == OnDeleteArchive:
		to, err := x.ArchiveDir(ctx, rec.SubDir, time.Now())
		if err != nil {
			return nfsError("archive the volume's subdirectory", err)
		}
		klog.InfoS("NFS volume deleted; its data is archived (onDelete: archive)", "volumeID", rec.ID, "export", x.Name(), "archivedAs", to)
	default:
		if err := x.RemoveDir(ctx, rec.SubDir, "v-"+key); err != nil {
			return nfsError("remove the volume's subdirectory", err)
		}
	}
	if mine && onDelete == OnDeleteRetain {
		err = x.RetainVolume(ctx, rec, key, claimRefOf(rec.Name, rec.Parameters))
	} else {
		err = x.DeleteVolume(ctx, rec, key)
	}
	if err != nil {
		return nfsError("remove the volume's record", err)
	}
	klog.V(2).InfoS("NFS volume deleted", "volumeID", rec.ID, "name", rec.Name, "onDelete", onDelete)
	return nil
}

// nfsCheckNoClaimBelow refuses to delete or archive rec's subdirectory
// while it holds another volume's subdirectory, live or retained: a
// record never holds one (creates refuse nested subDirs both ways), unless
// it was not written by the driver (a tenant's, planted in its own data
// and found by a sweep).
func (d *nfsDriver) nfsCheckNoClaimBelow(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord) error {
	claims, err := x.SubDirClaims(ctx, rec.SubDir)
	if err != nil {
		return nfsError("read subdirectory index", err)
	}
	for _, c := range claims {
		if c.ID == rec.ID || !strings.HasPrefix(c.SubDir, rec.SubDir+"/") {
			continue
		}
		held := false
		if c.Retained {
			exists, err := x.DirExists(ctx, c.SubDir)
			if err != nil {
				return nfsError("look up retained data", err)
			}
			held = exists
		} else if ov, err := ids.ParseNFSVolumeID(c.ID); err == nil {
			orec, err := x.GetVolume(ctx, ov.Key)
			if err != nil && !errors.Is(err, nfs.ErrNotFound) {
				return nfsError("read volume record", err)
			}
			held = err == nil && orec.ID == c.ID
		}
		if held {
			klog.ErrorS(nil, "Refusing to remove an NFS volume's subdirectory: it holds another volume's", "volumeID", rec.ID, "subDir", rec.SubDir,
				"export", x.Name(), "holds", c.SubDir, "of", c.ID, "retained", c.Retained)
			return status.Errorf(codes.FailedPrecondition, "delete volume %s: its subDir %q on %s holds the subdirectory of another volume (or data retained from one), which the driver never makes: the record was not written by the driver; it is left as it is (details in the controller's log); an administrator removes the record %s.json from %s/volumes on the server",
				rec.ID, rec.SubDir, x.Name(), mustKey(rec.ID), ids.HiddenDir)
		}
	}
	return nil
}

func mustKey(id string) string {
	v, _ := ids.ParseNFSVolumeID(id)
	return v.Key
}

// nfsDeleteWhat names a delete in the look before it.
func nfsDeleteWhat(rec *nfs.VolumeRecord) string { return "delete volume " + rec.ID }
