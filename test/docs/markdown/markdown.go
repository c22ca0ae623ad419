// Package markdown finds what test/docs checks in a Markdown file: its
// fenced code blocks, the doctest directive on the line before each, and the
// lines outside them. The format is described in test/docs (doc.go).
//
// It imports the standard library only: test/e2e, a module of its own, uses
// this same file (test/e2e/markdown/markdown.go is a symlink to it), so that
// the e2e runs exactly the blocks the main module's tests account for.
package markdown

import (
	"fmt"
	"strings"
)

// Block is one fenced code block.
type Block struct {
	Line int    // line number (from 1) of the opening fence
	Info string // first word of the info string: "console", "sh", "" (none)
	// Directive is the text of a <!-- doctest: TEXT --> comment on the line
	// right before the opening fence, trimmed; HasDirective says whether
	// there is one (TEXT may not be empty, so Directive != "" iff HasDirective).
	Directive    string
	HasDirective bool
	// Lines are the block's content lines, without the opening fence's
	// indentation; content line i is on line Line+1+i of the file.
	Lines []string
}

// Line is a line of text and its line number (from 1).
type Line struct {
	N    int
	Text string
}

// Doc is a parsed Markdown file.
type Doc struct {
	Blocks []Block
	Prose  []Line // every line outside fenced blocks, directives included
}

const (
	directiveStart = "<!-- doctest:"
	directiveEnd   = "-->"
)

// Parse reads src. It is an error for a fence not to be closed, and for a
// doctest directive not to be a whole line right before an opening fence:
// a directive that applies to nothing would be a check silently lost.
func Parse(src string) (Doc, error) {
	lines := strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	var d Doc
	pending := -1 // index of a directive line waiting for its fence
	var pendingText string
	for i := 0; i < len(lines); i++ {
		indent, fence, info, ok := openingFence(lines[i])
		if !ok {
			if pending >= 0 {
				return Doc{}, fmt.Errorf("line %d: doctest directive not on the line right before a fenced block", pending+1)
			}
			trimmed := strings.TrimSpace(lines[i])
			if strings.HasPrefix(trimmed, directiveStart) {
				text, ok := strings.CutSuffix(strings.TrimSpace(strings.TrimPrefix(trimmed, directiveStart)), directiveEnd)
				text = strings.TrimSpace(text)
				if !ok || text == "" || strings.Contains(text, directiveEnd) {
					return Doc{}, fmt.Errorf("line %d: a doctest directive is one line: <!-- doctest: WORDS -->", i+1)
				}
				pending, pendingText = i, text
			}
			d.Prose = append(d.Prose, Line{N: i + 1, Text: lines[i]})
			continue
		}
		b := Block{Line: i + 1, Info: info}
		if pending >= 0 {
			b.Directive, b.HasDirective = pendingText, true
			pending = -1
		}
		closed := false
		for i++; i < len(lines); i++ {
			if isClosingFence(lines[i], fence) {
				closed = true
				break
			}
			b.Lines = append(b.Lines, dedent(lines[i], indent))
		}
		if !closed {
			return Doc{}, fmt.Errorf("line %d: fenced block not closed", b.Line)
		}
		d.Blocks = append(d.Blocks, b)
	}
	if pending >= 0 {
		return Doc{}, fmt.Errorf("line %d: doctest directive not on the line right before a fenced block", pending+1)
	}
	return d, nil
}

// openingFence recognizes a line of 3 or more backticks or tildes after
// spaces (a list item's block may be indented), and returns its indentation,
// the fence and the info string's first word.
func openingFence(line string) (indent int, fence, info string, ok bool) {
	rest := strings.TrimLeft(line, " ")
	indent = len(line) - len(rest)
	if len(rest) < 3 || (rest[0] != '`' && rest[0] != '~') {
		return 0, "", "", false
	}
	n := 0
	for n < len(rest) && rest[n] == rest[0] {
		n++
	}
	if n < 3 {
		return 0, "", "", false
	}
	after := rest[n:]
	if rest[0] == '`' && strings.Contains(after, "`") {
		return 0, "", "", false // inline code, not a fence (CommonMark)
	}
	if f := strings.Fields(after); len(f) > 0 {
		info = f[0]
	}
	return indent, rest[:n], info, true
}

func isClosingFence(line, fence string) bool {
	rest := strings.TrimSpace(line)
	if len(rest) < len(fence) || rest[0] != fence[0] {
		return false
	}
	return strings.Trim(rest, fence[:1]) == ""
}

// dedent removes up to n leading spaces.
func dedent(s string, n int) string {
	i := 0
	for i < n && i < len(s) && s[i] == ' ' {
		i++
	}
	return s[i:]
}

