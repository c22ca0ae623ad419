package ids

import (
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"
)

// NFSVolumePrefixV1 starts every NFS volume ID of format 1: "nfs1-" and the
// lowercase, unpadded base32 of "server\nshare\nsubDir\nuuid-hex". A node
// plugin on any node decodes it and mounts server:share/subDir without any
// shared state.
const NFSVolumePrefixV1 = "nfs1-"

// NFSSnapshotPrefixV1 starts every NFS snapshot ID of format 1: the same
// encoding of "server\nshare\nsnapshot-hex".
const NFSSnapshotPrefixV1 = "nfss1-"

// HiddenDir is the directory at the root of every export that holds the
// driver's records and snapshots; no volume's subDir may start with it.
const HiddenDir = ".hostpath-csi"

// Bounds keep IDs and messages small whatever a StorageClass says.
const (
	maxServerLen = 253
	maxShareLen  = 1024
	maxSubDirLen = 1024
	maxNFSIDLen  = len(NFSSnapshotPrefixV1) + (maxServerLen+maxShareLen+maxSubDirLen+randomHexLen+3)*8/5 + 8
)

var nfsEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NFSVolume is what an NFS volume ID names.
type NFSVolume struct {
	Server string // host name, IPv4 address or [IPv6] address
	Share  string // absolute, clean path of the export on the server
	SubDir string // relative, clean path of the volume below the share
	UUID   string // 32 lowercase hex digits, unique per volume
}

// NFSSnapshot is what an NFS snapshot ID names.
type NFSSnapshot struct {
	Server, Share string
	Hex           string // 32 lowercase hex digits: snapshots/<Hex> on the export
}

// Source is what a node mounts: "server:/share/subDir".
func (v NFSVolume) Source() string { return v.Server + ":" + path.Join(v.Share, v.SubDir) }

// Export is "server:/share", the export the volume lives on.
func (v NFSVolume) Export() string { return v.Server + ":" + v.Share }

// Export is "server:/share", the export the snapshot lives on.
func (s NFSSnapshot) Export() string { return s.Server + ":" + s.Share }

// NewNFSVolumeID returns the ID of a new volume in subDir of server:share,
// with a fresh random UUID. The fields must be valid.
func NewNFSVolumeID(server, share, subDir string) (string, NFSVolume, error) {
	v := NFSVolume{Server: server, Share: share, SubDir: subDir, UUID: randomHex()}
	id, err := v.ID()
	return id, v, err
}

// NewNFSSnapshotID returns the ID of a new snapshot on server:share.
func NewNFSSnapshotID(server, share string) (string, NFSSnapshot, error) {
	s := NFSSnapshot{Server: server, Share: share, Hex: randomHex()}
	id, err := s.ID()
	return id, s, err
}

// ID encodes v, after checking every field.
func (v NFSVolume) ID() (string, error) {
	if err := v.validate(); err != nil {
		return "", err
	}
	return NFSVolumePrefixV1 + nfsEncoding.EncodeToString([]byte(v.Server+"\n"+v.Share+"\n"+v.SubDir+"\n"+v.UUID)), nil
}

// ID encodes s, after checking every field.
func (s NFSSnapshot) ID() (string, error) {
	if err := s.validate(); err != nil {
		return "", err
	}
	return NFSSnapshotPrefixV1 + nfsEncoding.EncodeToString([]byte(s.Server+"\n"+s.Share+"\n"+s.Hex)), nil
}

func (v NFSVolume) validate() error {
	if err := ValidateNFSServer(v.Server); err != nil {
		return err
	}
	if err := ValidateNFSShare(v.Share); err != nil {
		return err
	}
	if err := ValidateNFSSubDir(v.SubDir); err != nil {
		return err
	}
	return checkHex(v.UUID, "uuid")
}

func (s NFSSnapshot) validate() error {
	if err := ValidateNFSServer(s.Server); err != nil {
		return err
	}
	if err := ValidateNFSShare(s.Share); err != nil {
		return err
	}
	return checkHex(s.Hex, "snapshot")
}

// IsNFSVolumeID reports whether id claims to be an NFS volume ID (by its
// prefix); ParseNFSVolumeID says whether it is a valid one.
func IsNFSVolumeID(id string) bool { return strings.HasPrefix(id, NFSVolumePrefixV1) }

// IsNFSSnapshotID is IsNFSVolumeID for snapshot IDs.
func IsNFSSnapshotID(id string) bool { return strings.HasPrefix(id, NFSSnapshotPrefixV1) }

// ParseNFSVolumeID decodes and validates an NFS volume ID with the same rules
// as the StorageClass parameters: a valid ID names a path below its share.
func ParseNFSVolumeID(id string) (NFSVolume, error) {
	parts, err := decodeNFS(id, NFSVolumePrefixV1, "NFS volume", 4)
	if err != nil {
		return NFSVolume{}, err
	}
	v := NFSVolume{Server: parts[0], Share: parts[1], SubDir: parts[2], UUID: parts[3]}
	if err := v.validate(); err != nil {
		return NFSVolume{}, fmt.Errorf("NFS volume ID %q: %w", truncate(id), err)
	}
	return v, nil
}

