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
		{"[::1]", "/e", "x:y"}, // ':' in the subDir and in the server's brackets
		{"nfs_1", "/e", "archived-x"},
		{"s", "/e", "a:b:c/d:"},
		{"s", "/e", ":"},
	} {
		id, v, err := NewNFSVolumeID(tc.server, tc.share, tc.subDir)
		if err != nil {
			t.Fatalf("NewNFSVolumeID(%q, %q, %q): %v", tc.server, tc.share, tc.subDir, err)
		}
		want := "nfs1:" + tc.server + ":" + tc.share + ":" + tc.subDir + ":" + v.Key
		if id != want || len(v.Key) != 16 {
			t.Fatalf("ID %q, want %q with a 16-hex key", id, want)
		}
		got, err := ParseNFSVolumeID(id)
		if err != nil || got != v {
			t.Fatalf("ParseNFSVolumeID(%q) = %+v, %v; want %+v", id, got, err, v)
		}
		if got.Server != tc.server || got.Share != tc.share || got.SubDir != tc.subDir {
			t.Fatalf("ParseNFSVolumeID(%q) = %+v", id, got)
		}
		if !IsNFSVolumeID(id) || IsNFSSnapshotID(id) {
			t.Fatalf("ID %q: IsNFSVolumeID %v, IsNFSSnapshotID %v", id, IsNFSVolumeID(id), IsNFSSnapshotID(id))
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

func TestParseNFSVolumeIDExample(t *testing.T) {
	const id = "nfs1:nfs.example.com:/srv/nfs:default/data:0123456789abcdef"
	v, err := ParseNFSVolumeID(id)
	want := NFSVolume{Server: "nfs.example.com", Share: "/srv/nfs", SubDir: "default/data", Key: "0123456789abcdef"}
	if err != nil || v != want {
		t.Fatalf("ParseNFSVolumeID(%q) = %+v, %v; want %+v", id, v, err, want)
	}
	v6, err := ParseNFSVolumeID("nfs1:[fd00::1]:/e:a:b:0123456789abcdef")
	if err != nil || v6.Server != "[fd00::1]" || v6.SubDir != "a:b" {
		t.Fatalf("IPv6 ID parsed as %+v, %v", v6, err)
	}
	// A share has no ':', so the first ':' after the server ends it: this
	// names subDir x:d of share /e, never subDir d of a share /e:x.
	v, err = ParseNFSVolumeID("nfs1:s:/e:x:d:" + want.Key)
	if err != nil || v.Share != "/e" || v.SubDir != "x:d" {
		t.Fatalf("ParseNFSVolumeID = %+v, %v; want share /e, subDir x:d", v, err)
	}
}

func TestNFSSnapshotIDRoundTrip(t *testing.T) {
	for _, server := range []string{"server", "[fd00::1]"} {
		id, s, err := NewNFSSnapshotID(server, "/export")
		if err != nil {
			t.Fatal(err)
		}
		if id != "nfss1:"+server+":/export:"+s.Key || len(s.Key) != 16 {
			t.Fatalf("snapshot ID %q", id)
		}
		got, err := ParseNFSSnapshotID(id)
		if err != nil || got != s || !IsNFSSnapshotID(id) || IsNFSVolumeID(id) {
			t.Fatalf("ParseNFSSnapshotID(%q) = %+v, %v; want %+v", id, got, err, s)
		}
		if ValidateSnapshotID(id) == nil {
			t.Fatalf("NFS snapshot ID %q passes as a hostpath ID", id)
		}
		if _, err := ParseNFSVolumeID(id); err == nil {
			t.Fatalf("snapshot ID %q parses as a volume ID", id)
		}
	}
}

// The sizes behind the driver's choice to allow an ID over the CSI limit
// (see nfsRecordNew): a typical ID is far below it, a snapshot ID always
// fits with a server of up to 64 bytes and a share of up to 32, and a
// volume of the default subDir template (pvc-<uuid>) does not always.
func TestNFSIDLengths(t *testing.T) {
	pv := "pvc-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
	id, _, err := NewNFSVolumeID("nfs.example.com", "/srv/nfs", pv)
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 87 {
		t.Fatalf("typical volume ID %q is %d bytes, want 87", id, len(id))
	}
	server, share := strings.Repeat("s", 64), "/"+strings.Repeat("e", 31)
	sid, _, err := NewNFSSnapshotID(server, share)
	if err != nil {
		t.Fatal(err)
	}
	if len(sid) > CSIMaxStringBytes {
		t.Fatalf("snapshot ID on a 64-byte server and a 32-byte share is %d bytes", len(sid))
	}
	id, _, err = NewNFSVolumeID(server, share, pv)
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 160 {
		t.Fatalf("default-template volume ID on a 64-byte server and a 32-byte share is %d bytes, want 160", len(id))
	}
}

func TestParseNFSVolumeIDRejects(t *testing.T) {
	key := "0123456789abcdef"
	raw := func(server, share, subDir, key string) string {
		return NFSVolumePrefixV1 + server + ":" + share + ":" + subDir + ":" + key
	}
	tests := []struct {
		name, id string
	}{
		{"empty", ""},
		{"prefix only", NFSVolumePrefixV1},
		{"hostpath", "hpv1-0123456789abcdef0123456789abcdef"},
		{"unreleased base32 format", "nfs1-on2gk5dfmvqxs3dbnzsgkzlmmvzwc3bnm5qxo4zamvxgc4bo"},
		{"uppercase prefix", strings.ToUpper(raw("s", "/e", "d", key))},
		{"snapshot prefix", "nfss1:s:/e:d:" + key},
		{"no subdir field", NFSVolumePrefixV1 + "s:/e:" + key},
		{"no server", NFSVolumePrefixV1 + ":/e:d:" + key},
		{"only key", NFSVolumePrefixV1 + ":" + key},
		{"no colon before key", NFSVolumePrefixV1 + "s:/e:d-" + key},
		{"dotdot subdir", raw("s", "/e", "../etc", key)},
		{"inner dotdot", raw("s", "/e", "a/../../b", key)},
		{"absolute subdir", raw("s", "/e", "/etc", key)},
		{"empty subdir", raw("s", "/e", "", key)},
		{"dot subdir", raw("s", "/e", ".", key)},
		{"double slash", raw("s", "/e", "a//b", key)},
		{"trailing slash", raw("s", "/e", "a/", key)},
		{"hidden dir", raw("s", "/e", ".hostpath-csi/snapshots", key)},
		{"hidden dir itself", raw("s", "/e", ".hostpath-csi", key)},
		{"relative share", raw("s", "export", "d", key)},
		{"unclean share", raw("s", "/e/../x", "d", key)},
		{"server with slash", raw("s/x", "/e", "d", key)},
		{"server with space", raw("s x", "/e", "d", key)},
		{"server option", raw("-oloop", "/e", "d", key)},
		{"ipv6 without brackets", raw("fd00::1", "/e", "d", key)},
		{"brackets not ipv6", raw("[1.2.3.4]", "/e", "d", key)},
		{"unclosed bracket", raw("[fd00::1", "/e", "d", key)},
		{"text after bracket", raw("[fd00::1]x", "/e", "d", key)},
		{"ipv6 zone", raw("[fe80::1%eth0]", "/e", "d", key)},
		{"nul", raw("s", "/e", "d\x00x", key)},
		{"newline", raw("s", "/e", "d\nx", key)},
		{"control in share", raw("s", "/e\tx", "d", key)},
		{"short key", raw("s", "/e", "d", "abc")},
		{"long key", raw("s", "/e", "d", key+"00")},
		{"old uuid key", raw("s", "/e", "d", key+key)},
		{"upper key", raw("s", "/e", "d", strings.ToUpper(key))},
		{"huge", raw("s", "/e", strings.Repeat("a", 1<<20), key)},
		{"long subdir", raw("s", "/e", strings.Repeat("a", 1025), key)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ParseNFSVolumeID(tc.id)
			if err == nil {
				t.Fatalf("ParseNFSVolumeID(%.60q) accepted: %+v", tc.id, v)
			}
			if len(err.Error()) > 300 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
		})
	}
}

func TestParseNFSSnapshotIDRejects(t *testing.T) {
	key := "0123456789abcdef"
	for _, id := range []string{
		"", NFSSnapshotPrefixV1, "hps1-0123456789abcdef0123456789abcdef",
		"nfs1:s:/e:d:" + key,
		"nfss1:s:/e:d:" + key, // a share cannot hold ':'
		"nfss1:s:/e:" + key + key,
		"nfss1:s:/e:" + strings.ToUpper(key),
		"nfss1:s:e:" + key,
		"nfss1::/e:" + key,
		"nfss1:s/x:/e:" + key,
		"nfss1:[fd00::1:/e:" + key,
		"nfss1:s:/e\n:" + key,
	} {
		if s, err := ParseNFSSnapshotID(id); err == nil {
			t.Errorf("ParseNFSSnapshotID(%q) accepted: %+v", id, s)
		}
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
	for _, s := range []string{"", "export", "/export/", "/a/../b", "/a//b", "/a\nb", "/a:b", "/a,b"} {
		if ValidateNFSShare(s) == nil {
			t.Errorf("share %q accepted", s)
		}
	}
	for _, s := range []string{"d", "a/b", "a:b", "ns/pvc-1"} {
		if err := ValidateNFSSubDir(s); err != nil {
			t.Errorf("subDir %q rejected: %v", s, err)
		}
	}
}

func TestCanonicalNFSServer(t *testing.T) {
	for in, want := range map[string]string{
		"nfs.example":            "nfs.example",
		"NFS.Example.COM":        "nfs.example.com",
		"10.0.0.1":               "10.0.0.1",
		"[2001:DB8:0:0::1]":      "[2001:db8::1]",
		"[2001:db8::1]":          "[2001:db8::1]",
		"[::FFFF:10.0.0.1]":      "[::ffff:10.0.0.1]",
		"[fe80:0000::0001:0002]": "[fe80::1:2]",
	} {
		if err := ValidateNFSServer(in); err != nil {
			t.Fatalf("ValidateNFSServer(%q): %v", in, err)
		}
		got := CanonicalNFSServer(in)
		if got != want {
			t.Errorf("CanonicalNFSServer(%q) = %q, want %q", in, got, want)
		}
		if again := CanonicalNFSServer(got); again != got {
			t.Errorf("CanonicalNFSServer(%q) = %q: not a fixed point", got, again)
		}
	}
}
