package docs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// realDocs are the docs the rules apply to: docs/*.md, whose transcripts
// run; and, once docs/ exists (README.md's content moves there), README.md
// for the coverage rule only.
func realDocs(t *testing.T, root string) []DocFile {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	var files []DocFile
	for _, n := range names {
		rel, _ := filepath.Rel(root, n)
		files = append(files, readDocFile(t, root, rel, true))
	}
	if len(files) > 0 {
		files = append(files, readDocFile(t, root, "README.md", false))
	}
	return files
}

func TestRealDocsAreDocsAndThenREADME(t *testing.T) {
	var got []string
	for _, f := range realDocs(t, fixtureRepo) {
		got = append(got, fmt.Sprintf("%s run=%v", f.Name, f.Run))
	}
	if want := "docs/bad.md run=true, docs/good.md run=true, README.md run=false"; strings.Join(got, ", ") != want {
		t.Errorf("files %q, want %s", got, want)
	}
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "README.md"), []byte("```sh\nkubectl get pv\n```\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if files := realDocs(t, empty); len(files) != 0 {
		t.Errorf("without docs/: %d files, want none", len(files))
	}
}

// Every command the docs show is run by a test: see the package comment.
func TestEveryCommandIsRun(t *testing.T) {
	files := realDocs(t, repoRoot)
	if len(files) == 0 {
		t.Log("no docs/*.md yet: nothing to check")
		return
	}
	r, err := LoadRepo(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range Coverage(r, files) {
		t.Error(u)
	}
}

// The docs' transcripts print what the docs say, each file against a
// fresh driver.
func TestTranscripts(t *testing.T) {
	var todo []DocFile
	for _, f := range realDocs(t, repoRoot) {
		if f.Run {
			todo = append(todo, f)
		}
	}
	if len(todo) == 0 {
		t.Log("no docs/*.md yet: nothing to run")
		return
	}
	runDocs(t, todo)
}

// runDocs runs the transcripts of files, each file against a driver of its
// own, one file after the other.
func runDocs(t *testing.T, files []DocFile) {
	type file struct {
		name string
		trs  []Transcript
	}
	var run []file
	for _, f := range files {
		trs, err := Transcripts(f.Doc)
		if err != nil {
			t.Errorf("%s: %v", f.Name, err)
			continue
		}
		if len(trs) > 0 {
			run = append(run, file{f.Name, trs})
		}
	}
	if len(run) == 0 {
		return
	}
	tree := builtTree(t)
	for _, f := range run {
		t.Run(filepath.Base(f.name), func(t *testing.T) {
			d, err := StartDriver(t, tree)
			if err != nil {
				t.Fatalf("%s: start the driver: %v", f.name, err)
			}
			if err := RunTranscripts(f.name, f.trs, d, NewBindings()); err != nil {
				t.Error(err)
				if b, err := os.ReadFile(filepath.Join(d.Dir, DriverLog)); err == nil {
					t.Logf("the log of the driver the runner started (until a doc stopped it):\n%s", d.toDoc(string(b)))
				}
			}
		})
	}
}
