package nfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

// The driver's directory on every export it works on:
//
//	<share>/.hostpath-csi/
//	  volumes/<uuid>.json            a volume's record (phase creating is the intent)
//	  snapshot-records/<hex>.json    a snapshot's record
//	  names/volume-<sha256(name)>    {"name", "id"}: CreateVolume idempotency
//	  names/snapshot-<sha256(name)>  the same for CreateSnapshot
//	  subdirs/<sha256(subDir)>       {"subDir", "id"}: one volume per subdirectory
//	  snapshots/<hex>/               a snapshot's data
//	  partial/                       copies in progress (renamed into place when complete)
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
}

type nameEntry struct {
	Name string `json:"name"`
	ID   string `json:"id"`
}

func (x *Export) hidden(parts ...string) string {
	return filepath.Join(append([]string{x.Root, ids.HiddenDir}, parts...)...)
}

// layout creates the driver's directories on the export (once per mount;
// cheap when they exist) and removes the files a kill left in tmp/: a
// record is written there and renamed within one operation, so a file
// older than the timeout on every operation belongs to no running write,
// of this controller or any other.
func (x *Export) layout() error {
	for _, d := range []string{dirVolumes, dirSnapRecs, dirNames, dirSubDirs, dirSnapshots, dirPartial, dirTrash, dirTmp} {
		if err := os.MkdirAll(x.hidden(d), 0o700); err != nil {
			return fmt.Errorf("create %s on %s: %w", filepath.Join(ids.HiddenDir, d), x.Name(), err)
		}
	}
	ents, err := os.ReadDir(x.hidden(dirTmp))
	if err != nil {
		return fmt.Errorf("list %s on %s: %w", dirTmp, x.Name(), err)
	}
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && time.Since(fi.ModTime()) > x.b.opts.Timeout {
			if err := os.Remove(x.hidden(dirTmp, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove a record write cut short on %s: %w", x.Name(), err)
			}
		}
	}
	return nil
}

var tmpSeq atomic.Uint64

// writeRecord writes v as JSON to dir/name crash-safely.
func (x *Export) writeRecord(dir, name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := x.hidden(dirTmp, fmt.Sprintf("%d-%d-%d", os.Getpid(), time.Now().UnixNano(), tmpSeq.Add(1)))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write record on %s: %w", x.Name(), err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, x.hidden(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	return syncDir(x.hidden(dir))
}

func (x *Export) readRecord(dir, name string, v any) error {
	data, err := os.ReadFile(x.hidden(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s/%s: %w", dir, name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("read record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("record %s/%s on %s is corrupt: %w", dir, name, x.Name(), err)
	}
	return nil
}

func (x *Export) removeRecord(dir, name string) error {
	if err := os.Remove(x.hidden(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record %s/%s on %s: %w", dir, name, x.Name(), err)
	}
	return syncDir(x.hidden(dir))
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open %s to sync it: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Fsync(fd); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func hashName(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// GetVolume reads the record of the volume with this UUID.
func (x *Export) GetVolume(ctx context.Context, uuid string) (*VolumeRecord, error) {
	var r VolumeRecord
	err := x.do(ctx, "read volume record", func() error { return x.readRecord(dirVolumes, uuid+".json", &r) })
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// PutVolume writes a volume's record.
func (x *Export) PutVolume(ctx context.Context, r *VolumeRecord, uuid string) error {
	r.Version = recordVersion
	return x.do(ctx, "write volume record", func() error { return x.writeRecord(dirVolumes, uuid+".json", r) })
}

// DeleteVolume removes a volume's record and the index entries that point
// at it (name, subdirectory).
func (x *Export) DeleteVolume(ctx context.Context, r *VolumeRecord, uuid string) error {
	return x.do(ctx, "remove volume record", func() error {
		if err := x.dropIndex(dirSubDirs, hashName(r.SubDir), r.ID); err != nil {
			return err
		}
		if err := x.dropIndex(dirNames, "volume-"+hashName(r.Name), r.ID); err != nil {
			return err
		}
		return x.removeRecord(dirVolumes, uuid+".json")
	})
}

// GetSnapshot reads the record of the snapshot hex.
func (x *Export) GetSnapshot(ctx context.Context, hex string) (*SnapshotRecord, error) {
	var r SnapshotRecord
	err := x.do(ctx, "read snapshot record", func() error { return x.readRecord(dirSnapRecs, hex+".json", &r) })
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// PutSnapshot writes a snapshot's record.
func (x *Export) PutSnapshot(ctx context.Context, r *SnapshotRecord, hex string) error {
	r.Version = recordVersion
	return x.do(ctx, "write snapshot record", func() error { return x.writeRecord(dirSnapRecs, hex+".json", r) })
}

// DeleteSnapshot removes a snapshot's record and its name entry.
func (x *Export) DeleteSnapshot(ctx context.Context, r *SnapshotRecord, hex string) error {
	return x.do(ctx, "remove snapshot record", func() error {
		if err := x.dropIndex(dirNames, "snapshot-"+hashName(r.Name), r.ID); err != nil {
			return err
		}
		return x.removeRecord(dirSnapRecs, hex+".json")
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

// PutSubDirOwner records that the volume id owns subDir.
func (x *Export) PutSubDirOwner(ctx context.Context, subDir, id string) error {
	return x.do(ctx, "write subdirectory index", func() error {
		return x.writeRecord(dirSubDirs, hashName(subDir), &nameEntry{Name: subDir, ID: id})
	})
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

// ListVolumes reads every volume record on the export, sorted by ID.
func (x *Export) ListVolumes(ctx context.Context) ([]*VolumeRecord, error) {
	var out []*VolumeRecord
	err := x.do(ctx, "list volume records", func() error {
		return listRecords(x, dirVolumes, func(name string) error {
			var r VolumeRecord
			if err := x.readRecord(dirVolumes, name, &r); err != nil {
				return err
			}
			out = append(out, &r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// ListSnapshots reads every snapshot record on the export, sorted by ID.
func (x *Export) ListSnapshots(ctx context.Context) ([]*SnapshotRecord, error) {
	var out []*SnapshotRecord
	err := x.do(ctx, "list snapshot records", func() error {
		return listRecords(x, dirSnapRecs, func(name string) error {
			var r SnapshotRecord
			if err := x.readRecord(dirSnapRecs, name, &r); err != nil {
				return err
			}
			out = append(out, &r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

func listRecords(x *Export, dir string, each func(name string) error) error {
	ents, err := os.ReadDir(x.hidden(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list %s on %s: %w", dir, x.Name(), err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		if err := each(e.Name()); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	return nil
}

// archiveName is where onDelete: archive moves subDir at t.
func archiveName(subDir string, t time.Time, n int) string {
	s := "archived-" + strings.ReplaceAll(subDir, "/", "-") + "-" + t.UTC().Format("20060102T150405Z")
	if n > 0 {
		s += "-" + strconv.Itoa(n)
	}
	return s
}
