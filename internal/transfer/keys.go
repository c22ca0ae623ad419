package transfer

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unicode"
)

// MinKeyBytes is the shortest secret a key file may hold.
const MinKeyBytes = 32

const (
	maxKeyBytes  = 1024
	maxKeyIDLen  = 64
	maxKeyFile   = 1 << 20
	keyFileUsage = "one key per line: <key-id> <base64 of at least 32 random bytes>"
)

// key is one shared secret and the name it is sent under.
type key struct {
	id     string
	secret []byte
}

// keySet is one parsed key file: the first key proves, every key is
// accepted.
type keySet struct {
	keys []key
	byID map[string][]byte
}

func (s *keySet) first() key { return s.keys[0] }

func (s *keySet) lookup(id string) ([]byte, bool) {
	k, ok := s.byID[id]
	return k, ok
}

// Keyring is the set of keys of one key file. It re-reads the file whenever
// its identity (inode, size, modification time) changes, which is what a
// Kubernetes Secret volume does on an update (it swaps a symlink to a new
// directory), so a rotation needs no restart.
//
// When a changed file is not valid, the keyring fails closed: no
// connection is proven or accepted until the file is valid again, so a key
// meant to be dropped is never kept alive by a typo in its replacement.
type Keyring struct {
	path string

	mu   sync.Mutex
	info os.FileInfo // of the file the current set (or error) was read from
	set  *keySet
	err  error
}

// LoadKeyring reads the key file at path. Its format is one key per line,
// "<key-id> <base64 of at least 32 random bytes>"; blank lines and lines
// starting with '#' are ignored. The first key is the one this process
// proves itself with; every listed key is accepted from peers.
func LoadKeyring(path string) (*Keyring, error) {
	k := &Keyring{path: path}
	if err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload re-reads the key file now, whether or not it changed.
func (k *Keyring) Reload() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.load()
}

// Path is the key file's path.
func (k *Keyring) Path() string { return k.path }

// IDs are the ids of the keys currently in use, the proving one first.
func (k *Keyring) IDs() ([]string, error) {
	s, err := k.current()
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(s.keys))
	for i, x := range s.keys {
		ids[i] = x.id
	}
	return ids, nil
}

// current gives the key set of the file as it is now, reading it again if
// it changed since the last read. A stat by path is all it costs otherwise.
func (k *Keyring) current() (*keySet, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fi, err := os.Stat(k.path)
	if err != nil || k.info == nil || !sameFile(fi, k.info) {
		if lerr := k.load(); lerr != nil {
			return nil, lerr
		}
	}
	if k.err != nil {
		return nil, k.err
	}
	return k.set, nil
}

func sameFile(a, b os.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// load reads the file; k.mu is held. The stat recorded is that of the open
// file, so the contents read and the identity recorded belong together.
func (k *Keyring) load() error {
	set, fi, err := readKeyFile(k.path)
	k.info = fi
	if err != nil {
		k.set, k.err = nil, err
		return err
	}
	k.set, k.err = set, nil
	return nil
}

func readKeyFile(path string) (*keySet, os.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("transfer key file %s does not exist (mount the Secret holding the keys there): %w", path, err)
		}
		return nil, nil, fmt.Errorf("transfer key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("transfer key file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fi, fmt.Errorf("transfer key file %s: %w", path, err)
	}
	if len(data) > maxKeyFile {
		return nil, fi, fmt.Errorf("transfer key file %s: larger than %d bytes", path, maxKeyFile)
	}
	set, err := parseKeys(data)
	if err != nil {
		return nil, fi, fmt.Errorf("transfer key file %s: %w", path, err)
	}
	return set, fi, nil
}

// parseKeys parses a key file's contents. Its errors name the line, never
// the secret.
func parseKeys(data []byte) (*keySet, error) {
	set := &keySet{byID: map[string][]byte{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxKeyFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: %d fields, want 2 (%s)", n, len(f), keyFileUsage)
		}
		id, b64 := f[0], f[1]
		if err := checkKeyID(id); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if _, dup := set.byID[id]; dup {
			return nil, fmt.Errorf("line %d: key id %q listed twice", n, id)
		}
		secret, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			// Also take base64 without padding; never echo the text.
			var rerr error
			if secret, rerr = base64.RawStdEncoding.DecodeString(b64); rerr != nil {
				return nil, fmt.Errorf("line %d: key %q is not valid base64", n, id)
			}
		}
		if len(secret) < MinKeyBytes {
			return nil, fmt.Errorf("line %d: key %q has %d bytes, want at least %d (make one with: head -c 32 /dev/urandom | base64)", n, id, len(secret), MinKeyBytes)
		}
		if len(secret) > maxKeyBytes {
			return nil, fmt.Errorf("line %d: key %q has %d bytes, want at most %d", n, id, len(secret), maxKeyBytes)
		}
		set.keys = append(set.keys, key{id: id, secret: secret})
		set.byID[id] = secret
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(set.keys) == 0 {
		return nil, fmt.Errorf("no keys (%s)", keyFileUsage)
	}
	return set, nil
}

func checkKeyID(id string) error {
	if len(id) > maxKeyIDLen {
		return fmt.Errorf("key id longer than %d bytes", maxKeyIDLen)
	}
	for _, r := range id {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return fmt.Errorf("key id %q: only printable ASCII allowed", id)
		}
	}
	return nil
}
