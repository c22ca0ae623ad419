package driver

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// Whatever a StorageClass's subDir template and a claim's names are, a
// subdirectory that comes out is strictly below the share, outside the
// driver's own directory.
func FuzzExpandSubDir(f *testing.F) {
	for _, s := range [][3]string{
		{DefaultSubDir, "ns", "claim"},
		{"${pvc.metadata.namespace}/${pvc.metadata.name}", "ns", "../x"},
		{"a/${pvc.metadata.name}/b", "ns", ".."},
		{"${pvc.metadata.name}", ".hostpath-csi", ".hostpath-csi"},
		{"x/../${pvc.metadata.name}", "ns", "c"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, tmpl, ns, name string) {
		got, err := expandSubDir(tmpl, map[string]string{ParamPVCNamespace: ns, ParamPVCName: name, ParamPVName: name}, "req")
		if err != nil {
			return
		}
		if ids.ValidateNFSSubDir(got) != nil {
			t.Fatalf("expandSubDir(%q) = %q, which the ID format refuses", tmpl, got)
		}
		share := "/mnt/export"
		p := filepath.Join(share, got)
		if !strings.HasPrefix(p, share+"/") || strings.HasPrefix(p, share+"/"+ids.HiddenDir+"/") || p == share+"/"+ids.HiddenDir {
			t.Fatalf("expandSubDir(%q, %q, %q) = %q escapes: %s", tmpl, ns, name, got, p)
		}
	})
}
