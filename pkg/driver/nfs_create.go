package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// The create lifecycle of an NFS volume, under its name's lock
// (createByName): a name on the export's index answered or finished
// (nfsExistingVolume), the intent recorded on the export (nfsRecordNew),
// the subdirectory claimed and made or taken over (nfsMakeEmpty), or a copy
// made from a content source (nfs_sources.go); undone on failure
// (nfsUndoCreate), and removed when nobody came back for it
// (nfsAbandonVolume).

func (d *nfsDriver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := requireName(name); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range req.GetVolumeCapabilities() {
		if err := nfsCapability(c); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	p, err := parseNFSParameters(req.GetParameters())
	if err != nil {
		return nil, err
	}
	mutable, err := parseNFSMutable(req.GetMutableParameters())
	if err != nil {
		return nil, err
	}
	if od, ok := mutable[ParamOnDelete]; ok {
		// The claim's VolumeAttributesClass over its StorageClass.
		p.onDelete = od
	}
	subDir, err := expandSubDir(p.subDirTemplate, req.GetParameters(), name)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "parameter %s: %v", ParamSubDir, err)
	}
	size, err := capacityFor(req.GetCapacityRange(), d.cfg.MaxVolumeSize)
	if err != nil {
		return nil, err
	}
	return createByName(ctx, d.core, "name", "volume", name, func(key string) (*job, *csi.CreateVolumeResponse, error) {
		return d.nfsCreate(ctx, req, p, subDir, size, key)
	}, func(j *job) (*csi.CreateVolumeResponse, error) {
		x, err := d.useExport(ctx, p.server, p.share)
		if err != nil {
			return nil, err
		}
		defer x.Release()
		v, _ := ids.ParseNFSVolumeID(j.id)
		rec, err := x.GetVolume(ctx, v.Key)
		if err != nil {
			return nil, nfsError("read the new volume's record", err)
		}
		return &csi.CreateVolumeResponse{Volume: nfsCSIVolume(rec)}, nil
	})
}

