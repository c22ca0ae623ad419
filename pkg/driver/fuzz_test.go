package driver

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
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

// Paging from any starting token: a token the driver did not issue is
// refused (ABORTED, or INVALID_ARGUMENT for a negative count); an accepted
// one yields a page in ID order, starting at the token, of at most
// max_entries volumes that exist, and a next token past every volume of
// the page from which the rest of the listing follows without a gap.
func FuzzPageToken(f *testing.F) {
	e := newEnv(f)
	var all []string
	for i := 0; i < 9; i++ {
		all = append(all, e.create(f, fmt.Sprint("page-", i)))
	}
	slices.Sort(all)
	f.Add("", int32(0))
	f.Add("invalid-token", int32(3))
	f.Add(all[4], int32(2))
	f.Add(ids.NewVolumeID(), int32(-1))
	f.Add("hpv1-ffffffffffffffffffffffffffffffff", int32(1))
	f.Fuzz(func(t *testing.T, token string, max int32) {
		resp, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token, MaxEntries: max})
		if err != nil {
			if c := status.Code(err); c != codes.Aborted && c != codes.InvalidArgument {
				t.Fatalf("code %s: %v", c, err)
			}
			return
		}
		var rest []string // what a listing from token must return, in order
		for _, id := range all {
			if id >= token {
				rest = append(rest, id)
			}
		}
		got := []string{}
		for _, en := range resp.GetEntries() {
			got = append(got, en.GetVolume().GetVolumeId())
		}
		if max > 0 && len(got) > int(max) {
			t.Fatalf("page of %d entries for max_entries %d", len(got), max)
		}
		if !slices.Equal(got, rest[:len(got)]) {
			t.Fatalf("page from %q = %v, want a prefix of %v", token, got, rest)
		}
		next := resp.GetNextToken()
		if (next == "") != (len(got) == len(rest)) {
			t.Fatalf("next token %q after %d of %d volumes", next, len(got), len(rest))
		}
		if next != "" && next != rest[len(got)] {
			t.Fatalf("next token %q, want %q (the first volume not listed)", next, rest[len(got)])
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
	if dirs, _ := e.d.hostpath.vols.List(); len(dirs) != 0 {
		t.Fatalf("refused requests left volumes: %v", dirs)
	}
}
