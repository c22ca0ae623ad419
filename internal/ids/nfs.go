package ids

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strings"
)

// NFSVolumePrefixV1 starts every NFS volume ID of format 1:
//
//	nfs1:<server>:<share>:<subDir>:<key>
//
// such as nfs1:nfs.example.com:/srv/nfs:default/data:0123456789abcdef. A
// node plugin on any node reads it and mounts server:share/subDir without
// any shared state, and a person reads it in kubectl get pv. It is
// unambiguous: the server has no ':' (an IPv6 address is in brackets), the
// share has none (CreateVolume refuses one), the key is NFSKeyHexLen hex
// digits after the last ':', and the subDir is everything between, ':'s
// included.
const NFSVolumePrefixV1 = "nfs1:"

// NFSSnapshotPrefixV1 starts every NFS snapshot ID of format 1:
//
//	nfss1:<server>:<share>:<key>
const NFSSnapshotPrefixV1 = "nfss1:"

// NFSKeyHexLen is the length of the random key that ends an NFS ID: 16
// lowercase hex digits (64 random bits), unique per export, which names the
// volume's or snapshot's records on it (volumes/<key>.json). 64 bits keep a
// typical ID short; the driver checks that a new key is unused anyway.
const NFSKeyHexLen = 16

// CSIMaxStringBytes is the CSI spec's size limit of a string field, volume
// and snapshot IDs included (csi.proto: "SHALL NOT exceed 128 bytes" unless
// the field says otherwise).
const CSIMaxStringBytes = 128

// HiddenDir is the directory at the root of every export that holds the
// driver's records and snapshots; no volume's subDir may start with it.
const HiddenDir = ".hostpath-csi"

// Bounds keep IDs and messages small whatever a StorageClass says.
const (
	maxServerLen = 253
	maxShareLen  = 1024
	maxSubDirLen = 1024
	maxNFSIDLen  = len(NFSSnapshotPrefixV1) + maxServerLen + 1 + maxShareLen + 1 + maxSubDirLen + 1 + NFSKeyHexLen
)

// NFSVolume is what an NFS volume ID names.
type NFSVolume struct {
	Server string // host name, IPv4 address or [IPv6] address
	Share  string // absolute, clean path of the export on the server, no ':'
	SubDir string // relative, clean path of the volume below the share
	Key    string // NFSKeyHexLen lowercase hex digits, unique per volume on its export
}

// NFSSnapshot is what an NFS snapshot ID names.
type NFSSnapshot struct {
	Server, Share string
	Key           string // NFSKeyHexLen lowercase hex digits: snapshots/<Key> on the export
}

// Source is what a node mounts: "server:/share/subDir".
func (v NFSVolume) Source() string { return v.Server + ":" + path.Join(v.Share, v.SubDir) }

// Export is "server:/share", the export the volume lives on.
func (v NFSVolume) Export() string { return v.Server + ":" + v.Share }

// Export is "server:/share", the export the snapshot lives on.
func (s NFSSnapshot) Export() string { return s.Server + ":" + s.Share }

// NewNFSVolumeID returns the ID of a new volume in subDir of server:share,
// with a fresh random key. The fields must be valid.
func NewNFSVolumeID(server, share, subDir string) (string, NFSVolume, error) {
	v := NFSVolume{Server: server, Share: share, SubDir: subDir, Key: newNFSKey()}
	id, err := v.ID()
	return id, v, err
}

// NewNFSSnapshotID returns the ID of a new snapshot on server:share.
func NewNFSSnapshotID(server, share string) (string, NFSSnapshot, error) {
	s := NFSSnapshot{Server: server, Share: share, Key: newNFSKey()}
	id, err := s.ID()
	return id, s, err
}

// newNFSKey returns a fresh random key of NFSKeyHexLen hex digits.
func newNFSKey() string { return newID("")[:NFSKeyHexLen] }

// ID encodes v, after checking every field.
func (v NFSVolume) ID() (string, error) {
	if err := v.validate(); err != nil {
		return "", err
	}
	return NFSVolumePrefixV1 + v.Server + ":" + v.Share + ":" + v.SubDir + ":" + v.Key, nil
}

// ID encodes s, after checking every field.
func (s NFSSnapshot) ID() (string, error) {
	if err := s.validate(); err != nil {
		return "", err
	}
	return NFSSnapshotPrefixV1 + s.Server + ":" + s.Share + ":" + s.Key, nil
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
	return checkKey(v.Key)
}

func (s NFSSnapshot) validate() error {
	if err := ValidateNFSServer(s.Server); err != nil {
		return err
	}
	if err := ValidateNFSShare(s.Share); err != nil {
		return err
	}
	return checkKey(s.Key)
}

