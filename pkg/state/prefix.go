package state

import (
	"bytes"

	bolt "go.etcd.io/bbolt"
)

// VolumesNamed returns the volumes whose name starts with prefix, in name
// order. It reads the name index from prefix on and those records alone,
// not every record as ListVolumes does: the node counts its inline volumes
// (named "csi-ephemeral:...") at every new one, among thousands of others.
func (s *Store) VolumesNamed(prefix string) ([]*Volume, error) {
	var vols []*Volume
	err := s.view(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketVolumes)
		c := tx.Bucket(bucketVolumeNames).Cursor()
		for k, id := c.Seek([]byte(prefix)); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, id = c.Next() {
			v := new(Volume)
			if err := getJSON(recs, string(id), v); err != nil {
				return err
			}
			vols = append(vols, v)
		}
		return nil
	})
	return vols, err
}
