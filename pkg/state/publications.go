package state

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// PublicationKind says whether a path is a staging path or a publish target.
type PublicationKind string

const (
	KindStage   PublicationKind = "stage"
	KindPublish PublicationKind = "publish"
)

// Publication phases: mounting and unmounting are intents.
const (
	PhaseMounting   Phase = "mounting"
	PhaseMounted    Phase = "mounted"
	PhaseUnmounting Phase = "unmounting"
)

// Publication records that a volume is (being) mounted at a path on a node.
type Publication struct {
	VolumeID string          `json:"volumeID"`
	NodeID   string          `json:"nodeID"`
	Kind     PublicationKind `json:"kind"`
	Path     string          `json:"path"`
	// StagingPath is the staging path a publish target was bound from.
	StagingPath string   `json:"stagingPath,omitempty"`
	ReadOnly    bool     `json:"readOnly,omitempty"`
	MountFlags  []string `json:"mountFlags,omitempty"`
	// AccessMode is the CSI access mode name the volume was published with.
	AccessMode string `json:"accessMode,omitempty"`
	// Device is the loop device a block volume's stage attached.
	Device string `json:"device,omitempty"`
	// ReadAheadBefore is, on a stage of an image or block volume, the
	// read-ahead (KiB) of its loop device before the driver first set the
	// volume's readAheadKiB on it: put back when the stage is undone, since
	// the device outlives the volume's use of it and some kernels keep the
	// value for its next user. nil: never changed.
	ReadAheadBefore *uint32 `json:"readAheadKiBBefore,omitempty"`
	Phase           Phase   `json:"phase"`
	// Backend is "" for a volume of this store, or the backend ("nfs") of
	// a volume whose record lives elsewhere (on its export): such a
	// publication is kept without a volume record on this node.
	Backend string `json:"backend,omitempty"`
}

// Key identifies a publication; paths cannot contain NUL, so it is unambiguous.
func (p *Publication) key() []byte {
	return publicationKey(p.VolumeID, p.Kind, p.Path)
}

func publicationKey(volumeID string, kind PublicationKind, path string) []byte {
	return []byte(volumeID + "\x00" + string(kind) + "\x00" + path)
}

// PutPublication inserts or replaces a publication durably. The volume must
// exist, unless the publication is of another backend's volume.
func (s *Store) PutPublication(p *Publication) error {
	rec := *p
	return s.update(func(tx *bolt.Tx) error {
		if rec.Backend == "" && tx.Bucket(bucketVolumes).Get([]byte(rec.VolumeID)) == nil {
			return fmt.Errorf("publication of volume %s: %w", rec.VolumeID, ErrNotFound)
		}
		return putJSON(tx.Bucket(bucketPublications), string(rec.key()), &rec)
	})
}

// DeletePublication removes one publication; a missing one is not an error.
func (s *Store) DeletePublication(volumeID string, kind PublicationKind, path string) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPublications).Delete(publicationKey(volumeID, kind, path))
	})
}

// GetPublication returns one publication, or ErrNotFound.
func (s *Store) GetPublication(volumeID string, kind PublicationKind, path string) (*Publication, error) {
	var p Publication
	err := s.view(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bucketPublications), string(publicationKey(volumeID, kind, path)), &p)
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// PublicationsOf returns every publication of a volume.
func (s *Store) PublicationsOf(volumeID string) ([]*Publication, error) {
	var pubs []*Publication
	err := s.view(func(tx *bolt.Tx) error {
		return scanPublications(tx, []byte(volumeID+"\x00"), func(k []byte, p *Publication) error {
			pubs = append(pubs, p)
			return nil
		})
	})
	return pubs, err
}

// AllPublications returns every publication on record.
func (s *Store) AllPublications() ([]*Publication, error) {
	var pubs []*Publication
	err := s.view(func(tx *bolt.Tx) error {
		return scanPublications(tx, nil, func(k []byte, p *Publication) error {
			pubs = append(pubs, p)
			return nil
		})
	})
	return pubs, err
}

func scanPublications(tx *bolt.Tx, prefix []byte, fn func(k []byte, p *Publication) error) error {
	c := tx.Bucket(bucketPublications).Cursor()
	for k, data := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, data = c.Next() {
		p := new(Publication)
		if err := jsonUnmarshal(k, data, p); err != nil {
			return err
		}
		if err := fn(k, p); err != nil {
			return err
		}
	}
	return nil
}

func deletePublicationsOf(tx *bolt.Tx, volumeID string) error {
	var keys [][]byte
	if err := scanPublications(tx, []byte(volumeID+"\x00"), func(k []byte, _ *Publication) error {
		keys = append(keys, append([]byte(nil), k...))
		return nil
	}); err != nil {
		return err
	}
	b := tx.Bucket(bucketPublications)
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
