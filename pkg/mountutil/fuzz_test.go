package mountutil

import (
	"strings"
	"testing"
)

func FuzzParseFlags(f *testing.F) {
	for _, s := range []string{"ro", "noexec,nosuid", "uid=0", ",,", "ro,bind,remount", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, opts string) {
		_, err := ParseFlags([]string{opts})
		if err != nil {
			return
		}
		for _, o := range strings.Split(opts, ",") {
			if o = strings.TrimSpace(o); o != "" {
				if _, ok := flagBits[o]; !ok {
					t.Fatalf("accepted unknown option %q", o)
				}
			}
		}
	})
}
