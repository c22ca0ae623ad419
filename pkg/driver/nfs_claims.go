package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// Claims on subdirectories of an export. A volume owns its subdirectory
// through an entry of the export's index (package nfs: subdirs/ and
// nested/), written before the directory is made; a create takes a
// directory only if it made it itself (its record says so) or if it is
// data retained, by onDelete: retain, for the very claim asking (see
// mayTake). Anything else already there (another share's root, data put
// there by hand, retained data of another claim) is refused.

// claimant is who asks for a subdirectory: the claim (from the
// provisioner's metadata and the CSI name) and what its class allows it to
// take of retained data.
type claimant struct {
	name string // the CSI name, the volume's name on the export
	ref  nfs.ClaimRef
	// retainedDataTo is the class's parameter.
	retainedDataTo string
}

func claimantOf(name string, params map[string]string, p nfsParams) claimant {
	return claimant{name: name, ref: claimRefOf(name, params), retainedDataTo: p.retainedDataTo}
}

// claimRefOf is the claim a volume of this name and these parameters
// is made for: the PVC's namespace and name as csi-provisioner passes them
// (--extra-create-metadata), and the CSI name, which csi-provisioner makes
// from the PVC's UID (pvc-<uid>): it passes no UID itself.
func claimRefOf(name string, params map[string]string) nfs.ClaimRef {
	return nfs.ClaimRef{Namespace: params[ParamPVCNamespace], Name: params[ParamPVCName], PV: name}
}

// mayTake says why w may not take over data retained for c, or "" if it
// may. Data retained for a namespace is never handed to another namespace;
// within one, the class's retainedDataTo decides.
func (w claimant) mayTake(c nfs.SubDirClaim) string {
	o := c.RetainedFor
	switch {
	case !o.Known():
		return "it was retained by an earlier version of the driver, which did not record the claim it was retained for; such data is handed to no claim"
	case o.Namespace != w.ref.Namespace:
		return "it was retained for a claim of another namespace, and data of one namespace is never handed to a claim of another"
	}
	switch w.retainedDataTo {
	case RetainedToNone:
		return fmt.Sprintf("it was retained for claim %s, and the class says %s: %s", o, ParamRetainedDataTo, RetainedToNone)
	case RetainedToSameNamespace:
		if o.Namespace == "" {
			return fmt.Sprintf("it was retained for %s, made without the provisioner's namespace (run csi-provisioner with --extra-create-metadata), and %s: %s needs one", o, ParamRetainedDataTo, RetainedToSameNamespace)
		}
		return ""
	}
	if o.Namespace != "" || o.Name != "" {
		if o.Name == w.ref.Name {
			return ""
		}
	} else if o.PV == w.name {
		return ""
	}
	return fmt.Sprintf("it was retained for claim %s, and the class hands retained data only to the same claim (%s: %s; %s: %s gives it to any claim of the namespace)",
		o, ParamRetainedDataTo, RetainedToSameClaim, ParamRetainedDataTo, RetainedToSameNamespace)
}

// lockSubDir takes the lock of subDir on x's export, and a shared lock of
// each directory above it: creates of one subdirectory, or of one inside
// another, run one at a time; creates in sibling directories do not wait
// for each other.
func (d *nfsDriver) lockSubDir(ctx context.Context, x *nfs.Export, subDir string) (func(), error) {
	var unlocks []func()
	unlockAll := func() {
		for i := len(unlocks) - 1; i >= 0; i-- {
			unlocks[i]()
		}
	}
	parts := strings.Split(subDir, "/")
	for i := 1; i <= len(parts); i++ {
		key := x.Name() + "/" + strings.Join(parts[:i], "/")
		lock := d.rlock
		if i == len(parts) {
			lock = d.lock
		}
		unlock, err := lock(ctx, "nfsdir", key)
		if err != nil {
			unlockAll()
			return nil, err
		}
		unlocks = append(unlocks, unlock)
	}
	return unlockAll, nil
}

