package ids

import (
	"strings"
	"testing"
)

func TestNFSVolumeIDRoundTrip(t *testing.T) {
	for _, tc := range []struct{ server, share, subDir string }{
		{"nfs.example.com", "/export", "pvc-1"},
		{"10.0.0.1", "/", "ns/claim"},
		{"[fd00::1]", "/srv/nfs/k8s", "a/b/c"},
		{"nfs_1", "/e", "archived-x"},
	} {
		id, v, err := NewNFSVolumeID(tc.server, tc.share, tc.subDir)
		if err != nil {
			t.Fatalf("NewNFSVolumeID(%q, %q, %q): %v", tc.server, tc.share, tc.subDir, err)
		}
		if !strings.HasPrefix(id, NFSVolumePrefixV1) || strings.ContainsAny(id, "/.=\n") || strings.ToLower(id) != id {
			t.Fatalf("ID %q is not prefix + lowercase base32", id)
		}
		got, err := ParseNFSVolumeID(id)
		if err != nil || got != v {
			t.Fatalf("ParseNFSVolumeID(%q) = %+v, %v; want %+v", id, got, err, v)
		}
		if ValidateVolumeID(id) == nil {
			t.Fatalf("NFS ID %q passes as a hostpath ID", id)
		}
		if _, err := ParseNFSSnapshotID(id); err == nil {
			t.Fatalf("volume ID %q parses as a snapshot ID", id)
		}
	}
	if got := (NFSVolume{Server: "s", Share: "/e", SubDir: "a/b"}).Source(); got != "s:/e/a/b" {
		t.Fatalf("Source() = %q", got)
	}
}

func TestNFSSnapshotIDRoundTrip(t *testing.T) {
	id, s, err := NewNFSSnapshotID("server", "/export")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseNFSSnapshotID(id)
	if err != nil || got != s || !IsNFSSnapshotID(id) || IsNFSVolumeID(id) {
		t.Fatalf("ParseNFSSnapshotID(%q) = %+v, %v; want %+v", id, got, err, s)
	}
	if ValidateSnapshotID(id) == nil {
		t.Fatalf("NFS snapshot ID %q passes as a hostpath ID", id)
	}
}

// encode builds an ID from raw fields without validation: what a hostile
// or corrupt caller could send.
func encode(prefix string, fields ...string) string {
	return prefix + nfsEncoding.EncodeToString([]byte(strings.Join(fields, "\n")))
}

func TestParseNFSVolumeIDRejects(t *testing.T) {
	uuid := strings.Repeat("ab", 16)
	tests := []struct {
		name, id string
	}{
		{"empty", ""},
		{"prefix only", NFSVolumePrefixV1},
		{"hostpath", "hpv1-0123456789abcdef0123456789abcdef"},
		{"uppercase", strings.ToUpper(encode(NFSVolumePrefixV1, "s", "/e", "d", uuid))},
		{"padding", encode(NFSVolumePrefixV1, "s", "/e", "d", uuid) + "===="},
		{"bad alphabet", NFSVolumePrefixV1 + "0189"},
		{"three fields", encode(NFSVolumePrefixV1, "s", "/e", "d")},
		{"five fields", encode(NFSVolumePrefixV1, "s", "/e", "d", uuid, "x")},
		{"dotdot subdir", encode(NFSVolumePrefixV1, "s", "/e", "../etc", uuid)},
		{"inner dotdot", encode(NFSVolumePrefixV1, "s", "/e", "a/../../b", uuid)},
		{"absolute subdir", encode(NFSVolumePrefixV1, "s", "/e", "/etc", uuid)},
		{"empty subdir", encode(NFSVolumePrefixV1, "s", "/e", "", uuid)},
		{"dot subdir", encode(NFSVolumePrefixV1, "s", "/e", ".", uuid)},
		{"double slash", encode(NFSVolumePrefixV1, "s", "/e", "a//b", uuid)},
		{"trailing slash", encode(NFSVolumePrefixV1, "s", "/e", "a/", uuid)},
		{"hidden dir", encode(NFSVolumePrefixV1, "s", "/e", ".hostpath-csi/snapshots", uuid)},
		{"relative share", encode(NFSVolumePrefixV1, "s", "export", "d", uuid)},
		{"unclean share", encode(NFSVolumePrefixV1, "s", "/e/../x", "d", uuid)},
		{"server with slash", encode(NFSVolumePrefixV1, "s/x", "/e", "d", uuid)},
		{"server with colon", encode(NFSVolumePrefixV1, "s:x", "/e", "d", uuid)},
		{"server with space", encode(NFSVolumePrefixV1, "s x", "/e", "d", uuid)},
		{"server option", encode(NFSVolumePrefixV1, "-oloop", "/e", "d", uuid)},
		{"ipv6 without brackets", encode(NFSVolumePrefixV1, "fd00::1", "/e", "d", uuid)},
		{"brackets not ipv6", encode(NFSVolumePrefixV1, "[1.2.3.4]", "/e", "d", uuid)},
		{"nul", encode(NFSVolumePrefixV1, "s", "/e", "d\x00x", uuid)},
		{"short uuid", encode(NFSVolumePrefixV1, "s", "/e", "d", "abc")},
		{"upper uuid", encode(NFSVolumePrefixV1, "s", "/e", "d", strings.ToUpper(uuid))},
		{"huge", NFSVolumePrefixV1 + strings.Repeat("a", 1<<20)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseNFSVolumeID(tc.id)
			if err == nil {
				t.Fatalf("ParseNFSVolumeID(%.60q) accepted", tc.id)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
		})
	}
}

func TestValidateNFSParameters(t *testing.T) {
	for _, s := range []string{"nfs", "nfs.example.com", "10.1.2.3", "[::1]", "[fd00::1:2]", "host-1"} {
		if err := ValidateNFSServer(s); err != nil {
			t.Errorf("server %q rejected: %v", s, err)
		}
	}
	for _, s := range []string{"", "a b", "a/b", "a:b", "[::1", "[zz]", "[fe80::1%eth0]", ".x", "-x", strings.Repeat("a", 300)} {
		if ValidateNFSServer(s) == nil {
			t.Errorf("server %q accepted", s)
		}
	}
	for _, s := range []string{"/", "/export", "/srv/nfs/k8s"} {
		if err := ValidateNFSShare(s); err != nil {
			t.Errorf("share %q rejected: %v", s, err)
		}
	}
	for _, s := range []string{"", "export", "/export/", "/a/../b", "/a//b", "/a\nb"} {
		if ValidateNFSShare(s) == nil {
			t.Errorf("share %q accepted", s)
		}
	}
}
