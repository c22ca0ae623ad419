// Package ids generates and validates the identifiers the driver hands out.
//
// Every ID carries its format version in its prefix so that a later format can
// be added without ever failing to parse one we already gave to a cluster:
// IDs live in PersistentVolume objects for years.
package ids

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// VolumePrefixV1 starts every volume ID of format 1: "hpv1-" and 32 lowercase
// hex digits (128 random bits).
const VolumePrefixV1 = "hpv1-"

// SnapshotPrefixV1 starts every snapshot ID of format 1, as VolumePrefixV1
// does for volumes.
const SnapshotPrefixV1 = "hps1-"

// GroupSnapshotPrefixV1 starts every volume group snapshot ID of format 1.
const GroupSnapshotPrefixV1 = "hpg1-"

const randomHexLen = 32

// NewVolumeID returns a fresh, random volume ID in the current format.
func NewVolumeID() string { return newID(VolumePrefixV1) }

// NewSnapshotID returns a fresh, random snapshot ID in the current format.
func NewSnapshotID() string { return newID(SnapshotPrefixV1) }

// NewGroupSnapshotID returns a fresh, random group snapshot ID.
func NewGroupSnapshotID() string { return newID(GroupSnapshotPrefixV1) }

func newID(prefix string) string {
	var b [randomHexLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand never fails on Linux >= 3.17; a failure means the
		// process cannot be trusted to make unique IDs at all.
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return prefix + hex.EncodeToString(b[:])
}

// ValidateVolumeID reports whether id is a volume ID in a format this driver
// has ever produced. It must be called before any path is built from an ID:
// a valid ID contains only [a-z0-9-], so it cannot name a parent directory,
// an absolute path or a hidden file.
func ValidateVolumeID(id string) error { return validate(id, VolumePrefixV1, "volume") }

// ValidateSnapshotID is ValidateVolumeID for snapshot IDs.
func ValidateSnapshotID(id string) error { return validate(id, SnapshotPrefixV1, "snapshot") }

// ValidateGroupSnapshotID is ValidateVolumeID for group snapshot IDs.
func ValidateGroupSnapshotID(id string) error {
	return validate(id, GroupSnapshotPrefixV1, "group snapshot")
}

func validate(id, prefix, kind string) error {
	if len(id) != len(prefix)+randomHexLen || id[:len(prefix)] != prefix {
		return fmt.Errorf("%s ID %q is not of the form %s<32 hex digits>", kind, truncate(id), prefix)
	}
	for i := len(prefix); i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%s ID %q has a character outside [0-9a-f] after %s", kind, truncate(id), prefix)
		}
	}
	return nil
}

// truncate keeps error messages readable when a caller sends megabytes: it
// keeps as much of s as %q shows in about 40 characters (a byte that is not
// UTF-8 shows as 4, \x9a), so a message that quotes an ID and one of its
// fields stays short whatever the bytes.
func truncate(s string) string {
	const max = 40 // characters of %q output
	w := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		n := 4 // \xNN
		if r != utf8.RuneError || size > 1 {
			n = len(strconv.Quote(s[i:i+size])) - 2
		}
		if w+n > max {
			return s[:i] + "..."
		}
		w += n
		i += size
	}
	return s
}
