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
// (test/e2e, scenario docs-commands).
const E2EDirective = "e2e"

// IsE2E says whether b is a block `make e2e` runs.
func IsE2E(b Block) bool {
	return b.Directive == E2EDirective && (b.Info == "sh" || b.Info == "bash")
}

// E2ELines are the commands of d's e2e blocks, in order, with their line
// numbers.
func E2ELines(d Doc) []Line {
	var out []Line
	for _, b := range d.Blocks {
		if IsE2E(b) {
			out = append(out, ShellLines(b.Lines, b.Line+1)...)
		}
	}
	return out
}
