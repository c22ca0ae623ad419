package ids

import (
	"path/filepath"
	"strings"
	"testing"
)

// An NFS volume ID that parses names a directory strictly below its share,
// outside the driver's hidden directory, and encodes back to itself.
func FuzzParseNFSVolumeID(f *testing.F) {
	id, _, _ := NewNFSVolumeID("server", "/export", "ns/claim")
	for _, s := range []string{id, "", NFSVolumePrefixV1, encode(NFSVolumePrefixV1, "s", "/e", "../x", strings.Repeat("0", 32)),
		encode(NFSVolumePrefixV1, "s", "/e", ".hostpath-csi", strings.Repeat("0", 32)), "nfs1-aaaa"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		v, err := ParseNFSVolumeID(id)
		if err != nil {
			if len(err.Error()) > 300 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		root := filepath.Join("/mnt/export", v.Share)
		p := filepath.Join(root, v.SubDir)
		if !strings.HasPrefix(p, root+"/") && root != "/" {
			t.Fatalf("ID %q escapes its share: %s", id, p)
		}
		if strings.HasPrefix(v.SubDir, HiddenDir) && (len(v.SubDir) == len(HiddenDir) || v.SubDir[len(HiddenDir)] == '/') {
			t.Fatalf("ID %q names the hidden directory", id)
		}
		if again, err := v.ID(); err != nil || again != id {
			t.Fatalf("ID %q re-encodes as %q, %v", id, again, err)
		}
	})
}
