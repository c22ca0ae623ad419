package docs

import (
	"strings"
	"testing"
)

const (
	volA  = "hpv1-2f20157a82af5168ef53ecac0a017815"
	volB  = "hpv1-6c741192973b9ff1f0a9991527cc05ef"
	volC  = "hpv1-0d881f1b7f7b068817381c092b5030d1"
	snapA = "hps1-093a9a265975d3a06e61ace5b930aa85"
	snapB = "hps1-622359ee464de3a399f021b8a9a39a42"
	grpA  = "hpg1-00112233445566778899aabbccddeeff"
	grpB  = "hpg1-ffeeddccbbaa99887766554433221100"
	nfsA  = "nfs1:nfs.example.com:/srv/nfs:default/data:0123456789abcdef"
	nfsB  = "nfs1:nfs.example.com:/srv/nfs:default/data:fedcba9876543210"
	nfssA = "nfss1:[2001:db8::1]:/srv/nfs:0123456789abcdef"
	nfssB = "nfss1:[2001:db8::1]:/srv/nfs:aaaaaaaaaaaaaaaa"
)

// Each normalization matches any value of its kind, and only where it
// should.
func TestNormalizations(t *testing.T) {
	byName := map[string]bool{}
	for _, n := range Normalizations {
		byName[n.Name] = true
	}
	for _, tc := range []struct {
		rule             string
		expected, actual string
		match            bool
	}{
		{"klog header", `E1122 20:40:58.298903    4723 reconcile.go:120] "Found volume data"`, `E0101 01:02:03.000001 1 reconcile.go:99] "Found volume data"`, true},
		{"klog header", `E1122 20:40:58.298903    4723 reconcile.go:120] "Found"`, `I1122 20:40:58.298903    4723 reconcile.go:120] "Found"`, false},
		{"klog header", `E1122 20:40:58.298903    4723 reconcile.go:120] "Found"`, `E1122 20:40:58.298903    4723 reconcile.go:120] "Lost"`, false},
		{"RFC 3339 timestamp", "ready=true  2026-11-22T20:30:10Z", "ready=true  2027-01-02T03:04:05.123456+01:00", true},
		{"RFC 3339 timestamp", "ready=true  2026-11-22T20:30:10Z", "ready=true  2026-11-22 20:30:10", false},
		{"duration field", `mechanism="copy" duration="41.500824ms"`, `mechanism="copy" duration="2m0.5s"`, true},
		{"duration field", `mechanism="copy" duration="41.500824ms"`, `mechanism="reflink" duration="1ms"`, false},
		{"duration", "CreateVolume demo (64 MiB)   6.38ms  ok", "CreateVolume demo (64 MiB)  41.500824ms  ok", true},
		{"duration", "write it    160µs  ok", "write it 2.5s ok", true},
		{"duration", "in progress (running for 60ms); it goes on", "in progress (running for 1m30s); it goes on", true},
		{"duration", "6.38ms ok", "6.38 ms ok", false},
		{"duration", "64 MiB", "65 MiB", false},
		{"duration", "sha256 x", "sha512 x", false},
		{"duration", "10s", "10 s", false},
	} {
		t.Run(tc.rule+"/"+tc.actual, func(t *testing.T) {
			if !byName[tc.rule] {
				t.Fatalf("no normalization %q", tc.rule)
			}
			_, ok := matchLine(tc.expected, tc.actual, NewBindings())
			if ok != tc.match {
				t.Errorf("match(%q, %q) = %v, want %v", tc.expected, tc.actual, ok, tc.match)
			}
		})
	}
	// Every rule has a case above.
	tested := map[string]bool{}
	for _, n := range []string{"klog header", "RFC 3339 timestamp", "duration field", "duration"} {
		tested[n] = true
	}
	for n := range byName {
		if !tested[n] {
			t.Errorf("normalization %q has no test case", n)
		}
	}
}

// An NFS server whose name looks like a duration is part of the ID, not a
// duration.
func TestNormalizationsLeaveIDsAlone(t *testing.T) {
	id := "nfs1:host-10m.example:/srv:sub:0123456789abcdef"
	got, spans := normalize("volume " + id + " took 5ms")
	if want := "volume " + id + " took ⟪duration⟫"; got != want {
		t.Errorf("normalize: %q, want %q", got, want)
	}
	if len(spans) != 1 || idKinds[spans[0].kind].name != "NFS volume" {
		t.Errorf("IDs found: %+v", spans)
	}
}

