package ids

import (
	"path/filepath"
	"strings"
	"testing"
)

// An NFS volume ID that parses names a directory strictly below its share,
// outside the driver's hidden directory, has no control character, and
// encodes back to itself (one ID per volume).
func FuzzParseNFSVolumeID(f *testing.F) {
	id, _, _ := NewNFSVolumeID("server", "/export", "ns/claim")
	key := strings.Repeat("0", NFSKeyHexLen)
	for _, s := range []string{id, "", NFSVolumePrefixV1, "nfs1:s:/e:../x:" + key, "nfs1:s:/e:.hostpath-csi:" + key,
		"nfs1:[fd00::1]:/e:a:b:" + key, "nfs1:s:/e:x:d:" + key, "nfs1:[::1:/e:d:" + key, "nfs1-aaaa", "nfs1:s:/e:d\x00:" + key,
		"nfss1:s:/e:" + key, "nfss1:[::1]:/:" + key} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		// The snapshot parser shares the splitting: same promises.
		if s, err := ParseNFSSnapshotID(id); err != nil {
			if len(err.Error()) > 300 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
		} else if again, err := s.ID(); err != nil || again != id || hasControl(id) || strings.Contains(s.Share, ":") {
			t.Fatalf("snapshot ID %q parses as %+v, re-encodes as %q, %v", id, s, again, err)
		}
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
		if hasControl(id) {
			t.Fatalf("ID %q with a control character parses", id)
		}
		if strings.Contains(v.Share, ":") || len(v.Key) != NFSKeyHexLen {
			t.Fatalf("ID %q parses as share %q, key %q", id, v.Share, v.Key)
		}
		if again, err := v.ID(); err != nil || again != id {
			t.Fatalf("ID %q re-encodes as %q, %v", id, again, err)
		}
	})
}
