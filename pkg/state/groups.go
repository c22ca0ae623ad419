package state

import (
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
	return getByID[GroupSnapshot](s, bucketGroups, id)
}

// GetGroupByName returns the group snapshot with this name, or ErrNotFound.
func (s *Store) GetGroupByName(name string) (*GroupSnapshot, error) {
	return getByName[GroupSnapshot](s, bucketGroups, bucketGroupNames, name)
}

// PutGroup inserts or replaces a group snapshot and its name.
func (s *Store) PutGroup(g *GroupSnapshot) error {
	rec := *g
	return s.putNamed(bucketGroups, bucketGroupNames, "group snapshot", rec.ID, rec.Name, &rec)
}

// DeleteGroup removes a group snapshot record and its name (not its
// members); a missing one is not an error.
func (s *Store) DeleteGroup(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		_, err := deleteNamed(tx, bucketGroups, bucketGroupNames, id)
		return err
	})
}

// Groups returns every group snapshot (for start-up reconciliation).
func (s *Store) Groups() ([]*GroupSnapshot, error) {
	groups, _, err := list[GroupSnapshot](s, bucketGroups, "", 0, nil)
	return groups, err
}
