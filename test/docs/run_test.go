package docs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/test/docs/markdown"
)

// shellSession runs commands with a real Shell but no driver; a restart
// is recorded, and appended to the file restarts where commands can see it.
type shellSession struct {
	*Shell
	restarts []string
}

func (s *shellSession) Restart(flags []string) error {
	line := strings.TrimSpace("restart " + strings.Join(flags, " "))
	s.restarts = append(s.restarts, line)
	f, err := os.OpenFile(filepath.Join(s.Dir, "restarts"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(line + "\n")
	return err
}

func newShellSession(t *testing.T) *shellSession {
	dir, err := absDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sh := &Shell{Dir: dir, Private: t.TempDir(), Env: CommandEnv("LC_ALL=C.UTF-8"),
		Subst: []Subst{{DocRoot, dir}}, Timeout: 30 * time.Second, Deadline: testDeadline(t)}
	t.Cleanup(func() {
		if err := sh.KillAll(); err != nil {
			t.Error(err)
		}
	})
	return &shellSession{Shell: sh}
}

func readTranscripts(t *testing.T, path string) []Transcript {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := markdown.Parse(string(b))
	if err != nil {
		t.Fatal(err)
	}
	trs, err := Transcripts(d)
	if err != nil {
		t.Fatal(err)
	}
	return trs
}

// The runner on fixtures, with real commands and no driver.
func TestRunTranscripts(t *testing.T) {
	for _, tc := range []struct {
		file     string
		wantErr  []string // substrings of the error, in order; none: passes
		restarts []string
	}{
		{file: "pass.md"},
		{file: "ellipsis.md"},
		{file: "ids.md"},
		{file: "normalize.md"},
		{file: "directives.md", restarts: []string{"restart", "restart --max-volume-size=1Gi --data-dir=/work/main/_output/other"}},
		{file: "fail-output.md", wantErr: []string{"fail-output.md:7: $ echo hello world\n", "output differs (- expected, + actual):\n- hello\n+ hello world\n"}},
		{file: "fail-exit.md", wantErr: []string{"fail-exit.md:2: $ echo ok; exit 3\n", "exit status differs (- expected, + actual):\n  ok\n- [2]\n+ [3]\n"}},
		{file: "fail-exit-missing.md", wantErr: []string{"fail-exit-missing.md:2: $ echo ok; false\n", "exit status differs", "  ok\n+ [1]\n"}},
		{file: "fail-ids.md", wantErr: []string{"fail-ids.md:6: $ printf", "output differs", "- hpv1-2f20157a82af5168ef53ecac0a017815\n+ hpv1-"}},
		{file: "fail-background.md", wantErr: []string{"fail-background.md:2: $ sleep 60 &\n", "left processes", "running in the background, and no driver runs here"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s := newShellSession(t)
			err := RunTranscripts(tc.file, readTranscripts(t, filepath.Join("testdata/run", tc.file)), s, NewBindings())
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				if err == nil {
					t.Fatal("passed")
				}
				rest := err.Error()
				for _, w := range tc.wantErr {
					i := strings.Index(rest, w)
					if i < 0 {
						t.Fatalf("error:\n%v\nwant, after what came before, %q", err, w)
					}
					rest = rest[i+len(w):]
				}
				if strings.Contains(err.Error(), "never run") {
					t.Errorf("the command after the mismatch ran: %v", err)
				}
			}
			if strings.Join(s.restarts, "|") != strings.Join(tc.restarts, "|") {
				t.Errorf("restarts %q, want %q", s.restarts, tc.restarts)
			}
		})
	}
}

// The bindings of a file carry from block to block; the commands run with
// the actual IDs.
func TestRunTranscriptsBindsAcrossBlocks(t *testing.T) {
	s := newShellSession(t)
	b := NewBindings()
	if err := RunTranscripts("ids.md", readTranscripts(t, "testdata/run/ids.md"), s, b); err != nil {
		t.Fatal(err)
	}
	id, err := os.ReadFile(filepath.Join(s.Dir, "id"))
	if err != nil {
		t.Fatal(err)
	}
	actual := strings.TrimSpace(string(id))
	if got := b.docToActual["hpv1-2f20157a82af5168ef53ecac0a017815"]; got != actual || got == "hpv1-2f20157a82af5168ef53ecac0a017815" {
		t.Errorf("bound to %q, want the new ID %q", got, actual)
	}
	if len(b.docToActual) != 2 {
		t.Errorf("bindings %v, want the volume and the snapshot", b.docToActual)
	}
}