// nfsCheckSubDirFree refuses a subdirectory that another live volume owns,
// or that is inside or holds another live volume's subdirectory: a volume
// would see the other's data, and its delete or archive would take it.
// self is the ID of the volume asking (a create being finished), "" for a
// new one; a claim on subDir itself by a volume of the same name is that
// name's earlier attempt. Retained data of subDir itself is refused unless
// it was retained for who (mayTake); when it is, its claim is returned:
// the create takes that data over.
func (d *nfsDriver) nfsCheckSubDirFree(ctx context.Context, x *nfs.Export, subDir string, who claimant, self string) (*nfs.SubDirClaim, error) {
	claims, err := x.SubDirClaims(ctx, subDir)
	if err != nil {
		return nil, nfsError("read subdirectory index", err)
	}
	var handover *nfs.SubDirClaim
	for _, c := range claims {
		if c.ID == self {
			continue
		}
		ov, err := ids.ParseNFSVolumeID(c.ID)
		if err != nil {
			continue // a corrupt entry: a new claim replaces it
		}
		orec, err := x.GetVolume(ctx, ov.Key)
		if errors.Is(err, nfs.ErrNotFound) || (err == nil && orec.ID != c.ID) {
			if !c.Retained {
				continue // its volume is gone
			}
			here, err := d.nfsCheckRetained(ctx, x, subDir, c, who)
			if err != nil {
				return nil, err
			}
			if here {
				c := c
				handover = &c
			}
			continue
		}
		if err != nil {
			return nil, nfsError("read volume record", err)
		}
		// The other volume may be another namespace's: its ID, name and
		// subDir go to the log, not into an answer that reaches this
		// claim's events.
		var why string
		switch {
		case orec.SubDir == subDir:
			if orec.Name == who.name {
				continue
			}
			why = fmt.Sprintf("subDir %q on %s already belongs to another volume: two claims map to one subdirectory; make the StorageClass's subDir template unique (for instance ${pvc.metadata.namespace}/${pvc.metadata.name})",
				subDir, x.Name())
		case strings.HasPrefix(orec.SubDir, subDir+"/"):
			why = fmt.Sprintf("subDir %q on %s holds the subdirectory of another volume: a volume there would see and delete that volume's data; use a subDir template that cannot name another class's directories (StorageClasses on one export with templates of different depths collide)",
				subDir, x.Name())
		case strings.HasPrefix(subDir, orec.SubDir+"/"):
			why = fmt.Sprintf("subDir %q on %s is inside the subdirectory of another volume, whose pods could read and remove it; use a subDir template that cannot name another class's directories (StorageClasses on one export with templates of different depths collide)",
				subDir, x.Name())
		default:
			continue
		}
		klog.InfoS("Refusing an NFS subdirectory another volume holds", "export", x.Name(), "subDir", subDir, "otherVolumeID", orec.ID, "otherName", orec.Name, "otherSubDir", orec.SubDir)
		return nil, status.Error(codes.FailedPrecondition, why)
	}
	return handover, nil
}

