package nfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// The driver's directory on every export it works on:
//
//	<share>/.hostpath-csi/
//	  volumes/<key>.json             a volume's record (phase creating is the intent)
//	  snapshot-records/<key>.json    a snapshot's record
//	  names/volume-<sha256(name)>    {"name", "id"}: CreateVolume idempotency
//	  names/snapshot-<sha256(name)>  the same for CreateSnapshot
//	  subdirs/<sha256(subDir)>       {"subDir", "id"}: one volume per subdirectory
//	  nested/<sha256(a)>/<sha256(subDir)>  the same, for every proper ancestor a
//	                                 of subDir: which volumes lie below a
//	  snapshots/<key>/               a snapshot's data
//	  partial/                       copies in progress (renamed into place when complete):
//	                                 v-<key> of a volume, s-<key> of a snapshot
//	  trash/                         deletes in progress
//	  tmp/                           records being written
//
// A record is written to tmp/, synced, renamed into place and its directory
// synced: a kill or a power cut leaves the old record or the new one.
const (
	dirVolumes    = "volumes"
	dirSnapRecs   = "snapshot-records"
	dirNames      = "names"
	dirSubDirs    = "subdirs"
	dirNested     = "nested"
	dirSnapshots  = "snapshots"
	dirPartial    = "partial"
	dirTrash      = "trash"
	dirTmp        = "tmp"
	recordVersion = 1
)

// Phases of a record.
const (
	PhaseCreating = "creating"
	PhaseReady    = "ready"
	PhaseDeleting = "deleting"
)

// ErrNotFound: no such record on the export.
var ErrNotFound = errors.New("not found on the export")

// ErrCorrupt: a record is not what the driver writes (not JSON, too large,
// not a regular file): damaged, or written by someone else.
var ErrCorrupt = errors.New("record is corrupt")

// VolumeRecord is what the export remembers of a volume.
type VolumeRecord struct {
	Version       int               `json:"version"`
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	SubDir        string            `json:"subDir"`
	CapacityBytes int64             `json:"capacityBytes"`
	OnDelete      string            `json:"onDelete"`
	// Mode is the mountPermissions applied, "" for none.
	Mode             string    `json:"mode,omitempty"`
	SourceSnapshotID string    `json:"sourceSnapshotID,omitempty"`
	SourceVolumeID   string    `json:"sourceVolumeID,omitempty"`
	Phase            string    `json:"phase"`
	CreatedAt        time.Time `json:"createdAt"`
	// Adopted: the subdirectory existed before the volume was made.
	Adopted bool `json:"adopted,omitempty"`
	// MakingDir: the subdirectory was not there when the create started;
	// the driver is making it (a retry after a kill between the mkdir and
	// the chmod of mountPermissions applies the mode, not adopts).
	MakingDir bool `json:"makingDir,omitempty"`
	// TakesOver is the retained claim whose data this volume takes over
	// (onDelete: retain), recorded before the claim is replaced: a retry
	// after a kill adopts that directory; a rollback gives the claim back.
	TakesOver *SubDirClaim `json:"takesOver,omitempty"`
	// Exclusive: written by a driver that makes a volume only in a
	// subdirectory it created itself or was handed (retained data of the
	// same claim). A creating record without it is an older driver's,
	// which took whatever directory it found: its retry takes the
	// directory only if it is empty (what a kill after the mkdir leaves).
	Exclusive bool `json:"exclusive,omitempty"`
}