// ParseNFSSnapshotID decodes and validates an NFS snapshot ID.
func ParseNFSSnapshotID(id string) (NFSSnapshot, error) {
	parts, err := decodeNFS(id, NFSSnapshotPrefixV1, "NFS snapshot", 3)
	if err != nil {
		return NFSSnapshot{}, err
	}
	s := NFSSnapshot{Server: parts[0], Share: parts[1], Hex: parts[2]}
	if err := s.validate(); err != nil {
		return NFSSnapshot{}, fmt.Errorf("NFS snapshot ID %q: %w", truncate(id), err)
	}
	return s, nil
}

func decodeNFS(id, prefix, kind string, fields int) ([]string, error) {
	if !strings.HasPrefix(id, prefix) || len(id) == len(prefix) {
		return nil, fmt.Errorf("%s ID %q does not start with %s", kind, truncate(id), prefix)
	}
	if len(id) > maxNFSIDLen {
		return nil, fmt.Errorf("%s ID %q is too long (%d bytes)", kind, truncate(id), len(id))
	}
	raw, err := nfsEncoding.DecodeString(id[len(prefix):])
	if err != nil {
		return nil, fmt.Errorf("%s ID %q is not lowercase base32 after %s", kind, truncate(id), prefix)
	}
	// Canonical only: one ID per volume (base32 has unused trailing bits).
	if nfsEncoding.EncodeToString(raw) != id[len(prefix):] {
		return nil, fmt.Errorf("%s ID %q is not in canonical form", kind, truncate(id))
	}
	parts := strings.Split(string(raw), "\n")
	if len(parts) != fields {
		return nil, fmt.Errorf("%s ID %q has %d fields, want %d", kind, truncate(id), len(parts), fields)
	}
	return parts, nil
}

func randomHex() string { return newID("") }

func checkHex(s, what string) error {
	if len(s) != randomHexLen {
		return fmt.Errorf("%s %q is not 32 hex digits", what, truncate(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%s %q has a character outside [0-9a-f]", what, truncate(s))
		}
	}
	return nil
}

// ValidateNFSServer checks the server parameter: a host name or IPv4 address
// ([A-Za-z0-9.-]), or an IPv6 address in brackets. No '/', ':' (outside
// brackets), space or control character can reach a mount source.
func ValidateNFSServer(s string) error {
	if s == "" {
		return errors.New("server is empty")
	}
	if len(s) > maxServerLen {
		return fmt.Errorf("server %q is longer than %d bytes", truncate(s), maxServerLen)
	}
	if s[0] == '[' {
		if s[len(s)-1] != ']' {
			return fmt.Errorf("server %q: an IPv6 address must be in brackets", truncate(s))
		}
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return fmt.Errorf("server %q is not an IPv6 address in brackets", truncate(s))
		}
		return nil
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("server %q has a character %q not allowed in a host name or address (an IPv6 address goes in brackets)", truncate(s), c)
		}
	}
	if s[0] == '-' || s[0] == '.' {
		return fmt.Errorf("server %q must start with a letter or digit", truncate(s))
	}
	return nil
}

// ValidateNFSShare checks the share parameter: an absolute, clean path.
func ValidateNFSShare(s string) error {
	if s == "" {
		return errors.New("share is empty")
	}
	if len(s) > maxShareLen {
		return fmt.Errorf("share %q is longer than %d bytes", truncate(s), maxShareLen)
	}
	if strings.ContainsAny(s, "\x00\n,") || hasControl(s) {
		return fmt.Errorf("share %q has a control character or ','", truncate(s))
	}
	if s[0] != '/' || path.Clean(s) != s {
		return fmt.Errorf("share %q is not an absolute, clean path (such as /export)", truncate(s))
	}
	return nil
}

// ValidateNFSSubDir checks a volume's directory below its share: relative,
// clean, no '..' or empty component, not inside the driver's hidden
// directory.
func ValidateNFSSubDir(s string) error {
	if s == "" {
		return errors.New("subDir is empty")
	}
	if len(s) > maxSubDirLen {
		return fmt.Errorf("subDir %q is longer than %d bytes", truncate(s), maxSubDirLen)
	}
	if strings.ContainsAny(s, "\x00\n,") || hasControl(s) {
		return fmt.Errorf("subDir %q has a control character or ','", truncate(s))
	}
	if s[0] == '/' || path.Clean(s) != s || s == "." {
		return fmt.Errorf("subDir %q is not a relative, clean path", truncate(s))
	}
	for _, c := range strings.Split(s, "/") {
		if c == ".." || c == "." || c == "" {
			return fmt.Errorf("subDir %q has a %q component", truncate(s), c)
		}
	}
	if first, _, _ := strings.Cut(s, "/"); first == HiddenDir {
		return fmt.Errorf("subDir %q is inside the driver's own directory %s", truncate(s), HiddenDir)
	}
	return nil
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}