// ShellLines are the logical lines of lines as a shell reads them: a line
// ending in a backslash continues on the next (the backslash-newline is kept,
// so the text runs as written), and blank lines and lines that are only a
// comment are left out. first is the line number of lines[0].
func ShellLines(lines []string, first int) []Line {
	var out []Line
	for i := 0; i < len(lines); i++ {
		l := Line{N: first + i, Text: lines[i]}
		for strings.HasSuffix(l.Text, `\`) && i+1 < len(lines) {
			i++
			l.Text += "\n" + lines[i]
		}
		if t := strings.TrimSpace(l.Text); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		out = append(out, l)
	}
	return out
}

// E2EDirective marks an sh or bash block whose lines `make e2e` runs
// (test/e2e): <!-- doctest: e2e --> in the single-node phase, and
// <!-- doctest: e2e PHASE --> in another of E2EPhases.
const E2EDirective = "e2e"

// The phases of make e2e in which an e2e block runs, in the order they run.
const (
	// E2ESingleNode: after the other single-node scenarios (scenario
	// docs-commands), in a namespace of the block's own.
	E2ESingleNode = "single-node"
	// E2EDistributed: after the switch to overlays/distributed (scenario
	// docs-distributed).
	E2EDistributed = "distributed"
	// E2EDryRun: each line, a kubectl apply, create or delete, runs with
	// --dry-run=server: checked by the API server, nothing made. For
	// commands that need what the cluster of make e2e has not (an NFS
	// server).
	E2EDryRun = "dry-run"
	// E2EUninstall: last of all, after the distributed scenarios (scenario
	// docs-uninstall), which then checks that the driver left nothing.
	E2EUninstall = "uninstall"
	// E2EDefaultClass: in the single-node flavour (scenario
	// docs-default-class), after a StorageClass standard was made the
	// cluster's default, as kind and minikube have it; the scenario then
	// checks the lines left it the default again.
	E2EDefaultClass = "default-class"
	// E2EHelm: after the uninstall, on a cluster without the driver
	// (scenario helm-install): the Helm install whose release the helm
	// scenarios then use. Helm's lines run in the namespace default, where
	// the docs' helm install keeps its release record.
	E2EHelm = "helm"
	// E2EHelmDistributed: the helm scenarios' switch of that release to the
	// distributed flavour (scenario helm-distributed).
	E2EHelmDistributed = "helm-distributed"
	// E2EHelmUninstall: last of the helm scenarios (scenario
	// helm-uninstall), which then checks that the release left nothing.
	E2EHelmUninstall = "helm-uninstall"
)

// E2EPhases are the phases an e2e directive may name.
var E2EPhases = []string{E2ESingleNode, E2EDefaultClass, E2EDistributed, E2EDryRun, E2EUninstall, E2EHelm, E2EHelmDistributed, E2EHelmUninstall}

// E2EPhase is the phase of an e2e block, and whether b is one: an sh or
// bash block with <!-- doctest: e2e [PHASE] -->. A directive naming a
// phase that does not exist is no e2e block (test/docs reports it).
func E2EPhase(b Block) (string, bool) {
	if b.Info != "sh" && b.Info != "bash" {
		return "", false
	}
	f := strings.Fields(b.Directive)
	if len(f) == 0 || f[0] != E2EDirective || len(f) > 2 {
		return "", false
	}
	if len(f) == 1 {
		return E2ESingleNode, true
	}
	for _, p := range E2EPhases {
		if f[1] == p {
			return p, true
		}
	}
	return "", false
}

// IsE2E says whether b is a block `make e2e` runs.
func IsE2E(b Block) bool {
	_, ok := E2EPhase(b)
	return ok
}

// E2ELines are the commands of d's e2e blocks of the given phase, in
// order, with their line numbers.
func E2ELines(d Doc, phase string) []Line {
	var out []Line
	for _, b := range d.Blocks {
		if p, ok := E2EPhase(b); ok && p == phase {
			out = append(out, ShellLines(b.Lines, b.Line+1)...)
		}
	}
	return out
}

// DryRunnable says why a line of a dry-run block could not be checked by a
// server-side dry run: it must be one kubectl apply, create or delete.
func DryRunnable(line string) error {
	f := strings.Fields(StripComment(line))
	if len(f) < 2 || f[0] != "kubectl" || (f[1] != "apply" && f[1] != "create" && f[1] != "delete") {
		return fmt.Errorf("%s: a dry-run block holds only kubectl apply, create or delete (make e2e runs each with --dry-run=server)", line)
	}
	if strings.ContainsAny(StripComment(line), ";&|<>`$") {
		return fmt.Errorf("%s: one command per line in a dry-run block", line)
	}
	return nil
}

// DryRunCommand is line with --dry-run=server added, for bash.
func DryRunCommand(line string) string {
	return strings.TrimSpace(StripComment(line)) + " --dry-run=server"
}

// StripComment cuts a shell comment: a # that starts a word outside
// quotes (test/docs and the e2e read commands the same way).
func StripComment(s string) string {
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == q {
				q = 0
			} else if c == '\\' && q == '"' {
				i++
			}
		case c == '\\':
			i++
		case c == '\'' || c == '"':
			q = c
		case c == '#' && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t'):
			return strings.TrimRight(s[:i], " \t")
		}
	}
	return s
}