// ClaimRef says which claim a volume was made for, from csi-provisioner's
// extra create metadata: the PVC's namespace and name ("" when the
// provisioner does not pass them), and the CSI name (the PV's name,
// pvc-<PVC UID>). The provisioner passes no PVC UID: the PV's name is
// made from it.
type ClaimRef struct {
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"claim,omitempty"`
	PV        string `json:"pv,omitempty"`
}

// Known reports whether the reference was recorded (by a driver that
// records it; entries of older drivers have none).
func (c ClaimRef) Known() bool { return c.PV != "" }

// String is "namespace/name" (or the PV name), for messages.
func (c ClaimRef) String() string {
	switch {
	case !c.Known():
		return "(not recorded)"
	case c.Namespace != "" || c.Name != "":
		return c.Namespace + "/" + c.Name
	}
	return "PV " + c.PV
}

// SnapshotRecord is what the export remembers of a snapshot.
type SnapshotRecord struct {
	Version        int       `json:"version"`
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	SourceVolumeID string    `json:"sourceVolumeID"`
	SourceCapacity int64     `json:"sourceCapacity"`
	SizeBytes      int64     `json:"sizeBytes"`
	Phase          string    `json:"phase"`
	CreatedAt      time.Time `json:"createdAt"`

	// The fields below are set on a snapshot of a hostpath volume kept on
	// the export (a VolumeSnapshotClass with server and share), and absent
	// from a snapshot of an NFS volume: records of older drivers parse,
	// and older drivers ignore them.

	// SourceFamily is FamilyHostpath for a snapshot of a hostpath volume,
	// "" for one of an NFS volume.
	SourceFamily string `json:"sourceFamily,omitempty"`
	// SourceNode is the node the hostpath volume was on (for messages:
	// a restore works on any node).
	SourceNode string `json:"sourceNode,omitempty"`
	// SourceRequested is the source's request where the driver made it
	// larger than asked (see state.Snapshot.SourceRequested).
	SourceRequested int64 `json:"sourceRequested,omitempty"`
	// What the source volume was: its access type ("mount", "block"),
	// layout, an image's filesystem and whether it holds one yet.
	SourceAccessType string `json:"sourceAccessType,omitempty"`
	SourceLayout     string `json:"sourceLayout,omitempty"`
	SourceFSType     string `json:"sourceFSType,omitempty"`
	SourceFormatted  bool   `json:"sourceFormatted,omitempty"`

	// UpdatedAt is the last heartbeat of the job that copies a snapshot in
	// phase creating, when that job refreshes it (a long copy of a hostpath
	// volume from its node): a sweep on any node leaves a record alone
	// while it is fresh. Absent from older drivers' records, which the
	// sweep ages by CreatedAt.
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
}

// LastAlive is when r was last known to be in the hands of a live job: its
// last heartbeat, or its creation for a record without one.
func (r *SnapshotRecord) LastAlive() time.Time {
	if r.UpdatedAt.After(r.CreatedAt) {
		return r.UpdatedAt
	}
	return r.CreatedAt
}

// FamilyHostpath is SnapshotRecord.SourceFamily for a snapshot of a
// hostpath volume.
const FamilyHostpath = "hostpath"

// OfHostpath reports whether r is a snapshot of a hostpath volume.
func (r *SnapshotRecord) OfHostpath() bool { return r.SourceFamily == FamilyHostpath }

// RestoreRequest is the least size a restore of r is asked for: the
// source's request where the driver made the source larger than asked,
// its capacity otherwise (as state.Snapshot.RestoreRequest).
func (r *SnapshotRecord) RestoreRequest() int64 {
	if q := r.SourceRequested; q > 0 && q < r.SourceCapacity {
		return q
	}
	return r.SourceCapacity
}

type nameEntry struct {
	Name string `json:"name"`
	ID   string `json:"id"`
	// Retained marks a subdirectory claim kept after its volume was
	// deleted with onDelete: retain: the data is still there, owned by
	// nobody; a new volume of the same subDir may take it over (the
	// driver decides from RetainedFor), one around or inside it is
	// refused (see RetainVolume).
	Retained bool `json:"retained,omitempty"`
	// RetainedFor is the claim the data was retained for (absent in
	// entries of older drivers).
	RetainedFor *ClaimRef `json:"retainedFor,omitempty"`
}

func (e nameEntry) claim() SubDirClaim {
	c := SubDirClaim{SubDir: e.Name, ID: e.ID, Retained: e.Retained}
	if e.RetainedFor != nil {
		c.RetainedFor = *e.RetainedFor
	}
	return c
}

// sub opens dir (a relative path) below the driver's directory: no symlink
// is followed and no mount crossed on the way, whoever could write there.
func (x *Export) sub(dir string) (*beneath.Dir, error) {
	d, err := x.hid.OpenDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open %s on %s: %w", path.Join(ids.HiddenDir, dir), x.Name(), err)
	}
	return d, nil
}

// layout opens the driver's directory on a newly mounted export, creating
// it and its directories (cheap when they exist), and removes the files a
// kill left in tmp/: a record is written there and renamed within one
// operation, so a file older than the timeout on every operation belongs
// to no running write, of this controller or any other.
//
// The driver's directory is opened once, from the export's root, refusing
// a symlink and another mount in its place (whoever can write the share's
// root could plant one); everything below is reached relative to it. It is
// returned open, for the export to keep while mounted.
func (x *Export) layout() (*beneath.Dir, error) {
	root, err := x.openRoot()
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if err := root.Mkdir(ids.HiddenDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create %s on %s: %w", ids.HiddenDir, x.Name(), err)
	}
	hid, err := root.OpenDir(ids.HiddenDir)
	if err != nil {
		return nil, fmt.Errorf("open %s on %s (it must be a directory of the export, not a symlink or a mount): %w", ids.HiddenDir, x.Name(), err)
	}
	x.hid = hid
	if err := x.prepareHidden(); err != nil {
		hid.Close()
		return nil, err
	}
	return hid, nil
}

// prepareHidden creates the driver's directories and clears tmp/.
func (x *Export) prepareHidden() error {
	hid := x.hid
	for _, d := range []string{dirVolumes, dirSnapRecs, dirNames, dirSubDirs, dirNested, dirSnapshots, dirPartial, dirTrash, dirTmp} {
		if err := hid.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create %s on %s: %w", path.Join(ids.HiddenDir, d), x.Name(), err)
		}
	}
	tmp, err := x.sub(dirTmp)
	if err != nil {
		return err
	}
	defer tmp.Close()
	names, err := tmp.Names()
	if err != nil {
		return fmt.Errorf("list %s on %s: %w", dirTmp, x.Name(), err)
	}
	for _, n := range names {
		st, err := tmp.Lstat(n)
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || time.Since(time.Unix(st.Mtime.Sec, int64(st.Mtime.Nsec))) <= x.b.opts.Timeout {
			continue
		}
		if err := tmp.Unlink(n, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove a record write cut short on %s: %w", x.Name(), err)
		}
	}
	return x.fillNested()
}

var tmpSeq atomic.Uint64

// ErrExists: a new record's name is taken on the export.
var ErrExists = errors.New("a record of that key already exists on the export")

// writeRecord writes v as JSON to dir/name crash-safely, replacing what is
// there.
func (x *Export) writeRecord(dir, name string, v any) error {
	return x.putRecord(dir, name, v, true, false)
}

// createRecord is writeRecord for a record that must be new: if dir/name
// exists (another volume drew the same key, another controller at the
// same moment included) it is ErrExists and nothing is written. The
// complete file is linked into place, which no client can make replace a
// file, NFS included.
func (x *Export) createRecord(dir, name string, v any) error {
	return x.putRecord(dir, name, v, false, false)
}

// checkThenRename puts tmp/tmpName in place as to/name unless name exists:
// for a server without hard links.
func checkThenRename(tmp *beneath.Dir, tmpName string, to *beneath.Dir, name string) error {
	var st unix.Stat_t
	err := unix.Fstatat(to.Fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil {
		return unix.EEXIST
	}
	if !errors.Is(err, unix.ENOENT) {
		return err
	}
	return unix.Renameat(tmp.Fd(), tmpName, to.Fd(), name)
}

// createOwnRecord is createRecord of a record whose name only this driver
// draws (a random key): on a server that refuses hard links (EPERM,
// EOPNOTSUPP) it falls back to a check, then a rename: two writers of the
// same random name at once are not a case worth failing every create for.
// A name a tenant's choice decides (a subDir's claim) has no fallback.
func (x *Export) createOwnRecord(dir, name string, v any) error {
	return x.putRecord(dir, name, v, false, true)
}

func (x *Export) putRecord(dir, name string, v any, replace, ownName bool) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := x.sub(dirTmp)
	if err != nil {
		return err
	}
	defer tmp.Close()
	to, err := x.sub(dir)
	if err != nil {
		return err
	}
	defer to.Close()
	tmpName := fmt.Sprintf("%d-%d-%d", os.Getpid(), time.Now().UnixNano(), tmpSeq.Add(1))
	fd, err := tmp.Create(tmpName, 0o600)
	if err != nil {
		return fmt.Errorf("write record on %s: %w", x.Name(), err)
	}
	f := os.NewFile(uintptr(fd), tmpName)
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && replace {
		err = unix.Renameat(tmp.Fd(), tmpName, to.Fd(), name)
	} else if err == nil {
		err = x.b.opts.LinkRecord(tmp.Fd(), tmpName, to.Fd(), name, 0)
		if ownName && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP)) {
			err = checkThenRename(tmp, tmpName, to, name)
		}
		if errors.Is(err, unix.EEXIST) {
			err = ErrExists
		}
		_ = tmp.Unlink(tmpName, 0)
	}
	if err != nil {
		_ = tmp.Unlink(tmpName, 0)
		return fmt.Errorf("write record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	if err := unix.Fsync(to.Fd()); err != nil {
		return fmt.Errorf("sync %s on %s: %w", dir, x.Name(), err)
	}
	return nil
}

func (x *Export) readRecord(dir, name string, v any) error {
	d, err := x.sub(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s/%s: %w", dir, name, ErrNotFound)
	}
	if err != nil {
		return err
	}
	defer d.Close()
	fd, _, err := d.OpenFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s/%s: %w", dir, name, ErrNotFound)
	}
	if errors.Is(err, beneath.ErrChanged) {
		return fmt.Errorf("record %s/%s on %s: %w: not a regular file (%v)", dir, name, x.Name(), ErrCorrupt, err)
	}
	if err != nil {
		return fmt.Errorf("read record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRecordSize+1))
	if err != nil {
		return fmt.Errorf("read record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	if len(data) > maxRecordSize {
		return fmt.Errorf("record %s/%s on %s: %w: larger than %d bytes", dir, name, x.Name(), ErrCorrupt, maxRecordSize)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("record %s/%s on %s: %w: %v", dir, name, x.Name(), ErrCorrupt, err)
	}
	return nil
}

// maxRecordSize bounds what a record read takes in: a record is a few
// hundred bytes; a huge file in its place is corrupt, not read whole.
const maxRecordSize = 1 << 20

// makeIndexDir creates dir (below the driver's directory) if it is not
// there.
func (x *Export) makeIndexDir(dir string) error {
	parent, err := x.sub(path.Dir(dir))
	if err != nil {
		return err
	}
	defer parent.Close()
	if err := parent.Mkdir(path.Base(dir), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create %s on %s: %w", dir, x.Name(), err)
	}
	return nil
}

func (x *Export) removeRecord(dir, name string) error {
	d, err := x.sub(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Unlink(name, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	if err := unix.Fsync(d.Fd()); err != nil {
		return fmt.Errorf("sync %s on %s: %w", dir, x.Name(), err)
	}
	return nil
}

func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// GetVolume reads the record of the volume with this key (the last field
// of its ID: ids.NFSVolume.Key).
func (x *Export) GetVolume(ctx context.Context, key string) (*VolumeRecord, error) {
	var r VolumeRecord
	err := x.do(ctx, "read volume record", func() error { return x.readRecord(dirVolumes, key+".json", &r) })
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// CreateVolume writes the first record of a new volume: ErrExists if its
// key names a record already.
func (x *Export) CreateVolume(ctx context.Context, r *VolumeRecord, key string) error {
	r.Version = recordVersion
	return x.do(ctx, "write new volume record", func() error { return x.createOwnRecord(dirVolumes, key+".json", r) })
}

// PutVolume writes a volume's record.
func (x *Export) PutVolume(ctx context.Context, r *VolumeRecord, key string) error {
	r.Version = recordVersion
	return x.do(ctx, "write volume record", func() error { return x.writeRecord(dirVolumes, key+".json", r) })
}

// DeleteVolume removes a volume's record and the index entries that point
// at it (name, subdirectory).
func (x *Export) DeleteVolume(ctx context.Context, r *VolumeRecord, key string) error {
	return x.do(ctx, "remove volume record", func() error {
		if err := x.dropIndex(dirSubDirs, hashName(r.SubDir), r.ID); err != nil {
			return err
		}
		if err := x.dropNested(r.SubDir, r.ID); err != nil {
			return err
		}
		if err := x.dropIndex(dirNames, "volume-"+hashName(r.Name), r.ID); err != nil {
			return err
		}
		return x.removeRecord(dirVolumes, key+".json")
	})
}

// GetSnapshot reads the record of the snapshot with this key.
func (x *Export) GetSnapshot(ctx context.Context, key string) (*SnapshotRecord, error) {
	var r SnapshotRecord
	err := x.do(ctx, "read snapshot record", func() error { return x.readRecord(dirSnapRecs, key+".json", &r) })
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// CreateSnapshot writes the first record of a new snapshot: ErrExists if
// its key names a record already.
func (x *Export) CreateSnapshot(ctx context.Context, r *SnapshotRecord, key string) error {
	r.Version = recordVersion
	return x.do(ctx, "write new snapshot record", func() error { return x.createOwnRecord(dirSnapRecs, key+".json", r) })
}

// PutSnapshot writes a snapshot's record.
func (x *Export) PutSnapshot(ctx context.Context, r *SnapshotRecord, key string) error {
	r.Version = recordVersion
	return x.do(ctx, "write snapshot record", func() error { return x.writeRecord(dirSnapRecs, key+".json", r) })
}

// ErrSnapshotReplaced is UpdateCreatingSnapshot's error when the record
// under the key is no longer the creating one the caller made.
var ErrSnapshotReplaced = errors.New("the snapshot's record is no longer the one its create made")

// UpdateCreatingSnapshot writes r over the record of snapshot key only if
// that record still is r's (same ID and creation time) and still in phase
// creating: a heartbeat or the ready write of the job that copies the
// snapshot. It is ErrNotFound if the record is gone (a sweep on another node
// undid it) and ErrSnapshotReplaced if it changed: such a write would bring
// back a record whose data the sweep removed.
func (x *Export) UpdateCreatingSnapshot(ctx context.Context, r *SnapshotRecord, key string) error {
	return x.do(ctx, "update creating snapshot record", func() error {
		var cur SnapshotRecord
		if err := x.readRecord(dirSnapRecs, key+".json", &cur); err != nil {
			return err
		}
		if cur.ID != r.ID || !cur.CreatedAt.Equal(r.CreatedAt) || cur.Phase != PhaseCreating {
			return fmt.Errorf("snapshot %s on %s (now %s, phase %s): %w", r.ID, x.Name(), cur.ID, cur.Phase, ErrSnapshotReplaced)
		}
		r.Version = recordVersion
		return x.writeRecord(dirSnapRecs, key+".json", r)
	})
}

// DeleteSnapshot removes a snapshot's record and its name entry.
func (x *Export) DeleteSnapshot(ctx context.Context, r *SnapshotRecord, key string) error {
	return x.do(ctx, "remove snapshot record", func() error {
		if err := x.dropIndex(dirNames, "snapshot-"+hashName(r.Name), r.ID); err != nil {
			return err
		}
		return x.removeRecord(dirSnapRecs, key+".json")
	})
}

// Index kinds of LookupName and PutName.
const (
	KindVolume   = "volume"
	KindSnapshot = "snapshot"
)

// LookupName returns the ID a CSI name of kind was given on this export, or
// ErrNotFound.
func (x *Export) LookupName(ctx context.Context, kind, name string) (string, error) {
	var e nameEntry
	err := x.do(ctx, "read name index", func() error { return x.readRecord(dirNames, kind+"-"+hashName(name), &e) })
	if err != nil {
		return "", err
	}
	if e.Name != name {
		return "", fmt.Errorf("name index on %s: entry for %q holds %q: %w", x.Name(), name, e.Name, ErrNotFound)
	}
	return e.ID, nil
}

// PutName records that name of kind is id.
func (x *Export) PutName(ctx context.Context, kind, name, id string) error {
	return x.do(ctx, "write name index", func() error {
		return x.writeRecord(dirNames, kind+"-"+hashName(name), &nameEntry{Name: name, ID: id})
	})
}

// SubDirOwner returns the ID of the volume that owns subDir, or ErrNotFound.
func (x *Export) SubDirOwner(ctx context.Context, subDir string) (string, error) {
	var e nameEntry
	err := x.do(ctx, "read subdirectory index", func() error { return x.readRecord(dirSubDirs, hashName(subDir), &e) })
	if err != nil {
		return "", err
	}
	return e.ID, nil
}

// SubDirClaim is an entry of the subdirectory index: volume ID claims
// SubDir.
type SubDirClaim struct {
	SubDir string `json:"subDir"`
	ID     string `json:"id"`
	// Retained: the volume was deleted and its data retained.
	Retained bool `json:"retained,omitempty"`
	// RetainedFor: the claim it was retained for (not Known in entries
	// written by older drivers).
	RetainedFor ClaimRef `json:"retainedFor"`
}

// SubDirClaims returns the claims on subDir, on each of its ancestors and
// on every directory below it: the volumes a new volume in subDir would
// share data with. It reads one entry per component of subDir and one
// directory of the nested index, however many volumes the export has.
// Entries of volumes that are gone may be among them.
func (x *Export) SubDirClaims(ctx context.Context, subDir string) ([]SubDirClaim, error) {
	var result []SubDirClaim
	err := x.do(ctx, "read subdirectory index", func() error {
		var out []SubDirClaim
		for _, p := range selfAndAncestors(subDir) {
			var e nameEntry
			err := x.readRecord(dirSubDirs, hashName(p), &e)
			if errors.Is(err, ErrCorrupt) {
				// A damaged entry names no volume: it must not block
				// the directory forever; a new claim replaces it.
				klog.ErrorS(err, "Ignoring a corrupt subdirectory index entry", "export", x.Name(), "subDir", p)
				continue
			}
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			out = append(out, e.claim())
		}
		below := path.Join(dirNested, hashName(subDir))
		err := listEntries(x, below, func(name string) error {
			var e nameEntry
			if err := x.readRecord(below, name, &e); err != nil {
				return err
			}
			out = append(out, e.claim())
			return nil
		})
		result = out
		return err
	})
	if err != nil {
		return nil, err
	}
	return result, nil
}

// selfAndAncestors is subDir and each directory above it up to the share:
// "a/b/c", "a/b", "a".
func selfAndAncestors(subDir string) []string {
	out := []string{subDir}
	for p := subDir; ; {
		i := strings.LastIndexByte(p, '/')
		if i < 0 {
			return out
		}
		p = p[:i]
		out = append(out, p)
	}
}

// PutSubDirOwner records that the volume id owns subDir: below each of
// subDir's ancestors first, so that whoever sees the claim also finds it
// from above.
func (x *Export) PutSubDirOwner(ctx context.Context, subDir, id string) error {
	return x.do(ctx, "write subdirectory index", func() error {
		if err := x.putNested(subDir, id); err != nil {
			return err
		}
		return x.writeRecord(dirSubDirs, hashName(subDir), &nameEntry{Name: subDir, ID: id})
	})
}

// ClaimSubDir records that the volume id claims subDir, without replacing
// another volume's claim of subDir: the subdirs/ entry is linked into
// place (no client, of this controller or another, can make that replace
// a file), then the entries below each ancestor are written. If subDir's
// entry names another volume, nothing is written and the error is
// ErrExists with that claim: the caller decides whether it is stale (its
// volume gone) and replaces it with PutSubDirOwner.
//
// A claim is made before the claims around it are read (see the driver's
// nfsClaimSubDir): of two controllers claiming nested subDirs at once,
// the one that reads last sees the other's claim.
func (x *Export) ClaimSubDir(ctx context.Context, subDir, id string) (*SubDirClaim, error) {
	var taken *SubDirClaim
	err := x.do(ctx, "write subdirectory index", func() error {
		err := x.createRecord(dirSubDirs, hashName(subDir), &nameEntry{Name: subDir, ID: id})
		if errors.Is(err, ErrExists) {
			var e nameEntry
			rerr := x.readRecord(dirSubDirs, hashName(subDir), &e)
			if rerr == nil && e.ID != id {
				c := e.claim()
				taken = &c
				return err
			}
			if rerr != nil && !errors.Is(rerr, ErrCorrupt) {
				return rerr
			}
			// Our own claim (a retry), or a damaged entry: rewrite.
			err = x.writeRecord(dirSubDirs, hashName(subDir), &nameEntry{Name: subDir, ID: id})
		}
		if err != nil {
			return err
		}
		return x.putNested(subDir, id)
	})
	if err != nil {
		return taken, err
	}
	return nil, nil
}

// DropSubDirClaim removes the entries of volume id's claim of subDir (an
// entry another volume has taken over since is left).
func (x *Export) DropSubDirClaim(ctx context.Context, subDir, id string) error {
	return x.do(ctx, "remove subdirectory index entries", func() error {
		if err := x.dropIndex(dirSubDirs, hashName(subDir), id); err != nil {
			return err
		}
		return x.dropNested(subDir, id)
	})
}

// WasParent reports whether subDir has been a parent of a claimed
// subdirectory (the nested index has its directory): a directory the
// driver made, or went through, on the way to another volume's.
func (x *Export) WasParent(ctx context.Context, subDir string) (bool, error) {
	var was bool
	err := x.do(ctx, "read subdirectory index", func() error {
		d, err := x.sub(path.Join(dirNested, hashName(subDir)))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		was = true
		return d.Close()
	})
	return was, err
}

func (x *Export) putNested(subDir, id string) error {
	for _, a := range selfAndAncestors(subDir)[1:] {
		dir := path.Join(dirNested, hashName(a))
		if err := x.makeIndexDir(dir); err != nil {
			return err
		}
		if err := x.writeRecord(dir, hashName(subDir), &nameEntry{Name: subDir, ID: id}); err != nil {
			return err
		}
	}
	return nil
}

func (x *Export) dropNested(subDir, id string) error {
	for _, a := range selfAndAncestors(subDir)[1:] {
		if err := x.dropIndex(path.Join(dirNested, hashName(a)), hashName(subDir), id); err != nil {
			return err
		}
	}
	return nil
}

// nestedIndexDone marks an export whose nested index holds the volumes
// made before it existed.
const nestedIndexDone = "complete-v1"

// fillNested adds to the nested index the claims of volumes made by a
// driver that did not keep it (once per export: a marker says it is done).
func (x *Export) fillNested() error {
	var done struct{}
	if err := x.readRecord(dirNested, nestedIndexDone, &done); err == nil {
		return nil
	}
	err := listEntries(x, dirSubDirs, func(name string) error {
		var e nameEntry
		if err := x.readRecord(dirSubDirs, name, &e); err != nil {
			return err
		}
		if ids.ValidateNFSSubDir(e.Name) != nil || hashName(e.Name) != name {
			return nil
		}
		return x.putNested(e.Name, e.ID)
	})
	if err != nil {
		return fmt.Errorf("index the subdirectories of existing volumes on %s: %w", x.Name(), err)
	}
	return x.writeRecord(dirNested, nestedIndexDone, struct{}{})
}

// dropIndex removes an index entry if it still points at id.
func (x *Export) dropIndex(dir, name, id string) error {
	var e nameEntry
	err := x.readRecord(dir, name, &e)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err == nil && e.ID != id:
		return nil // taken over by another volume since
	}
	return x.removeRecord(dir, name)
}

// RetainVolume is DeleteVolume for a volume deleted with onDelete: retain:
// its subdirectory claims stay, marked retained for the claim owner, so
// that the retained data is not taken into a volume around it or inside it
// (its pods would read it, its delete would remove it); a new volume of
// the same subDir may take the data, and the claim, over: the driver
// decides who may, from owner.
func (x *Export) RetainVolume(ctx context.Context, r *VolumeRecord, key string, owner ClaimRef) error {
	return x.do(ctx, "remove volume record, keep its subdirectory claim", func() error {
		if err := x.retainClaim(r.SubDir, r.ID, r.ID, owner); err != nil {
			return err
		}
		if err := x.dropIndex(dirNames, "volume-"+hashName(r.Name), r.ID); err != nil {
			return err
		}
		return x.removeRecord(dirVolumes, key+".json")
	})
}

// GiveBackRetained is DeleteVolume for a create that was taking retained
// data over (r.TakesOver) and is rolled back: the subdirectory's claims
// are the retained ones again, as they were, so the data stays guarded.
func (x *Export) GiveBackRetained(ctx context.Context, r *VolumeRecord, key string) error {
	c := r.TakesOver
	if c == nil || c.SubDir != r.SubDir {
		return x.DeleteVolume(ctx, r, key)
	}
	return x.do(ctx, "remove volume record, give the retained claim back", func() error {
		if err := x.retainClaim(r.SubDir, r.ID, c.ID, c.RetainedFor); err != nil {
			return err
		}
		if err := x.retainClaim(r.SubDir, c.ID, c.ID, c.RetainedFor); err != nil {
			return err
		}
		if err := x.dropIndex(dirNames, "volume-"+hashName(r.Name), r.ID); err != nil {
			return err
		}
		return x.removeRecord(dirVolumes, key+".json")
	})
}

// retainClaim rewrites subDir's index entries that point at volume from
// as retained data of volume id, for owner.
func (x *Export) retainClaim(subDir, from, id string, owner ClaimRef) error {
	e := nameEntry{Name: subDir, ID: id, Retained: true}
	if owner.Known() {
		e.RetainedFor = &owner
	}
	if err := x.markRetained(dirSubDirs, hashName(subDir), from, e); err != nil {
		return err
	}
	for _, a := range selfAndAncestors(subDir)[1:] {
		if err := x.markRetained(path.Join(dirNested, hashName(a)), hashName(subDir), from, e); err != nil {
			return err
		}
	}
	return nil
}

// markRetained rewrites an index entry as e if it still points at volume
// from (and is not e already).
func (x *Export) markRetained(dir, name, from string, e nameEntry) error {
	var cur nameEntry
	err := x.readRecord(dir, name, &cur)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err == nil && cur.ID != from:
		return nil // taken over by another volume since
	case err == nil && cur.ID == e.ID && cur.Retained:
		return nil
	}
	return x.writeRecord(dir, name, &e)
}

// ListVolumes reads every volume record on the export, sorted by ID.
func (x *Export) ListVolumes(ctx context.Context) ([]*VolumeRecord, error) {
	// The records are collected by the operation and handed over only
	// when it completes: an operation whose caller gave up goes on, and
	// must not append to what the caller is sorting or returning.
	var result []*VolumeRecord
	err := x.do(ctx, "list volume records", func() error {
		var out []*VolumeRecord
		err := listRecords(x, dirVolumes, func(name string) error {
			var r VolumeRecord
			if err := x.readRecord(dirVolumes, name, &r); err != nil {
				return err
			}
			// A record is at the name its ID's key gives: one elsewhere
			// was not written by the driver (or was copied by hand), and
			// is acted on by nothing that lists records.
			if v, err := ids.ParseNFSVolumeID(r.ID); err != nil || v.Key+".json" != name {
				klog.ErrorS(nil, "Ignoring an NFS volume record whose ID does not match its file name", "export", x.Name(), "file", name, "volumeID", r.ID)
				return nil
			}
			out = append(out, &r)
			return nil
		})
		if err != nil {
			return err
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		result = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	return result, nil
}

// ListSnapshots reads every snapshot record on the export, sorted by ID.
func (x *Export) ListSnapshots(ctx context.Context) ([]*SnapshotRecord, error) {
	// The records are collected by the operation and handed over only
	// when it completes: an operation whose caller gave up goes on, and
	// must not append to what the caller is sorting or returning.
	var result []*SnapshotRecord
	err := x.do(ctx, "list snapshot records", func() error {
		var out []*SnapshotRecord
		err := listRecords(x, dirSnapRecs, func(name string) error {
			var r SnapshotRecord
			if err := x.readRecord(dirSnapRecs, name, &r); err != nil {
				return err
			}
			out = append(out, &r)
			return nil
		})
		if err != nil {
			return err
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		result = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	return result, nil
}

// listEntries calls each for every regular file of dir but the marker.
func listEntries(x *Export, dir string, each func(name string) error) error {
	return listDir(x, dir, func(n string) bool { return n != nestedIndexDone }, each)
}

func listRecords(x *Export, dir string, each func(name string) error) error {
	return listDir(x, dir, func(n string) bool { return strings.HasSuffix(n, ".json") }, each)
}

// listDir calls each for the regular files of dir that keep accepts. An
// entry each finds corrupt (ErrCorrupt) is logged and skipped: a listing,
// an index fill or a claim check goes on without it.
func listDir(x *Export, dir string, keep func(string) bool, each func(name string) error) error {
	d, err := x.sub(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Names()
	if err != nil {
		return fmt.Errorf("list %s on %s: %w", dir, x.Name(), err)
	}
	for _, n := range names {
		if !keep(n) {
			continue
		}
		if st, err := d.Lstat(n); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		err := each(n)
		if errors.Is(err, ErrCorrupt) {
			// One damaged file must not hide, or block, every other
			// entry of the directory: it is left out, and said.
			klog.ErrorS(err, "Leaving a corrupt record out; move it away or restore it", "export", x.Name(), "record", path.Join(ids.HiddenDir, dir, n))
			continue
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

// ArchivePrefix starts the names onDelete: archive gives subdirectories,
// in the share's root; no volume's subDir may start with it.
const ArchivePrefix = "archived-"

// archiveName is where onDelete: archive moves subDir at t.
func archiveName(subDir string, t time.Time, n int) string {
	s := ArchivePrefix + strings.ReplaceAll(subDir, "/", "-") + "-" + t.UTC().Format("20060102T150405Z")
	if n > 0 {
		s += "-" + strconv.Itoa(n)
	}
	return s
}
