package driver

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

func FuzzParseParameters(f *testing.F) {
	f.Add(ParamMountPermissions, "0750", "", "")
	f.Add(ParamMountPermissions, "99999999999999999999", ParamPVCName, "x")
	f.Add("fsType", "ext4", "", "")
	f.Add(ParamMountPermissions, "-1", "\x00", "\x00")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		params := map[string]string{k1: v1, k2: v2}
		p, err := parseParameters(params)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("rejection with code %s, want InvalidArgument: %v", status.Code(err), err)
			}
			return
		}
		for k := range params {
			known := false
			for _, kk := range knownParameters {
				known = known || k == kk
			}
			if !known {
				t.Fatalf("accepted unknown parameter %q", k)
			}
		}
		if p.mode.Perm()&^0o777 != 0 {
			t.Fatalf("mode %v out of range", p.mode)
		}
	})
}

func FuzzCapacityRange(f *testing.F) {
	f.Add(int64(0), int64(0))
	f.Add(int64(-1), int64(5))
	f.Add(int64(1<<62), int64(0))
	f.Add(int64(10), int64(5))
	f.Fuzz(func(t *testing.T, req, lim int64) {
		const maxSize = 1 << 40
		size, err := capacityFor(&csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}, maxSize)
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument && c != codes.OutOfRange {
				t.Fatalf("code %s: %v", c, err)
			}
			return
		}
		if size <= 0 || size > maxSize || size < req || (lim > 0 && size > lim) {
			t.Fatalf("capacityFor(%d, %d) = %d", req, lim, size)
		}
	})
}

func FuzzRequirePath(f *testing.F) {
	for _, s := range []string{"/var/lib/kubelet/pods/x/mount", "", "a/b", "/a/../b", "/a/./b", "//a", "/a\x00", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if err := requirePath(p, "target_path"); err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code %s: %v", status.Code(err), err)
			}
			return
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
			t.Fatalf("accepted %q", p)
		}
		for _, part := range strings.Split(p, "/") {
			if part == ".." {
				t.Fatalf("accepted a parent reference: %q", p)
			}
		}
	})
}

// Any token is either refused with Aborted (or InvalidArgument for a negative
// count) or accepted and usable; none panics or reaches the store unchecked.
func FuzzPageToken(f *testing.F) {
	f.Add("", int32(0))
	f.Add("invalid-token", int32(3))
	f.Add(ids.NewVolumeID(), int32(-1))
	f.Add("hpv1-ffffffffffffffffffffffffffffffff", int32(1))
	f.Fuzz(func(t *testing.T, token string, max int32) {
		err := pageToken(max, token)
		if err != nil {
			if c := status.Code(err); c != codes.Aborted && c != codes.InvalidArgument {
				t.Fatalf("code %s: %v", c, err)
			}
			return
		}
		if max < 0 || (token != "" && ids.ValidateVolumeID(token) != nil) {
			t.Fatalf("accepted token %q with max %d", token, max)
		}
	})
}

// Oversized requests are refused with InvalidArgument, not stored or logged.
func TestHugeParameters(t *testing.T) {
	e := newEnv(t)
	many := map[string]string{}
	for i := 0; i < 100000; i++ {
		many[strings.Repeat("k", i%50)+string(rune('a'+i%26))+strings.Repeat("z", i/1300)] = "v"
	}
	tests := map[string]map[string]string{
		"4 MiB value":  {ParamMountPermissions: strings.Repeat("7", 4<<20)},
		"4 MiB key":    {strings.Repeat("k", 4<<20): "1"},
		"100k keys":    many,
		"NUL key":      {"a\x00b": "1"},
		"huge octal":   {ParamMountPermissions: "077777777777777777777777"},
		"not octal":    {ParamMountPermissions: "0999"},
		"negative":     {ParamMountPermissions: "-0755"},
		"setuid+extra": {ParamMountPermissions: "17777"},
	}
	for name, params := range tests {
		t.Run(name, func(t *testing.T) {
			req := createReq("huge", 1<<20)
			req.Parameters = params
			_, err := e.d.CreateVolume(ctx, req)
			wantCode(t, err, codes.InvalidArgument)
			if n := len(status.Convert(err).Message()); n > 1024 {
				t.Fatalf("error message of %d bytes", n)
			}
		})
	}
	if dirs, _ := e.d.vols.List(); len(dirs) != 0 {
		t.Fatalf("refused requests left volumes: %v", dirs)
	}
}
