package nfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// ErrInsideVolume: a share lies inside a volume (or data retained from
// one) of another share above it on the same server. The driver does not
// work there: that volume's pods could read and change the share's
// records and every volume in it.
var ErrInsideVolume = errors.New("the share lies inside a volume of another share on the same server")

// probePrefix starts the names of the mount points where the exports
// above a share are looked at.
const probePrefix = "probe-"

// checkEnclosing refuses e's share if it lies inside a volume claimed on
// an export above it on the same server (class B with share /export/team
// while /export/team is a volume of class A, whose share is /export). Each
// proper ancestor of the share is mounted aside, read-only in effect
// (nothing is written there), and its .hostpath-csi subdirectory index read
// for the share's path and every directory above it: a live volume's claim
// there, or data retained from one (until an administrator releases it),
// refuses the share. One the server answers it does not export to this
// node cannot be looked at and is passed; one that does not answer (busy,
// down, timed out) makes the call UNAVAILABLE (ErrBusy), and it is looked
// at again at the next.
//
// It runs at the first mount of the share in this process, before the
// driver's directory is made there, and once it has passed, not again:
// from then on the share's root exists and holds .hostpath-csi, and a
// create on the export above refuses to take it (the other direction).
func (b *Backend) checkEnclosing(ctx context.Context, e *export) error {
	b.mu.Lock()
	passed := b.enclosingOK[e.key]
	b.mu.Unlock()
	if passed {
		return nil
	}
	for p := path.Clean(e.share); p != "/" && p != "."; p = path.Dir(p) {
		anc := path.Dir(p)
		rel := strings.TrimPrefix(strings.TrimPrefix(e.share, anc), "/")
		if err := b.probeAncestor(ctx, e, anc, rel); err != nil {
			return err
		}
	}
	b.mu.Lock()
	b.enclosingOK[e.key] = true
	b.mu.Unlock()
	return nil
}

// probeMountPoint is where e's ancestors are mounted to be looked at, one
// at a time (the caller holds e's mount lock).
func (b *Backend) probeMountPoint(e *export) string {
	sum := sha256.Sum256([]byte(e.key))
	return filepath.Join(b.opts.MountDir, probePrefix+hex.EncodeToString(sum[:12]))
}

// probeAncestor mounts server:anc and refuses e's share if rel (its path
// below anc) or a directory above rel is claimed there.
func (b *Backend) probeAncestor(ctx context.Context, e *export, anc, rel string) error {
	akey := exportKey(e.server, anc)
	mnt := b.probeMountPoint(e)
	if err := unmount(ctx, b.guard, akey, mnt); err != nil {
		return fmt.Errorf("clear an old look at %s: %w", akey, err)
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return fmt.Errorf("create mount point to look at %s: %w", akey, err)
	}
	defer os.Remove(mnt)
	// The look fails closed: only a server's definite "not exported
	// (to this node)" passes; an export above that is busy, down or slow
	// makes the call UNAVAILABLE, and nothing is recorded, so the next
	// call looks again.
	if err := b.guard.busy(akey); err != nil {
		return fmt.Errorf("cannot look at %s, above share %s, for a volume the share would lie in; retry: %w", akey, e.key, err)
	}
	mctx, cancel := context.WithTimeout(ctx, b.opts.Timeout)
	stop := context.AfterFunc(b.life, cancel) // Close ends it too
	err := b.opts.Mounter.Mount(mctx, akey, mnt, DefaultFSType, e.options)
	timedOut := mctx.Err() != nil
	stop()
	cancel()
	if err != nil {
		if timedOut || !mountRefused(err) {
			return fmt.Errorf("%w: cannot look at %s, above share %s, for a volume the share would lie in (%v); retry once the server answers", ErrBusy, akey, e.key, err)
		}
		// Not exported to this node, or not at all: nothing to see.
		klog.V(4).InfoS("The NFS export above a share is not exported to this node; passing", "export", akey, "share", e.key, "err", err)
		return nil
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
		defer cancel()
		if err := unmount(uctx, b.guard, akey, mnt); err != nil {
			klog.ErrorS(err, "Cannot unmount an NFS export looked at; the next look, or the next start, unmounts it", "export", akey, "at", mnt)
		}
	}()
	var claim *SubDirClaim
	err = b.guard.do(ctx, akey, "read the claims of "+akey, func() error {
		c, err := b.claimAbove(mnt, akey, anc, rel)
		claim = c
		return err
	})
	if err != nil {
		return fmt.Errorf("look for claims on %s, above %s: %w", akey, e.key, err)
	}
	if claim == nil {
		return nil
	}
	// The claim's volume is another tenant's: its ID and claim go to the
	// log, not into an answer that reaches this share's claims.
	klog.InfoS("Refusing an NFS share inside a volume of a share above it on the same server", "share", e.key, "above", akey,
		"subDir", claim.SubDir, "volumeID", claim.ID, "retained", claim.Retained, "retainedFor", claim.RetainedFor.String())
	if claim.Retained {
		// Retained data is a tenant's tree: whatever is in it (a
		// .hostpath-csi with records to the tenant's taste) is not a
		// share's. An administrator releases the claim once the data is
		// moved away.
		return fmt.Errorf("%w: share %s lies in subDir %q of share %s, data retained (onDelete: retain) from a deleted volume there: the driver makes no share in a tenant's data; an administrator moves that data away on the server, then releases its claim by removing %s/%s/%s/%s there",
			ErrInsideVolume, e.key, claim.SubDir, akey, anc, ids.HiddenDir, dirSubDirs, hashName(claim.SubDir))
	}
	return fmt.Errorf("%w: share %s lies in subDir %q of share %s, a live volume there: that volume's pods could read and change this share's records and volumes; use as a share a directory outside other shares' volumes (or delete that volume, and remove its data, first)",
		ErrInsideVolume, e.key, claim.SubDir, akey)
}

