package ids

import (
	"path/filepath"
	"strings"
	"testing"
)

// An ID that validates can be joined under a root without escaping it.
func FuzzValidateVolumeID(f *testing.F) {
	for _, s := range []string{NewVolumeID(), "", "hpv1-", "../x", "hpv1-../../../../../../../../../../etc", "hpv1-0123456789abcdef0123456789abcdef", "/", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateVolumeID(id)
		if err != nil {
			if len(err.Error()) > 300 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		p := filepath.Join("/data/volumes", id)
		if filepath.Dir(p) != "/data/volumes" || filepath.Base(p) != id {
			t.Fatalf("valid ID %q escapes: %s", id, p)
		}
		if strings.ContainsAny(id, "/.\x00") {
			t.Fatalf("valid ID %q has a path character", id)
		}
	})
}