func TestMatchLine(t *testing.T) {
	for _, tc := range []struct {
		name             string
		expected, actual string
		bound            map[string]string // doc -> actual, before
		want             map[string]string // bindings added; nil: no match
	}{
		{"equal", "demo passed", "demo passed", nil, map[string]string{}},
		{"different", "demo passed", "demo failed", nil, nil},
		{"trailing spaces", "demo passed  ", "demo passed", nil, map[string]string{}},
		{"runs of spaces", "a    b", "a b", nil, map[string]string{}},
		{"space is not nothing", "ab", "a b", nil, nil},
		{"... matches text", "version: ...", "version: v0.3.1-4-gcecad7d", nil, map[string]string{}},
		{"... matches nothing", "version: ...", "version:", nil, map[string]string{}},
		{"... in the middle", "csictl: rpc error: code = AlreadyExists desc = ...; this request asks ...", "csictl: rpc error: code = AlreadyExists desc = volume exists; this request asks for 5 bytes", nil, map[string]string{}},
		{"... between spaces matches nothing", "a ... b", "a b", nil, map[string]string{}},
		{"... between spaces matches words", "a ... b", "a x y b", nil, map[string]string{}},
		{"... between spaces keeps them apart", "a ... b", "ab", nil, nil},
		{"... at the start", "... passed", "passed", nil, map[string]string{}},
		{"... at the start, a word", "... passed", "demo passed", nil, map[string]string{}},
		{"... after a space is after a space", "version: ...", "version:x", nil, nil},
		{"... inside a word", "hps1-093a...", "hps1-093a9a26", nil, map[string]string{}},
		{"a dot before ...", `quarantine/stray-dir...."`, `quarantine/stray-dir.17953"`, nil, map[string]string{}},
		{"a dot before ... is a dot", `quarantine/stray-dir...."`, `quarantine/stray-dir-17953"`, nil, nil},
		{"... keeps the rest exact", "code = ... desc", "code = NotFound", nil, nil},
		{"unbound ID binds", volA + "  2147483648 bytes", volC + " 2147483648 bytes", nil, map[string]string{volA: volC}},
		{"bound ID must match", volA + " x", volC + " x", map[string]string{volA: volB}, nil},
		{"bound ID matches", volA + " x", volB + " x", map[string]string{volA: volB}, map[string]string{}},
		{"an actual ID is one doc ID's", volA + " x", volB + " x", map[string]string{volC: volB}, nil},
		{"kinds do not mix", volA, snapA, nil, nil},
		{"two doc IDs, two actual", "restore of volume " + volA + " from snapshot " + snapA, "restore of volume " + volC + " from snapshot " + snapB, nil,
			map[string]string{volA: volC, snapA: snapB}},
		{"one doc ID twice, two actual", volA + " " + volA, volB + " " + volC, nil, nil},
		{"two doc IDs, one actual", volA + " " + volB, volC + " " + volC, nil, nil},
		{"group snapshot", grpA + " ready", grpB + " ready", nil, map[string]string{grpA: grpB}},
		{"NFS volume", "created " + nfsA, "created " + nfsB, nil, map[string]string{nfsA: nfsB}},
		{"NFS snapshot", "snap " + nfssA + " ok", "snap " + nfssB + " ok", nil, map[string]string{nfssA: nfssB}},
		{"NFS volume of another export", "created " + nfsA, "created nfs1:other:/srv/nfs:default/data:fedcba9876543210", nil,
			map[string]string{nfsA: "nfs1:other:/srv/nfs:default/data:fedcba9876543210"}},
		{"an ID under ...", "ID ...", "ID " + volB, nil, map[string]string{}},
		{"a truncated ID is text", `snapshotID="hps1-093a..."`, `snapshotID="` + snapB + `"`, nil, nil},
		{"a truncated ID and ...", `snapshotID="hps1-...`, `snapshotID="` + snapB + `"`, nil, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBindings()
			for d, a := range tc.bound {
				b.bind(d, a)
			}
			got, ok := matchLine(tc.expected, tc.actual, b)
			if ok != (tc.want != nil) {
				t.Fatalf("match(%q, %q) = %v, want %v", tc.expected, tc.actual, ok, tc.want != nil)
			}
			if !ok {
				return
			}
			if len(got) != len(tc.want) {
				t.Errorf("bound %v, want %v", got, tc.want)
			}
			for d, a := range tc.want {
				if got[d] != a {
					t.Errorf("bound %s -> %s, want %s", d, got[d], a)
				}
			}
		})
	}
}