// mountRefused reports whether a mount failed because the server does not
// export that path (to this node): mount.nfs says "access denied by server"
// (NFSv3, or NFSv4 for a path not exported to this client) or "No such
// file or directory" (a path the server does not have). A timeout, a
// refused connection or anything else is no answer.
func mountRefused(err error) bool {
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "access denied") || strings.Contains(m, "no such file or directory")
}

// claimAbove reads, on the export root mounted at mnt, the claim of a live
// volume (or of retained data) on rel or a directory above it, or nil.
func (b *Backend) claimAbove(mnt, akey, anc, rel string) (*SubDirClaim, error) {
	root, err := beneath.OpenRootWith(mnt, b.treeOptions())
	if err != nil {
		return nil, err
	}
	defer root.Close()
	hid, err := root.OpenDir(ids.HiddenDir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, beneath.ErrMountInside) || errors.Is(err, beneath.ErrChanged) {
		return nil, nil // no driver's records there
	}
	if err != nil {
		return nil, err
	}
	defer hid.Close()
	px := &Export{b: b, e: &export{server: "", share: anc, key: akey}, hid: hid}
	for _, p := range selfAndAncestors(rel) {
		var en nameEntry
		err := px.readRecord(dirSubDirs, hashName(p), &en)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if en.Name != p {
			continue
		}
		c := en.claim()
		if en.Retained {
			return &c, nil
		}
		v, err := ids.ParseNFSVolumeID(en.ID)
		if err != nil {
			continue
		}
		var r VolumeRecord
		err = px.readRecord(dirVolumes, v.Key+".json", &r)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrCorrupt) {
			continue // a stale claim: its volume is gone
		}
		if err != nil {
			return nil, err
		}
		if r.ID == en.ID {
			return &c, nil
		}
	}
	return nil, nil
}

// clearProbes unmounts and removes what a killed process left of its looks
// at exports above its shares. It runs at start-up, before any look of this
// process could use the same mount points.
func (b *Backend) clearProbes() {
	ents, err := os.ReadDir(b.opts.MountDir)
	if err != nil {
		return
	}
	var left []string
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), probePrefix) {
			left = append(left, filepath.Join(b.opts.MountDir, ent.Name()))
		}
	}
	for _, mnt := range left {
		ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
		if err := unmount(ctx, b.guard, "left-over look "+filepath.Base(mnt), mnt); err != nil {
			klog.ErrorS(err, "Cannot unmount what a killed process left of a look at an NFS export; the next look of its share unmounts it", "at", mnt)
		} else {
			_ = os.Remove(mnt)
		}
		cancel()
	}
}