// nfsCheckRetained decides on the retained data of a deleted volume (claim
// c, on subDir, around or inside it) for a create of subDir by who: data
// still there around or inside subDir is refused (a volume there would give
// its pods that data, and its delete would remove it); data of subDir
// itself is refused unless it was retained for who, and then here is true.
// Data removed by hand leaves a stale claim, which the create replaces.
func (d *nfsDriver) nfsCheckRetained(ctx context.Context, x *nfs.Export, subDir string, c nfs.SubDirClaim, who claimant) (here bool, err error) {
	exists, err := x.DirExists(ctx, c.SubDir)
	if err != nil {
		return false, nfsError("look up retained data", err)
	}
	if !exists {
		return false, nil
	}
	if c.SubDir == subDir {
		if why := who.mayTake(c); why != "" {
			klog.InfoS("Refusing NFS retained data to a claim", "export", x.Name(), "subDir", subDir, "retainedFrom", c.ID, "retainedFor", c.RetainedFor.String(), "claim", who.ref.String())
			return false, status.Errorf(codes.FailedPrecondition, "subDir %q on %s holds data retained from a deleted volume (onDelete: retain), which is not handed to this claim (%s): %s; use a subDir template that keeps claims apart (for instance ${pvc.metadata.namespace}/${pvc.metadata.name}), or have an administrator move the retained data away",
				subDir, x.Name(), who.ref, why)
		}
		return true, nil
	}
	how := "holds"
	if strings.HasPrefix(subDir, c.SubDir+"/") {
		how = "is inside"
	}
	klog.InfoS("Refusing an NFS subdirectory around or inside retained data", "export", x.Name(), "subDir", subDir, "retainedSubDir", c.SubDir, "retainedFrom", c.ID)
	return false, status.Errorf(codes.FailedPrecondition, "subDir %q on %s %s data retained (onDelete: retain) from a deleted volume: a volume there would see and delete that data; use another subDir, or have an administrator move the retained data away",
		subDir, x.Name(), how)
}

// nfsClaimSubDir claims rec's subdirectory, then reads the claims around
// it: the in-process locks do not reach another controller on the same
// export (a second StorageClass's controller, the old pod of a moved
// Deployment), so a check made before claiming could let both of two
// nested (or identical) subDirs through. Claim first, without replacing
// another volume's claim, then check: of two controllers at once, the one
// whose check comes last sees the other's claim, withdraws its own and
// answers FAILED_PRECONDITION (both may, in a close race: the CO retries).
//
// A claim of retained data handed to who is replaced only after rec
// records it takes that data over (TakesOver): a retry after a kill then
// knows the directory is its own, and a rollback gives the claim back.
func (d *nfsDriver) nfsClaimSubDir(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, who claimant) error {
	taken, err := x.ClaimSubDir(ctx, rec.SubDir, rec.ID)
	if errors.Is(err, nfs.ErrExists) && taken != nil {
		// subDir's entry is another volume's: refused if that volume
		// lives, replaced if it is gone (or its retained data is handed
		// to this claim).
		handover, cerr := d.nfsCheckSubDirFree(ctx, x, rec.SubDir, who, rec.ID)
		if cerr != nil {
			return cerr
		}
		if handover != nil && handover.ID == taken.ID && rec.TakesOver == nil {
			rec.TakesOver = handover
			v, _ := ids.ParseNFSVolumeID(rec.ID)
			if err := x.PutVolume(ctx, rec, v.Key); err != nil {
				return nfsError("record that the volume takes retained data over", err)
			}
		}
		err = x.PutSubDirOwner(ctx, rec.SubDir, rec.ID)
	}
	if err != nil {
		return nfsError("record the volume's subdirectory", err)
	}
	if _, err := d.nfsCheckSubDirFree(ctx, x, rec.SubDir, who, rec.ID); err != nil {
		if derr := x.DropSubDirClaim(context.Background(), rec.SubDir, rec.ID); derr != nil {
			klog.ErrorS(derr, "Cannot withdraw a subdirectory claim that conflicts with another volume's", "volumeID", rec.ID, "subDir", rec.SubDir)
		}
		return err
	}
	return nil
}

// nfsCheckNoShareInside refuses rec's tree if it holds another share's
// records (nfs.ErrHoldsShare), or cannot be looked through
// (nfs.ErrCannotLook): before a delete, an archive or a takeover of
// retained data. The walk reads every entry of a tenant's tree, which on a
// large volume takes longer than a sidecar waits for a call (10 s by
// default): it runs detached, as a copy does, so that it is not started
// over at each retry; a retry while it runs is ABORTED, and the first one
// after it gets its result. Walks take slots of their own, one per
// namespace at a time (lookpool.go), never the copies'.
//
// A refusal (FAILED_PRECONDITION) stays the answer for nfsLookBackoff: the
// provisioner retries a delete for ever, and each retry must not walk the
// whole tree again; what it takes to lift the refusal (an administrator
// moving a share away, a tenant's chmod) is seen within that time.
func (d *nfsDriver) nfsCheckNoShareInside(ctx context.Context, x *nfs.Export, rec *nfs.VolumeRecord, what string) error {
	j, err := d.nfsStartLook(x, rec, what)
	if j == nil {
		return err
	}
	err = d.jobs.await(ctx, j)
	if status.Code(err) == codes.FailedPrecondition && d.jobs.get(j.key) == nil {
		d.jobs.remember(j) // await collected it: kept for the backoff
	}
	return err
}