// nfsCreate is the part of CreateVolume under the name's lock (see
// createByName: the lock hostpath creates take too, so two creates of one
// name in this process never run side by side); a copy starts as a job
// under key. A name is one volume per export: the name index
// lives on the export, and a controller that moved has nothing else. The
// same name on another export, or of a hostpath volume, is not seen here
// and makes a second volume; csi-provisioner's names (pvc-<claim UID>)
// never meet that case. Checking every export would make each create
// depend on every server answering.
func (d *nfsDriver) nfsCreate(ctx context.Context, req *csi.CreateVolumeRequest, p nfsParams, subDir string, size int64, key string) (*job, *csi.CreateVolumeResponse, error) {
	name := req.GetName()
	x, err := d.useExport(ctx, p.server, p.share, classMountOptions(req.GetVolumeCapabilities())...)
	if err != nil {
		return nil, nil, err
	}
	defer x.Release()

	if rec, err := d.nfsVolumeByName(ctx, x, name); err != nil {
		return nil, nil, err
	} else if rec != nil {
		done, resp, err := d.nfsExistingVolume(ctx, x, rec, req, p)
		if done {
			return nil, resp, err
		}
	}

	unlockDir, err := d.lockSubDir(ctx, x, subDir)
	if err != nil {
		return nil, nil, err
	}
	defer unlockDir()
	who := claimantOf(name, req.GetParameters(), p)
	if _, err := d.nfsCheckSubDirFree(ctx, x, subDir, who, ""); err != nil {
		return nil, nil, err
	}

	var src *nfsSource
	if cs := req.GetVolumeContentSource(); cs != nil {
		if src, err = d.nfsLockSource(ctx, x, cs); err != nil {
			return nil, nil, err
		}
		started := false
		defer func() {
			if !started {
				src.unlock()
			}
		}()
		if size, err = sizeFor(req.GetCapacityRange(), size, src.capacity, src.capacity); err != nil {
			return nil, nil, err
		}
		if exists, err := x.DirExists(ctx, subDir); err != nil {
			return nil, nil, nfsError("look up the new volume's subdirectory", err)
		} else if exists {
			return nil, nil, status.Errorf(codes.FailedPrecondition, "subDir %q already exists on %s (data retained or archived from an earlier volume?); a restore or a clone is made into a new subdirectory: move it away or use another subDir", subDir, x.Name())
		}
		rec, recKey, err := d.nfsRecordNew(ctx, x, req, p, subDir, size, src)
		if err != nil {
			return nil, nil, err
		}
		started = true
		j := d.jobs.start(key, rec.ID, src.describe(rec.ID), []string{src.lockKey}, func(jctx context.Context) error {
			defer src.unlock()
			return d.nfsCopyIntoVolume(jctx, p, rec, recKey, src)
		}, d.nfsAbandonVolume)
		return j, nil, nil
	}

	rec, recKey, err := d.nfsRecordNew(ctx, x, req, p, subDir, size, nil)
	if err != nil {
		return nil, nil, err
	}
	if err := d.nfsMakeEmpty(ctx, x, rec, recKey, p); err != nil {
		if c := status.Code(err); c == codes.AlreadyExists || c == codes.FailedPrecondition {
			// Another controller claimed a subDir around or inside this
			// one meanwhile, or the subdirectory is not this volume's to
			// take: nothing was made; forget the attempt.
			if uerr := d.nfsUndoCreate(ctx, x, rec, recKey); uerr != nil {
				klog.ErrorS(uerr, "Rolling back a volume whose subdirectory is taken; a retry of the name or the sweep finishes it", "volumeID", rec.ID)
			}
		}
		return nil, nil, err
	}
	return nil, &csi.CreateVolumeResponse{Volume: nfsCSIVolume(rec)}, nil
}

// classMountOptions are a StorageClass's mountOptions, which reach
// CreateVolume as the mount flags of its capabilities.
func classMountOptions(caps []*csi.VolumeCapability) []string {
	for _, c := range caps {
		if f := c.GetMount().GetMountFlags(); len(f) > 0 {
			return f
		}
	}
	return nil
}

// nfsVolumeByName returns the record the export's name index points at, or
// nil.
func (d *nfsDriver) nfsVolumeByName(ctx context.Context, x *nfs.Export, name string) (*nfs.VolumeRecord, error) {
	id, err := x.LookupName(ctx, nfs.KindVolume, name)
	if errors.Is(err, nfs.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, nfsError("look up volume name", err)
	}
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "name index on %s for %q holds a bad ID: %v", x.Name(), name, err)
	}
	rec, err := x.GetVolume(ctx, v.Key)
	if errors.Is(err, nfs.ErrNotFound) {
		return nil, nil // an index entry whose create died before its record
	}
	if err != nil {
		return nil, nfsError("read volume record", err)
	}
	if rec.ID != id {
		// An entry whose create found its key taken (ErrExists): the
		// record is another volume's.
		return nil, nil
	}
	return rec, nil
}

