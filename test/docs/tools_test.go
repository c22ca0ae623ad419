package docs

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/test/docs/markdown"
)

// essentialCommands are what a transcript may run without naming it in
// transcriptTools: bash's builtins and keywords, and commands of Debian's
// essential packages (coreutils, grep, sed, findutils), which every
// machine of this kind has.
var essentialCommands = map[string]bool{}

func init() {
	for _, c := range strings.Fields(`
		. : [ cd echo eval exec exit export false kill printf pwd read set shift source test true type unset wait
		! { } case do done elif else esac fi for if in then time until while
		basename cat chmod chown cp cut date dd df dirname du env head id ln ls md5sum mkdir mv readlink realpath
		rm rmdir seq sha256sum sleep sort stat sync tail tee touch tr truncate uniq wc yes
		grep sed find xargs`) {
		essentialCommands[c] = true
	}
}

var (
	shellAssignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	redirection     = regexp.MustCompile(`^[0-9]*(>>?|<)`)
)

// commandNames are the names of the commands a command line runs, as far
// as the docs' transcripts need: the first word of each simple command,
// split at ; | & ( ) and $( outside quotes (a & of a redirection, 2>&1 or
// &>, does not split), with assignments, redirections and a comment left
// out. Paths (./_output/csictl) and words holding quotes or $ are left
// out: they name no tool on PATH.
func commandNames(line string) []string {
	s := markdown.StripComment(strings.ReplaceAll(line, "\\\n", " "))
	var segs []string
	var cur strings.Builder
	var q byte
	var subst []byte // at each open $(, the quote to return to at its )
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q == '\'':
			if c == '\'' {
				q = 0
			}
		case c == '$' && i+1 < len(s) && s[i+1] == '(':
			subst, q, i = append(subst, q), 0, i+1
			segs = append(segs, cur.String())
			cur.Reset()
			continue
		case q == '"':
			if c == '"' {
				q = 0
			}
		case c == '\'' || c == '"':
			q = c
		case c == ')' && len(subst) > 0:
			q, subst = subst[len(subst)-1], subst[:len(subst)-1]
			segs = append(segs, cur.String())
			cur.Reset()
			continue
		case c == '&' && (i > 0 && (s[i-1] == '>' || s[i-1] == '<') || i+1 < len(s) && s[i+1] == '>'):
		case strings.IndexByte(";|&()`\n", c) >= 0:
			segs = append(segs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	segs = append(segs, cur.String())
	var names []string
	for _, seg := range segs {
		words := strings.Fields(seg)
		for i := 0; i < len(words); i++ {
			w := words[i]
			switch {
			case shellAssignment.MatchString(w):
				continue
			case redirection.MatchString(w):
				if redirection.FindString(w) == w { // > FILE: the next word is its target
					i++
				}
				continue
			case w == "!" || w == "time" || essentialCommands[w] && isKeyword(w):
				continue
			}
			if !strings.ContainsAny(w, `/"'$`) {
				names = append(names, w)
			}
			break
		}
	}
	return names
}

func isKeyword(w string) bool {
	return slices.Contains(strings.Fields("{ } case do done elif else esac fi for if in then until while"), w)
}

func TestCommandNames(t *testing.T) {
	for in, want := range map[string]string{
		"./_output/csictl info": "",
		`kill -9 $(pgrep -f "$PWD/_output/csi.sock")     # the driver`:                 "kill pgrep",
		"make run >_output/run.log 2>&1 &":                                             "make",
		"until ./_output/csictl info >/dev/null 2>&1; do sleep 0.2; done":              "sleep",
		"(cd x && mkdir wal && head -c 100M /dev/zero > table && ln -s table current)": "cd mkdir head ln",
		`curl -s 127.0.0.1:9808/metrics | grep -E '^(a|b)' | grep -v ' 0$'`:            "curl grep grep",
		`LC_ALL=C jq -r . <in.json`:                                                    "jq",
		"echo \"now: $(date)\"":                                                        "echo date",
		"if true; then sort; fi":                                                       "true sort",
	} {
		if got := strings.Join(commandNames(in), " "); got != want {
			t.Errorf("commandNames(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every tool the docs' transcripts run is one the transcripts require
// (transcriptTools: a machine without it skips them, saying which is
// missing, and fails with HOSTPATH_TEST_REQUIRE_ALL=1), or essential.
func TestTranscriptToolsAreRequired(t *testing.T) {
	files := realDocs(t, repoRoot)
	n := 0
	for _, f := range files {
		if !f.Run {
			continue
		}
		trs, err := Transcripts(f.Doc)
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		for _, tr := range trs {
			if tr.Directive.Skip != "" {
				continue
			}
			for _, c := range tr.Commands {
				for _, name := range commandNames(c.Text) {
					n++
					if !essentialCommands[name] && !slices.Contains(transcriptTools, name) {
						t.Errorf("%s:%d: $ %s: runs %s, which transcriptTools (main_test.go) does not require", f.Name, c.Line, oneLine(c.Text), name)
					}
				}
			}
		}
	}
	if len(files) > 0 && n == 0 {
		t.Error("no command names found in the transcripts: commandNames no longer reads them")
	}
}
