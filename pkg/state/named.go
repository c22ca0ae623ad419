package state

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Volumes, snapshots and group snapshots are all "named records": a bucket
// of JSON records by ID plus a bucket mapping each name to its ID. These
// helpers keep the two in step.

// named is the part every named record shares in its JSON.
type named struct {
	Name string `json:"name"`
}

func getByID[T any](s *Store, bucket []byte, id string) (*T, error) {
	rec := new(T)
	if err := s.view(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bucket), id, rec) }); err != nil {
		return nil, err
	}
	return rec, nil
}

func getByName[T any](s *Store, bucket, names []byte, name string) (*T, error) {
	rec := new(T)
	err := s.view(func(tx *bolt.Tx) error {
		id := tx.Bucket(names).Get([]byte(name))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucket), string(id), rec)
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// putNamed stores rec under id and indexes it by name, durably. It fails
// with ErrNameTaken if the name belongs to another record.
func (s *Store) putNamed(bucket, names []byte, kind, id, name string, rec any) error {
	return s.update(func(tx *bolt.Tx) error {
		idx := tx.Bucket(names)
		if owner := idx.Get([]byte(name)); owner != nil && string(owner) != id {
			return fmt.Errorf("%s name %q: %w (%s)", kind, name, ErrNameTaken, owner)
		}
		if err := idx.Put([]byte(name), []byte(id)); err != nil {
			return err
		}
		return putJSON(tx.Bucket(bucket), id, rec)
	})
}

// deleteNamed removes a record and its name in tx; a missing record is not
// an error. It reports whether there was one.
func deleteNamed(tx *bolt.Tx, bucket, names []byte, id string) (bool, error) {
	b := tx.Bucket(bucket)
	var n named
	switch err := getJSON(b, id, &n); err {
	case nil:
	case ErrNotFound:
		return false, nil
	default:
		return false, err
	}
	idx := tx.Bucket(names)
	if owner := idx.Get([]byte(n.Name)); string(owner) == id {
		if err := idx.Delete([]byte(n.Name)); err != nil {
			return false, err
		}
	}
	return true, b.Delete([]byte(id))
}

// list returns up to limit records (all if limit <= 0) that match keep, in
// ID order, from the first ID >= start; next is where the following page
// starts, or "" when there is none.
func list[T any](s *Store, bucket []byte, start string, limit int, keep func(*T) bool) (recs []*T, next string, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		for k, data := c.Seek([]byte(start)); k != nil; k, data = c.Next() {
			rec := new(T)
			if err := jsonUnmarshal(k, data, rec); err != nil {
				return err
			}
			if keep != nil && !keep(rec) {
				continue
			}
			if limit > 0 && len(recs) == limit {
				next = string(k)
				return nil
			}
			recs = append(recs, rec)
		}
		return nil
	})
	return recs, next, err
}
