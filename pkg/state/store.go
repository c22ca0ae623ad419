// Package state is the only place that persists the driver's metadata.
//
// It keeps volumes and publications in a bbolt database. Every change is one
// fsync'd transaction; concurrent changes are grouped into one commit (group
// commit) so throughput does not stop at one fsync per call. A record carries
// its own phase (creating, ready, deleting, ...): the phase is the operation's
// intent, written before the disk work starts and replaced by the result after,
// so that a restart can finish or roll back whatever a crash interrupted.
// The package knows nothing about gRPC or CSI.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout of the database this code writes. Open migrates
// older layouts forward and refuses newer ones.
const SchemaVersion = 2

// DBFileName is the database file inside the state directory.
const DBFileName = "state.db"

var (
	// ErrNotFound is returned when a record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNameTaken is returned when a name already belongs to another record.
	ErrNameTaken = errors.New("name already used by another record")
	// ErrClosed is returned for calls after Close.
	ErrClosed = errors.New("state store is closed")
)

var (
	bucketMeta          = []byte("meta")
	bucketVolumes       = []byte("volumes")
	bucketVolumeNames   = []byte("volume-names")
	bucketPublications  = []byte("publications")
	bucketSnapshots     = []byte("snapshots")
	bucketSnapshotNames = []byte("snapshot-names")
	bucketGroups        = []byte("group-snapshots")
	bucketGroupNames    = []byte("group-snapshot-names")
	keySchema           = []byte("schema-version")
)

// maxBatch bounds how many changes share one commit, so one commit's latency
// stays bounded under heavy load.
const maxBatch = 256

// Store is an open state database. It is safe for concurrent use.
type Store struct {
	db    *bolt.DB
	path  string
	queue chan *commitReq

	mu     sync.RWMutex // guards closed against concurrent update/Close
	closed bool
	done   chan struct{}
}

type commitReq struct {
	fn  func(*bolt.Tx) error
	res chan error
}

// Open opens (creating if needed) the state database in dir. The directory is
// created with mode 0700 and the file with 0600: it names every volume on the
// node. A second process opening the same database fails after a short wait
// instead of corrupting it.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	path := filepath.Join(dir, DBFileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open state database %s: another process holds it (is a second driver running on the same --state-dir?)", path)
		}
		return nil, fmt.Errorf("open state database %s: %w", path, err)
	}
	// The database file's entry in its directory must survive a power cut
	// as surely as the commits inside it.
	if err := syncDir(dir); err != nil {
		db.Close()
		return nil, err
	}
	// Write only when the layout needs it: a read-only check lets the driver
	// start on a full disk.
	err = db.View(schemaCurrent)
	if errors.Is(err, errSchemaChange) {
		err = db.Update(initSchema)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	s := &Store{db: db, path: path, queue: make(chan *commitReq, maxBatch), done: make(chan struct{})}
	go s.committer()
	return s, nil
}

// errSchemaChange says the layout must be written (created or migrated).
var errSchemaChange = errors.New("schema needs writing")

// schemaCurrent succeeds when the database already has this code's layout.
func schemaCurrent(tx *bolt.Tx) error {
	meta := tx.Bucket(bucketMeta)
	if meta == nil || string(meta.Get(keySchema)) != strconv.Itoa(SchemaVersion) {
		return errSchemaChange
	}
	for _, b := range currentBuckets {
		if tx.Bucket(b) == nil {
			return errSchemaChange
		}
	}
	return nil
}

// currentBuckets are the buckets of schema SchemaVersion.
var currentBuckets = [][]byte{bucketVolumes, bucketVolumeNames, bucketPublications, bucketSnapshots, bucketSnapshotNames,
	bucketGroups, bucketGroupNames}

func createBuckets(tx *bolt.Tx, names ...[]byte) error {
	for _, b := range names {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return nil
}

// migrations[v] turns a database of schema v into schema v+1, inside the
// opening transaction. Every layout ever written must stay migratable: a
// fixture of each is kept in testdata and opened by the tests.
var migrations = map[int]func(*bolt.Tx) error{
	// 0 -> 1: a new database gets the first layout.
	0: func(tx *bolt.Tx) error {
		return createBuckets(tx, bucketVolumes, bucketVolumeNames, bucketPublications)
	},
	// 1 -> 2: snapshots and group snapshots.
	1: func(tx *bolt.Tx) error {
		return createBuckets(tx, bucketSnapshots, bucketSnapshotNames, bucketGroups, bucketGroupNames)
	},
}

func initSchema(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	version := 0
	if v := meta.Get(keySchema); v != nil {
		if version, err = strconv.Atoi(string(v)); err != nil {
			return fmt.Errorf("unreadable schema version %q", v)
		}
	}
	if version > SchemaVersion {
		return fmt.Errorf("written by a newer driver (schema %d, this driver knows up to %d); upgrade the driver or restore a backup", version, SchemaVersion)
	}
	for v := version; v < SchemaVersion; v++ {
		if err := migrations[v](tx); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	// Buckets of the current layout that went missing are recreated.
	if err := createBuckets(tx, currentBuckets...); err != nil {
		return err
	}
	return meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close waits for pending commits and closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.queue)
	s.mu.Unlock()
	<-s.done
	return s.db.Close()
}

// update runs fn in a read-write transaction that is durable when update
// returns nil. fn may run more than once (when a batch is retried), so it must
// have no effects outside tx.
func (s *Store) update(fn func(*bolt.Tx) error) error {
	req := &commitReq{fn: fn, res: make(chan error, 1)}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return ErrClosed
	}
	s.queue <- req
	s.mu.RUnlock()
	return <-req.res
}

// committer is the single writer. It takes everything queued while the
// previous commit was being fsync'd and commits it together: no artificial
// delay, and batches grow exactly as fast as the load does.
func (s *Store) committer() {
	defer close(s.done)
	for first := range s.queue {
		batch := []*commitReq{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.queue:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		s.commit(batch)
	}
}

// commit runs a batch in one transaction. A change that fails takes the whole
// transaction down with it, so it is removed and run alone afterwards (its
// error is then exactly what it would have been on its own), and the rest is
// committed without it.
func (s *Store) commit(batch []*commitReq) {
	var solo []*commitReq
	for len(batch) > 0 {
		failed := -1
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, r := range batch {
				if err := r.fn(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, r := range batch {
				r.res <- err
			}
			break
		}
		solo = append(solo, batch[failed])
		batch = append(batch[:failed:failed], batch[failed+1:]...)
	}
	for _, r := range solo {
		r.res <- s.db.Update(r.fn)
	}
}

// view runs fn in a read-only transaction; readers never wait for writers.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	return s.db.View(fn)
}

func getJSON(b *bolt.Bucket, key string, v any) error {
	data := b.Get([]byte(key))
	if data == nil {
		return ErrNotFound
	}
	return jsonUnmarshal([]byte(key), data, v)
}

func jsonUnmarshal(key, data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode record %q: %w", key, err)
	}
	return nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode record %q: %w", key, err)
	}
	return b.Put([]byte(key), data)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	return nil
}