// IsNFSVolumeID reports whether id claims to be an NFS volume ID (by its
// prefix); ParseNFSVolumeID says whether it is a valid one.
func IsNFSVolumeID(id string) bool { return strings.HasPrefix(id, NFSVolumePrefixV1) }

// IsNFSSnapshotID is IsNFSVolumeID for snapshot IDs.
func IsNFSSnapshotID(id string) bool { return strings.HasPrefix(id, NFSSnapshotPrefixV1) }

// ParseNFSVolumeID decodes and validates an NFS volume ID with the same rules
// as the StorageClass parameters: a valid ID names a path below its share.
func ParseNFSVolumeID(id string) (NFSVolume, error) {
	const kind = "NFS volume"
	server, rest, key, err := splitNFS(id, NFSVolumePrefixV1, kind)
	if err != nil {
		return NFSVolume{}, err
	}
	share, subDir, ok := strings.Cut(rest, ":")
	if !ok {
		return NFSVolume{}, fmt.Errorf("%s ID %q has no ':' between share and subDir", kind, truncate(id))
	}
	v := NFSVolume{Server: server, Share: share, SubDir: subDir, Key: key}
	if err := v.validate(); err != nil {
		return NFSVolume{}, fmt.Errorf("%s ID %q: %w", kind, truncate(id), err)
	}
	return v, nil
}

// ParseNFSSnapshotID decodes and validates an NFS snapshot ID.
func ParseNFSSnapshotID(id string) (NFSSnapshot, error) {
	server, share, key, err := splitNFS(id, NFSSnapshotPrefixV1, "NFS snapshot")
	if err != nil {
		return NFSSnapshot{}, err
	}
	s := NFSSnapshot{Server: server, Share: share, Key: key}
	if err := s.validate(); err != nil {
		return NFSSnapshot{}, fmt.Errorf("NFS snapshot ID %q: %w", truncate(id), err)
	}
	return s, nil
}

// splitNFS takes an NFS ID apart: prefix, server (up to the first ':', or
// a bracketed IPv6 address), rest, ':' and the key. The fields are not
// validated yet.
func splitNFS(id, prefix, kind string) (server, rest, key string, err error) {
	if !strings.HasPrefix(id, prefix) {
		return "", "", "", fmt.Errorf("%s ID %q does not start with %s", kind, truncate(id), prefix)
	}
	if len(id) > maxNFSIDLen {
		return "", "", "", fmt.Errorf("%s ID %q is too long (%d bytes)", kind, truncate(id), len(id))
	}
	body := id[len(prefix):]
	if len(body) < NFSKeyHexLen+1 || body[len(body)-NFSKeyHexLen-1] != ':' {
		return "", "", "", fmt.Errorf("%s ID %q does not end with ':' and %d hex digits", kind, truncate(id), NFSKeyHexLen)
	}
	body, key = body[:len(body)-NFSKeyHexLen-1], body[len(body)-NFSKeyHexLen:]
	end := strings.IndexByte(body, ':')
	if strings.HasPrefix(body, "[") {
		end = strings.IndexByte(body, ']') + 1
	}
	if end <= 0 || end >= len(body) || body[end] != ':' {
		return "", "", "", fmt.Errorf("%s ID %q has no server (host name, IPv4 or [IPv6] address) before a ':'", kind, truncate(id))
	}
	return body[:end], body[end+1:], key, nil
}

func checkKey(s string) error {
	if len(s) != NFSKeyHexLen {
		return fmt.Errorf("key %q is not %d hex digits", truncate(s), NFSKeyHexLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("key %q has a character outside [0-9a-f]", truncate(s))
		}
	}
	return nil
}

// CanonicalNFSServer is the one spelling of a valid server that names its
// exports: a host name in lowercase (DNS names are case-insensitive), an
// IPv6 address in netip's form inside brackets ([2001:DB8:0::1] is
// [2001:db8::1]). Two classes that spell one server differently then share
// one export key: one mount, one set of locks, IDs that agree.
func CanonicalNFSServer(s string) string {
	if strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]") {
		if a, err := netip.ParseAddr(s[1 : len(s)-1]); err == nil {
			return "[" + a.String() + "]"
		}
		return s
	}
	return strings.ToLower(s)
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

// ValidateNFSShare checks the share parameter: an absolute, clean path
// without ':' (the separator of an NFS ID's fields).
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
	if strings.Contains(s, ":") {
		return fmt.Errorf("share %q has a ':', which separates the fields of a volume ID; export a path without one", truncate(s))
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
