package state

import (
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
	// SourceRequested is the source's RequestedBytes when the snapshot was
	// taken (0: none): the size a claim like the source's asks for. A
	// restore asking at least this much is accepted and made at least
	// SourceCapacity, as CSI lets a volume be larger than required.
	SourceRequested int64 `json:"sourceRequested,omitempty"`
	// The source's access type, layout and filesystem: a restore makes a
	// volume of the same kind ("" for snapshots made before layouts: a
	// mount directory).
	SourceAccessType string `json:"sourceAccessType,omitempty"`
	SourceLayout     string `json:"sourceLayout,omitempty"`
	SourceFSType     string `json:"sourceFSType,omitempty"`
	SourceFormatted  bool   `json:"sourceFormatted,omitempty"`
	// SizeBytes is the logical size of the files the snapshot copied (0
	// for a btrfs snapshot, which copies none); for logs and operators.
	// CSI's size_bytes is RestoreRequest().
	SizeBytes int64 `json:"sizeBytes"`
	// Mechanism is how the data was copied (reflink, copy, ...).
	Mechanism  string            `json:"mechanism"`
	Parameters map[string]string `json:"parameters,omitempty"`
	Phase      Phase             `json:"phase"`
	CreatedAt  time.Time         `json:"createdAt"`
	// GroupID is set on the members of a group snapshot; they are deleted
	// with their group, never alone.
	GroupID string `json:"groupID,omitempty"`
	// RoomBytes is the room on the data filesystem the snapshot keeps set
	// aside beyond the blocks it holds: while it is copied, what the copy
	// may take (its source's size); once ready, what its source may still
	// need because of it where nothing else counts that (see the driver).
	// 0 in records made before it was kept.
	RoomBytes int64 `json:"roomBytes,omitempty"`
}

// GetSnapshot returns the snapshot with this ID, or ErrNotFound.
func (s *Store) GetSnapshot(id string) (*Snapshot, error) {
	return getByID[Snapshot](s, bucketSnapshots, id)
}

// GetSnapshotByName returns the snapshot with this name, or ErrNotFound.
func (s *Store) GetSnapshotByName(name string) (*Snapshot, error) {
	return getByName[Snapshot](s, bucketSnapshots, bucketSnapshotNames, name)
}

// PutSnapshot inserts or replaces a snapshot and its name index entry.
func (s *Store) PutSnapshot(snap *Snapshot) error {
	rec := *snap
	return s.putNamed(bucketSnapshots, bucketSnapshotNames, "snapshot", rec.ID, rec.Name, &rec)
}

// DeleteSnapshot removes a snapshot and its name; a missing one is not an error.
func (s *Store) DeleteSnapshot(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		_, err := deleteNamed(tx, bucketSnapshots, bucketSnapshotNames, id)
		return err
	})
}

// ListSnapshots pages through snapshots in ID order as ListVolumes does.
func (s *Store) ListSnapshots(start string, limit int, keep func(*Snapshot) bool) ([]*Snapshot, string, error) {
	return list(s, bucketSnapshots, start, limit, keep)
}

// RestoreRequest is the least required_bytes a restore of s is accepted
// with, which CSI's size_bytes (Kubernetes' restoreSize) reports: the
// source's request where the driver made the source larger than asked, its
// capacity otherwise. The restored volume is never smaller than
// SourceCapacity whatever was asked.
func (s *Snapshot) RestoreRequest() int64 {
	if r := s.SourceRequested; r > 0 && r < s.SourceCapacity {
		return r
	}
	return s.SourceCapacity
}