func TestMatchLines(t *testing.T) {
	for _, tc := range []struct {
		name             string
		expected, actual []string
		match            bool
	}{
		{"empty means empty", nil, nil, true},
		{"empty is not a line", nil, []string{""}, false},
		{"a line is not empty", []string{"x"}, nil, false},
		{"... alone matches nothing", []string{"..."}, nil, true},
		{"... alone matches lines", []string{"..."}, []string{"a", "b", "c"}, true},
		{"... then a line", []string{"...", "demo passed"}, []string{"go build", "make", "demo passed"}, true},
		{"... then a line missing", []string{"...", "demo passed"}, []string{"go build", "demo failed"}, false},
		{"line, ..., line", []string{"a", "...", "z"}, []string{"a", "z"}, true},
		{"two ...", []string{"...", "m", "...", "z"}, []string{"a", "m", "b", "m", "z"}, true},
		{"a line too many", []string{"a"}, []string{"a", "b"}, false},
		{"order matters", []string{"a", "b"}, []string{"b", "a"}, false},
		{"indented ... alone", []string{"  ...  "}, []string{"x"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := matchLines(tc.expected, tc.actual, NewBindings()); ok != tc.match {
				t.Errorf("match(%q, %q) = %v, want %v", tc.expected, tc.actual, ok, tc.match)
			}
		})
	}
}

// A binding made on a line a later ... backtracks over is not kept.
func TestMatchLinesBindsOnTheMatchingPath(t *testing.T) {
	b := NewBindings()
	nb, ok := matchLines([]string{"...", volA + " end"}, []string{volB + " x", volC + " end"}, b)
	if !ok {
		t.Fatal("no match")
	}
	if nb.docToActual[volA] != volC || len(nb.docToActual) != 1 {
		t.Errorf("bindings %v, want %s -> %s", nb.docToActual, volA, volC)
	}
	if len(b.docToActual) != 0 {
		t.Errorf("the bindings passed in changed: %v", b.docToActual)
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name    string
		c       Command
		r       Result
		wantErr string // "" for a match
	}{
		{"match", Command{Expected: []string{"ok"}}, Result{Output: "ok\n"}, ""},
		{"no output", Command{}, Result{}, ""},
		{"output expected none", Command{}, Result{Output: "x\n"}, "output differs"},
		{"wrong output", Command{Expected: []string{"ok"}}, Result{Output: "not ok\n"}, "- ok\n+ not ok\n"},
		{"wrong exit", Command{Expected: []string{"ok"}}, Result{Output: "ok\n", Status: 1}, "exit status differs (- expected, + actual):\n  ok\n+ [1]\n"},
		{"exit expected", Command{Expected: []string{"err"}, Status: 2}, Result{Output: "err\n", Status: 2}, ""},
		{"exit expected, got 0", Command{Expected: []string{"err"}, Status: 2}, Result{Output: "err\n"}, "- [2]"},
		{"other exit", Command{Status: 2}, Result{Status: 1}, "- [2]\n+ [1]"},
		{"still running", Command{Expected: []string{"..."}}, Result{Output: "I... Serving\n", Running: true}, ""},
		{"still running, exit expected", Command{Status: 1}, Result{Running: true}, "+ (still running)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.c, tc.r, NewBindings())
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Check: %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}

// A mismatch shows the actual IDs bound so far as the doc's, and a
// doc ID bound to another actual ID shows as that other one's doc ID.
func TestCheckDiffShowsDocIDs(t *testing.T) {
	b := NewBindings()
	b.bind(volA, volB)
	b.bind(volC, "hpv1-11111111111111111111111111111111")
	err := Check(Command{Expected: []string{volA + " healthy", "done 2ms"}}, Result{Output: "hpv1-11111111111111111111111111111111 healthy\ndone 7ms\n"}, b)
	if err == nil {
		t.Fatal("no mismatch")
	}
	want := "- " + volA + " healthy\n+ " + volC + " healthy\n  done 7ms\n"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("diff:\n%v\nwant it to contain:\n%s", err, want)
	}
}

func TestSplitEllipsis(t *testing.T) {
	for in, want := range map[string]string{
		"a ... b":        "a |...| b",
		"...":            "...",
		"a..":            "a..",
		"stray-dir....":  "stray-dir.|...",
		"x......y":       "x...|...|y",
		"......":         "...|...",
		"end...":         "end|...",
		"no dots at all": "no dots at all",
	} {
		if got := strings.Join(splitEllipsis(in), "|"); got != want {
			t.Errorf("splitEllipsis(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBindingsSubstitute(t *testing.T) {
	b := NewBindings()
	b.bind(volA, volB)
	if got := b.ToActual("csictl health " + volA + " " + volC); got != "csictl health "+volB+" "+volC {
		t.Errorf("ToActual: %q", got)
	}
	if got := b.ToDoc(volB + " healthy"); got != volA+" healthy" {
		t.Errorf("ToDoc: %q", got)
	}
}
