package state

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// GroupSnapshot is a set of snapshots of several volumes taken together.
type GroupSnapshot struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// SourceVolumeIDs and SnapshotIDs are in the same order: member i is a
	// snapshot of volume i.
	SourceVolumeIDs []string          `json:"sourceVolumeIDs"`
	SnapshotIDs     []string          `json:"snapshotIDs"`
	Parameters      map[string]string `json:"parameters,omitempty"`
	Phase           Phase             `json:"phase"`
	CreatedAt       time.Time         `json:"createdAt"`
}

// GetGroup returns the group snapshot with this ID, or ErrNotFound.
func (s *Store) GetGroup(id string) (*GroupSnapshot, error) {
	var g GroupSnapshot
	err := s.view(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bucketGroups), id, &g) })
	if err != nil {
		return nil, err
	}
	return &g, nil
}

// GetGroupByName returns the group snapshot with this name, or ErrNotFound.
func (s *Store) GetGroupByName(name string) (*GroupSnapshot, error) {
	var g GroupSnapshot
	err := s.view(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketGroupNames).Get([]byte(name))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucketGroups), string(id), &g)
	})
	if err != nil {
		return nil, err
	}
	return &g, nil
}

// PutGroup inserts or replaces a group snapshot and its name.
func (s *Store) PutGroup(g *GroupSnapshot) error {
	rec := *g
	return s.update(func(tx *bolt.Tx) error {
		names := tx.Bucket(bucketGroupNames)
		if owner := names.Get([]byte(rec.Name)); owner != nil && string(owner) != rec.ID {
			return fmt.Errorf("group snapshot name %q: %w (%s)", rec.Name, ErrNameTaken, owner)
		}
		if err := names.Put([]byte(rec.Name), []byte(rec.ID)); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucketGroups), rec.ID, &rec)
	})
}

// DeleteGroup removes a group snapshot record and its name (not its
// members); a missing one is not an error.
func (s *Store) DeleteGroup(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		var g GroupSnapshot
		switch err := getJSON(b, id, &g); err {
		case nil:
		case ErrNotFound:
			return nil
		default:
			return err
		}
		names := tx.Bucket(bucketGroupNames)
		if owner := names.Get([]byte(g.Name)); string(owner) == id {
			if err := names.Delete([]byte(g.Name)); err != nil {
				return err
			}
		}
		return b.Delete([]byte(id))
	})
}

// Groups returns every group snapshot (for start-up reconciliation).
func (s *Store) Groups() ([]*GroupSnapshot, error) {
	var out []*GroupSnapshot
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketGroups).ForEach(func(k, v []byte) error {
			g := new(GroupSnapshot)
			if err := jsonUnmarshal(k, v, g); err != nil {
				return err
			}
			out = append(out, g)
			return nil
		})
	})
	return out, err
}
