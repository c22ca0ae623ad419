package state

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Snapshot is a point-in-time copy of a volume's data.
type Snapshot struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	SourceVolumeID string `json:"sourceVolumeID"`
	// SourceCapacity is the source volume's capacity when the snapshot was
	// taken: the smallest volume it can be restored into.
	SourceCapacity int64 `json:"sourceCapacity"`
	// SizeBytes is what the snapshot's data occupies on disk.
	SizeBytes int64 `json:"sizeBytes"`
	// Mechanism is how the data was copied (reflink, copy, ...).
	Mechanism  string            `json:"mechanism"`
	Parameters map[string]string `json:"parameters,omitempty"`
	Phase      Phase             `json:"phase"`
	CreatedAt  time.Time         `json:"createdAt"`
	// GroupID is set on the members of a group snapshot; they are deleted
	// with their group, never alone.
	GroupID string `json:"groupID,omitempty"`
}

// GetSnapshot returns the snapshot with this ID, or ErrNotFound.
func (s *Store) GetSnapshot(id string) (*Snapshot, error) {
	var snap Snapshot
	err := s.view(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bucketSnapshots), id, &snap)
	})
	if err != nil {
		return nil, err
	}
	return &snap, nil
}

// GetSnapshotByName returns the snapshot with this name, or ErrNotFound.
func (s *Store) GetSnapshotByName(name string) (*Snapshot, error) {
	var snap Snapshot
	err := s.view(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketSnapshotNames).Get([]byte(name))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucketSnapshots), string(id), &snap)
	})
	if err != nil {
		return nil, err
	}
	return &snap, nil
}

// PutSnapshot inserts or replaces a snapshot and its name index entry.
func (s *Store) PutSnapshot(snap *Snapshot) error {
	rec := *snap
	return s.update(func(tx *bolt.Tx) error {
		names := tx.Bucket(bucketSnapshotNames)
		if owner := names.Get([]byte(rec.Name)); owner != nil && string(owner) != rec.ID {
			return fmt.Errorf("snapshot name %q: %w (%s)", rec.Name, ErrNameTaken, owner)
		}
		if err := names.Put([]byte(rec.Name), []byte(rec.ID)); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketSnapshots), rec.ID, &rec)
	})
}

// DeleteSnapshot removes a snapshot and its name; a missing one is not an error.
func (s *Store) DeleteSnapshot(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSnapshots)
		var snap Snapshot
		switch err := getJSON(b, id, &snap); err {
		case nil:
		case ErrNotFound:
			return nil
		default:
			return err
		}
		names := tx.Bucket(bucketSnapshotNames)
		if owner := names.Get([]byte(snap.Name)); string(owner) == id {
			if err := names.Delete([]byte(snap.Name)); err != nil {
				return err
			}
		}
		return b.Delete([]byte(id))
	})
}

// ListSnapshots pages through snapshots in ID order as ListVolumes does.
func (s *Store) ListSnapshots(start string, limit int, keep func(*Snapshot) bool) (snaps []*Snapshot, next string, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketSnapshots).Cursor()
		for k, data := c.Seek([]byte(start)); k != nil; k, data = c.Next() {
			snap := new(Snapshot)
			if err := jsonUnmarshal(k, data, snap); err != nil {
				return err
			}
			if keep != nil && !keep(snap) {
				continue
			}
			if limit > 0 && len(snaps) == limit {
				next = string(k)
				return nil
			}
			snaps = append(snaps, snap)
		}
		return nil
	})
	return snaps, next, err
}
