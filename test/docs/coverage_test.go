package docs

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/test/docs/markdown"
)

const fixtureRepo = "testdata/repo"

func readDocFile(t *testing.T, root, name string, run bool) DocFile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, name))
	if err != nil {
		t.Fatal(err)
	}
	d, err := markdown.Parse(string(b))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return DocFile{Name: name, Doc: d, Run: run}
}

func TestLoadRepo(t *testing.T) {
	r, err := LoadRepo(fixtureRepo)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(sortedKeys(r.MakeTargets), " "), "build demo run test"; got != want {
		t.Errorf("make targets %q, want %q", got, want)
	}
	if got, want := strings.Join(sortedKeys(r.AptPackages), " "), "btrfs-progs qemu-system-x86 xfsprogs"; got != want {
		t.Errorf("packages %q, want %q", got, want)
	}
}

func sortedKeys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The coverage rules on fixture docs: every command of good.md is
// accounted for (bad.md's ./_output/csictl info too: good.md runs it), and
// each other one of bad.md and README.md fails, with its line; so does a
// README console block that is not a copy of one that runs.
func TestCoverage(t *testing.T) {
	r, err := LoadRepo(fixtureRepo)
	if err != nil {
		t.Fatal(err)
	}
	files := []DocFile{
		readDocFile(t, fixtureRepo, "docs/good.md", true),
		readDocFile(t, fixtureRepo, "docs/bad.md", true),
		readDocFile(t, fixtureRepo, "README.md", false),
	}
	want := []struct {
		file string
		line int
		why  string
	}{
		{"docs/bad.md", 4, `make nosuchtarget: the Makefile has no target "nosuchtarget"`},
		{"docs/bad.md", 5, "make -j2 build: make option -j2"},
		{"docs/bad.md", 6, "make: make without a target"},
		{"docs/bad.md", 7, `make notarule: the Makefile has no target "notarule"`},
		{"docs/bad.md", 8, "apt-get install notinstalled: package notinstalled is not one .ci/run installs"},
		{"docs/bad.md", 9, "apt-get install: apt-get install without a package"},
		{"docs/bad.md", 10, `go test -run TestNothing ./pkg/a/: go test -run "TestNothing" names no Test/Example/Fuzz in ./pkg/a/`},
		{"docs/bad.md", 11, `go test -run "Testlower" names no Test`},
		{"docs/bad.md", 12, `go test -run "TestMethod" names no Test`},
		{"docs/bad.md", 13, "go test package ./pkg/nosuch/: no such directory"},
		{"docs/bad.md", 14, "go test package ./sub/b/: it is in the module sub"},
		{"docs/bad.md", 15, "go test without -run, -bench or -fuzz"},
		{"docs/bad.md", 16, "go test without a package"},
		{"docs/bad.md", 17, `go test -bench "Nothing" names no Benchmark in ./pkg/a/`},
		{"docs/bad.md", 18, "go test flag -frobnicate: not one the docs tests know"},
		{"docs/bad.md", 19, `go test -run "TestInner" names no Test/Example/Fuzz in ./pkg/a/`},
		{"docs/bad.md", 20, "kubectl get pv: no test runs this"},
		{"docs/bad.md", 21, "make build && make test: more than one command"},
		{"docs/bad.md", 22, "make test > log: more than one command, or a redirection"},
		{"docs/bad.md", 28, "./_output/csictl list: no test runs this"},
		{"docs/bad.md", 33, "make demo: a command in a block without the console info string"},
		{"docs/bad.md", 38, "make demo: a command in a block without the console info string"},
		{"docs/bad.md", 41, `make nosuchtarget: the Makefile has no target "nosuchtarget"`},
		{"docs/bad.md", 43, `line 43: unknown doctest directive "restart" before a "sh" block`},
		{"docs/bad.md", 49, `go test -run "TestAlpha|TestNoSuchThing": its alternative "TestNoSuchThing" names no Test/Example/Fuzz in ./pkg/a/`},
		{"docs/bad.md", 50, `go test -run "TestAlpha|": the alternative "" matches every test`},
		{"docs/bad.md", 53, `info string "shell", which the docs tests do not know`},
		{"README.md", 3, "a console block that is not the same lines as any console block of docs/*.md that TestTranscripts runs"},
		{"README.md", 20, "make e2e runs the e2e blocks of docs/*.md only"},
	}
	got := Coverage(r, files)
	for i := 0; i < len(got) || i < len(want); i++ {
		switch {
		case i >= len(got):
			t.Errorf("missing: %s:%d: %s", want[i].file, want[i].line, want[i].why)
		case i >= len(want):
			t.Errorf("unexpected: %v", got[i])
		case got[i].File != want[i].file || got[i].Line != want[i].line || !strings.Contains(got[i].String(), want[i].why):
			t.Errorf("got  %v\nwant %s:%d: ...%s...", got[i], want[i].file, want[i].line, want[i].why)
		}
	}
}

func TestStripComment(t *testing.T) {
	for in, want := range map[string]string{
		"make run     # the driver":       "make run",
		"# all comment":                   "",
		"go test -run 'a#b' ./x/ # c":     "go test -run 'a#b' ./x/",
		`echo "# not" # yes`:              `echo "# not"`,
		"echo a#b":                        "echo a#b",
		`echo \# not`:                     `echo \# not`,
		"make run\t# tab":                 "make run",
		`echo "it's" # quote in a string`: `echo "it's"`,
	} {
		if got := markdown.StripComment(in); got != want {
			t.Errorf("markdown.StripComment(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestShellWords(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string // words joined by |
		wantErr bool
	}{
		{"go test -run '^$' -bench Boot ./test/vm/", "go|test|-run|^$|-bench|Boot|./test/vm/", false},
		{`make "a b" c\ d`, "make|a b|c d", false},
		{"A=1 B='x y' make test", "A=1|B=x y|make|test", false},
		{"make a; make b", "", true},
		{"make a | tee", "", true},
		{"make $(echo a)", "", true},
		{"make 'a", "", true},
	} {
		w, err := shellWords(tc.in)
		if (err != nil) != tc.wantErr || err == nil && strings.Join(w, "|") != tc.want {
			t.Errorf("shellWords(%q) = %q, %v; want %q (error %v)", tc.in, w, err, tc.want, tc.wantErr)
		}
	}
}

func TestTopLevelAlternatives(t *testing.T) {
	for _, tc := range []struct {
		re, want string // want: the alternatives' top-level parts, joined by " ; "
		wantErr  bool
	}{
		{re: "TestA", want: "TestA"},
		{re: "TestA|TestB", want: "TestA ; TestB"},
		{re: "TestA/sub|TestB", want: "TestA ; TestB"},
		{re: "^(TestA|TestB)$", want: "^(TestA|TestB)$"},
		{re: `TestA\|B|TestC`, want: `TestA\|B ; TestC`},
		{re: "Test[|]A", want: "Test[|]A"},
		{re: "TestA|", wantErr: true},
		{re: "TestA|/sub", wantErr: true},
		{re: "Test(", wantErr: true},
	} {
		alts, err := topLevelAlternatives(tc.re)
		var got []string
		for _, a := range alts {
			got = append(got, a.re.String())
		}
		if (err != nil) != tc.wantErr || err == nil && strings.Join(got, " ; ") != tc.want {
			t.Errorf("topLevelAlternatives(%q) = %q, %v; want %q (error %v)", tc.re, got, err, tc.want, tc.wantErr)
		}
	}
}