// nfsExistingVolume answers a create whose name is on record: the same
// volume if the request matches (finishing an interrupted empty create),
// ALREADY_EXISTS if not. done=false means the record was an interrupted
// copy, now undone: the caller makes the volume anew.
func (d *nfsDriver) nfsExistingVolume(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, req *csi.CreateVolumeRequest, p nfsParams) (bool, *csi.CreateVolumeResponse, error) {
	v, _ := ids.ParseNFSVolumeID(rec.ID)
	if rec.Phase == nfs.PhaseDeleting {
		return true, nil, status.Errorf(codes.Aborted, "volume %s with name %q is being deleted; retry", rec.ID, rec.Name)
	}
	if rec.Phase == nfs.PhaseCreating && (rec.SourceSnapshotID != "" || rec.SourceVolumeID != "") {
		// A copy that no job runs (cut short by a kill, here or in
		// another controller): nobody was told of it. Undo, start over.
		if err := d.nfsUndoCreate(ctx, x, rec, v.Key); err != nil {
			return true, nil, err
		}
		klog.InfoS("Rolled back an NFS volume copy that was interrupted", "volumeID", rec.ID, "name", rec.Name)
		return false, nil, nil
	}
	req0, lim := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	switch {
	case rec.CapacityBytes < req0 || (lim > 0 && rec.CapacityBytes > lim):
		asked := fmt.Sprintf("at least %d bytes", req0)
		if lim > 0 {
			asked = fmt.Sprintf("%d to %d bytes", req0, lim)
		}
		return true, nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with %d bytes; this request asks for %s", rec.Name, rec.CapacityBytes, asked)
	case !maps.Equal(rec.Parameters, req.GetParameters()):
		return true, nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with other parameters", rec.Name)
	case rec.SourceSnapshotID != req.GetVolumeContentSource().GetSnapshot().GetSnapshotId() ||
		rec.SourceVolumeID != req.GetVolumeContentSource().GetVolume().GetVolumeId():
		return true, nil, status.Errorf(codes.AlreadyExists, "volume %q already exists with other content (snapshot %q, volume %q)", rec.Name, rec.SourceSnapshotID, rec.SourceVolumeID)
	}
	if _, asked := req.GetMutableParameters()[ParamOnDelete]; asked && rec.OnDelete != p.onDelete {
		// A retry whose VolumeAttributesClass changed meanwhile: what is
		// mutable is made so, as ControllerModifyVolume would, rather than
		// answering OK with the old value (or ALREADY_EXISTS, which would
		// leave the claim pending for good).
		rec.OnDelete = p.onDelete
		if err := x.PutVolume(ctx, rec, v.Key); err != nil {
			return true, nil, nfsError("write volume record", err)
		}
	}
	if rec.Phase == nfs.PhaseCreating {
		// An empty create cut short: finish it (roll forward), unless its
		// claim on the subdirectory never got written and another volume
		// took the subdirectory (or one around or below it) meanwhile.
		unlockDir, err := d.lockSubDir(ctx, x, rec.SubDir)
		if err != nil {
			return true, nil, err
		}
		defer unlockDir()
		if _, err := d.nfsCheckSubDirFree(ctx, x, rec.SubDir, claimantOf(rec.Name, rec.Parameters, p), rec.ID); err != nil {
			return true, nil, err
		}
		if err := d.nfsMakeEmpty(ctx, x, rec, v.Key, p); err != nil {
			if c := status.Code(err); c == codes.AlreadyExists || c == codes.FailedPrecondition {
				// The subdirectory is not this volume's to take (an
				// older driver's create, which would have taken any):
				// forget the attempt; the next retry says why again.
				if uerr := d.nfsUndoCreate(ctx, x, rec, v.Key); uerr != nil {
					klog.ErrorS(uerr, "Rolling back a volume whose subdirectory is not its own; a retry of the name or the sweep finishes it", "volumeID", rec.ID)
				}
			}
			return true, nil, err
		}
		klog.InfoS("Finished an NFS volume create that was interrupted", "volumeID", rec.ID, "name", rec.Name)
	}
	return true, &csi.CreateVolumeResponse{Volume: nfsCSIVolume(rec)}, nil
}