// nfsStartLook starts the look inside rec's tree, or finds it running, and
// returns it; or, with no job, the answer of one that ended: a refusal
// still within its backoff, or a result nobody collected yet.
func (d *nfsDriver) nfsStartLook(x *nfs.Export, rec *nfs.VolumeRecord, what string) (*job, error) {
	key := "nfs-inside/" + rec.ID
	if j := d.jobs.get(key); j != nil {
		if !j.finished() {
			return j, nil
		}
		if status.Code(j.err) == codes.FailedPrecondition && time.Since(j.ended) < d.jobs.lookBackoff {
			return nil, status.Errorf(codes.FailedPrecondition, "%s (found by a look %s ago; the tree is looked at again %s after that look)",
				status.Convert(j.err).Message(), time.Since(j.ended).Round(time.Second), d.jobs.lookBackoff)
		}
		d.jobs.forget(j)
		if status.Code(j.err) != codes.FailedPrecondition {
			return nil, j.err
		}
	}
	server, share, subDir := x.Server(), x.Share(), rec.SubDir
	owner := rec.Parameters[ParamPVCNamespace]
	if owner == "" {
		owner = "export " + x.Name() // no namespace known: the export's volumes share one turn
	}
	slot := func(ctx context.Context) (func(), error) { return d.jobs.looks.acquire(ctx, owner) }
	return d.jobs.startIn(slot, key, "nfs-inside:"+rec.ID, "the look for another share inside volume "+rec.ID, nil, func(jctx context.Context) error {
		jx, err := d.useExport(jctx, server, share)
		if err != nil {
			return err
		}
		defer jx.Release()
		if err := jx.CheckNoShareInside(jctx, subDir); err != nil {
			return nfsDirError(jx, what, subDir, err)
		}
		return nil
	}, nil), nil
}

// nfsLookBackoff is how long a look that refused a tree stays the answer
// to the retries of its call (jobs.lookBackoff; shorter in tests).
const nfsLookBackoff = 2 * time.Minute

// nfsDirError is the answer to a subdirectory a create may not take, or to
// a tree a delete may not touch.
func nfsDirError(x *nfs.Export, what, subDir string, err error) error {
	switch {
	case errors.Is(err, nfs.ErrHoldsShare):
		return status.Errorf(codes.FailedPrecondition, "%s: %v; the driver neither takes such a tree into a volume, nor archives, nor deletes it: another StorageClass's share lies there (move its volumes away, or remove the %s directory if a tenant made it), or use a subDir that does not reach it",
			what, err, ids.HiddenDir)
	case errors.Is(err, nfs.ErrCannotLook):
		return status.Errorf(codes.FailedPrecondition, "%s: %v (permission denied: the export squashes root, and the volume's tenant made this directory unreadable to others); the driver neither deletes, nor archives, nor takes over a tree it cannot look through for another share's records: make the directory readable and searchable by others (chmod o+rx) from a pod of the volume, or export the share to the controller's node with no_root_squash, or remove the directory on the server",
			what, err)
	case errors.Is(err, nfs.ErrNotOurs):
		return status.Errorf(codes.FailedPrecondition, "%s: %v; a volume is made only in a subdirectory the driver creates for it, or in data retained (onDelete: retain) for the same claim: whatever is in %s on %s was put there otherwise (by hand, by another StorageClass or server name on the same export, by an older driver); move it away, or use a subDir template that does not name it",
			what, err, subDir, x.Name())
	}
	return nfsError(what, err)
}