// nfsRecordNew records the intent to make a volume on the export: its name,
// its record in phase creating, its claim on the subdirectory. A kill after
// this is finished or rolled back by the next create of the name.
func (d *nfsDriver) nfsRecordNew(ctx context.Context, x *nfs.Export, req *csi.CreateVolumeRequest, p nfsParams, subDir string, size int64, src *nfsSource) (*nfs.VolumeRecord, string, error) {
	id, recKey, err := drawUnusedKey(ctx, "volume", func() (string, string, error) {
		id, v, err := ids.NewNFSVolumeID(p.server, p.share, subDir)
		if err != nil {
			return "", "", status.Errorf(codes.InvalidArgument, "%v", err)
		}
		return id, v.Key, nil
	}, func(ctx context.Context, key string) error {
		_, err := x.GetVolume(ctx, key)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	warnLongID("volume", id)
	rec := &nfs.VolumeRecord{ID: id, Name: req.GetName(), Parameters: req.GetParameters(), SubDir: subDir, CapacityBytes: size,
		OnDelete: p.onDelete, Phase: nfs.PhaseCreating, CreatedAt: time.Now().UTC(), Exclusive: true}
	if p.mode != nil {
		rec.Mode = modeString(*p.mode)
	}
	if src != nil {
		rec.SourceSnapshotID, rec.SourceVolumeID = src.snapshotID, src.volumeID
	}
	if err := x.PutName(ctx, nfs.KindVolume, rec.Name, id); err != nil {
		return nil, "", nfsError("record the volume's name", err)
	}
	if err := x.CreateVolume(ctx, rec, recKey); err != nil {
		return nil, "", nfsError("record the new volume", err)
	}
	if src != nil {
		// An empty volume's claim is written by nfsMakeEmpty.
		if err := d.nfsClaimSubDir(ctx, x, rec, claimantOf(rec.Name, rec.Parameters, p)); err != nil {
			if uerr := d.nfsUndoCreate(ctx, x, rec, recKey); uerr != nil {
				klog.ErrorS(uerr, "Rolling back a volume whose subdirectory is taken; a retry of the name or the sweep finishes it", "volumeID", rec.ID)
			}
			return nil, "", err
		}
	}
	return rec, recKey, nil
}

// nfsMakeEmpty creates the subdirectory (or takes over the data retained
// there for this claim) and records the volume as ready. A directory there
// that is neither is refused (FAILED_PRECONDITION): it is someone else's.
func (d *nfsDriver) nfsMakeEmpty(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, recKey string, p nfsParams) error {
	// Again when finishing a create a kill cut short before its claim on
	// the subdirectory was written.
	if err := d.nfsClaimSubDir(ctx, x, rec, claimantOf(rec.Name, rec.Parameters, p)); err != nil {
		return err
	}
	adopted := false
	switch {
	case rec.TakesOver != nil:
		if err := d.nfsCheckNoShareInside(ctx, x, rec, "take over the data retained in the volume's subdirectory"); err != nil {
			return err
		}
		var err error
		if adopted, err = x.TakeOverDir(ctx, rec.SubDir, p.mode); err != nil {
			return nfsDirError(x, "take over the data retained in the volume's subdirectory", rec.SubDir, err)
		}
		if adopted {
			klog.InfoS("NFS volume takes over the data retained for its claim", "volumeID", rec.ID, "export", x.Name(), "subDir", rec.SubDir,
				"retainedFrom", rec.TakesOver.ID, "claim", rec.TakesOver.RetainedFor.String())
		}
	case rec.MakingDir || !rec.Exclusive:
		// The driver was making it (a kill after the mkdir leaves it
		// empty), or an older driver's create is finished: either takes
		// the directory only if it is empty.
		if err := x.MakeNewDir(ctx, rec.SubDir, p.mode); err != nil {
			return nfsDirError(x, "create the volume's subdirectory", rec.SubDir, err)
		}
	default:
		// Record, before the mkdir, that the directory is the driver's
		// to make: a retry after a kill takes the directory it finds as
		// its own, applies mountPermissions, and never takes it for
		// someone else's.
		exists, err := x.DirExists(ctx, rec.SubDir)
		if err != nil {
			return nfsError("look up the volume's subdirectory", err)
		}
		wasParent := false
		if exists {
			// Only an empty parent the driver's volumes left (volumes of
			// a deeper template, since deleted) is taken: no one's data.
			if was, err := x.WasParent(ctx, rec.SubDir); err != nil {
				return nfsError("read subdirectory index", err)
			} else if was {
				exists, wasParent = false, true
			}
		}
		if exists {
			err := fmt.Errorf("%s on %s: %w", rec.SubDir, x.Name(), nfs.ErrNotOurs)
			if share, serr := x.HoldsShareRecords(ctx, rec.SubDir); serr == nil && share {
				err = fmt.Errorf("%s on %s %w", rec.SubDir, x.Name(), nfs.ErrHoldsShare)
			}
			return nfsDirError(x, "create the volume's subdirectory", rec.SubDir, err)
		}
		rec.MakingDir = true
		if err := x.PutVolume(ctx, rec, recKey); err != nil {
			return nfsError("record the volume's subdirectory as being made", err)
		}
		mkdir := x.MakeOwnDir // not there a moment ago: one there now is someone else's
		if wasParent {
			mkdir = x.MakeNewDir
		}
		if err := mkdir(ctx, rec.SubDir, p.mode); err != nil {
			return nfsDirError(x, "create the volume's subdirectory", rec.SubDir, err)
		}
	}
	rec.Adopted, rec.Phase = adopted, nfs.PhaseReady
	if err := x.PutVolume(ctx, rec, recKey); err != nil {
		return nfsError("record the volume as ready", err)
	}
	klog.V(2).InfoS("NFS volume created", "volumeID", rec.ID, "name", rec.Name, "export", x.Name(), "subDir", rec.SubDir)
	return nil
}

// nfsUndoCreate removes a volume that was never made ready: its partial
// copy, its subdirectory if the copy reached it, its record.
func (d *nfsDriver) nfsUndoCreate(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, recKey string) error {
	if err := x.RemovePartial(ctx, recKey); err != nil {
		return nfsError("remove a partial copy", err)
	}
	if !rec.Adopted && (rec.SourceSnapshotID != "" || rec.SourceVolumeID != "") {
		if owner, err := x.SubDirOwner(ctx, rec.SubDir); err == nil && owner == rec.ID {
			if err := x.RemoveDir(ctx, rec.SubDir, "v-"+recKey); err != nil {
				return nfsError("remove an unfinished copy", err)
			}
		}
	}
	forget := x.DeleteVolume
	if rec.TakesOver != nil {
		forget = x.GiveBackRetained // the data stays retained, and guarded
	}
	if err := forget(ctx, rec, recKey); err != nil {
		return nfsError("remove the record of an unfinished volume", err)
	}
	return nil
}

// nfsAbandonVolume removes a restore or clone nobody came back for.
func (d *nfsDriver) nfsAbandonVolume(j *job) {
	v, err := ids.ParseNFSVolumeID(j.id)
	if err != nil {
		return
	}
	ctx := context.Background()
	x, err := d.exports.Use(ctx, v.Server, v.Share)
	if err != nil {
		return
	}
	defer x.Release()
	rec, err := x.GetVolume(ctx, v.Key)
	if err != nil {
		return
	}
	unlock, err := d.lock(ctx, "name", rec.Name)
	if err != nil {
		return
	}
	defer unlock()
	if !d.jobs.stillUncollected(j) || d.jobs.reading("vol/"+j.id) != nil {
		return
	}
	if err := d.nfsRemoveVolume(ctx, x, rec, v.Key, OnDeleteDelete); err != nil {
		klog.ErrorS(err, "Cannot remove an NFS volume whose caller never came back for it", "volumeID", j.id)
		return
	}
	klog.InfoS("Removed an NFS volume whose caller never came back for it", "volumeID", j.id, "name", rec.Name)
}

// modeString is m as an octal mode, setuid, setgid and sticky included.
func modeString(m os.FileMode) string {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return fmt.Sprintf("%04o", u)
}
