package docs

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/hostpath-csi/hostpath-csi/test/docs/markdown"
)

// Command is one `$ ` command of a console block and the output it must
// print.
type Command struct {
	Line     int      // line number of the `$ ` line
	Text     string   // the command, continuation lines included, without "$ "
	Expected []string // the expected output lines, the status line excepted
	ExpLine  int      // line number of Expected[0]
	Status   int      // expected exit status: 0 unless the output ends with [N]
}

// Directive is what a <!-- doctest: ... --> comment asks of a console block.
type Directive struct {
	Restart bool
	Flags   []string // restart: extra driver flags
	Skip    string   // skip: the reason, never empty
}

// Transcript is a console block to run.
type Transcript struct {
	Block     markdown.Block
	Directive Directive
	Commands  []Command
}

var statusLine = regexp.MustCompile(`^\[(\d+)\]$`)

// ParseDirective reads the directive of block b. Console blocks take
// restart and skip, sh and bash blocks e2e; anything else is an error.
func ParseDirective(b markdown.Block) (Directive, error) {
	if !b.HasDirective {
		return Directive{}, nil
	}
	f := strings.Fields(b.Directive)
	switch {
	case b.Info == "console" && f[0] == "restart":
		for _, fl := range f[1:] {
			if !strings.HasPrefix(fl, "--") || len(fl) < 3 {
				return Directive{}, fmt.Errorf("line %d: restart takes driver flags (--name or --name=value), not %q", b.Line-1, fl)
			}
		}
		return Directive{Restart: true, Flags: f[1:]}, nil
	case b.Info == "console" && f[0] == "skip":
		if len(f) < 2 {
			return Directive{}, fmt.Errorf("line %d: skip needs a reason: <!-- doctest: skip REASON -->", b.Line-1)
		}
		return Directive{Skip: strings.Join(f[1:], " ")}, nil
	case markdown.IsE2E(b):
		return Directive{}, nil
	}
	return Directive{}, fmt.Errorf("line %d: unknown doctest directive %q before a %q block (console blocks take restart [--flag...] and skip REASON, sh blocks e2e [%s])",
		b.Line-1, b.Directive, b.Info, strings.Join(markdown.E2EPhases, "|"))
}

// ParseTranscript reads a console block: `$ ` lines are commands (a line
// ending in a backslash continues on the next), the lines up to the next
// command are its output, and a last output line [N] is its exit status.
func ParseTranscript(b markdown.Block) (Transcript, error) {
	d, err := ParseDirective(b)
	if err != nil {
		return Transcript{}, err
	}
	tr := Transcript{Block: b, Directive: d}
	for i := 0; i < len(b.Lines); i++ {
		line := b.Lines[i]
		n := b.Line + 1 + i
		cmd, isCmd := strings.CutPrefix(line, "$ ")
		if !isCmd {
			if len(tr.Commands) == 0 {
				return Transcript{}, fmt.Errorf("line %d: a console block starts with a command (`$ `), not %q", n, line)
			}
			c := &tr.Commands[len(tr.Commands)-1]
			if len(c.Expected) == 0 {
				c.ExpLine = n
			}
			c.Expected = append(c.Expected, line)
			continue
		}
		c := Command{Line: n, Text: cmd}
		for strings.HasSuffix(c.Text, `\`) && i+1 < len(b.Lines) {
			i++
			c.Text += "\n" + b.Lines[i]
		}
		if strings.TrimSpace(c.Text) == "" {
			return Transcript{}, fmt.Errorf("line %d: empty command", n)
		}
		tr.Commands = append(tr.Commands, c)
	}
	if len(tr.Commands) == 0 {
		return Transcript{}, fmt.Errorf("line %d: a console block without a command", b.Line)
	}
	for i := range tr.Commands {
		c := &tr.Commands[i]
		if k := len(c.Expected); k > 0 {
			if m := statusLine.FindStringSubmatch(strings.TrimSpace(c.Expected[k-1])); m != nil {
				c.Status, _ = strconv.Atoi(m[1])
				if c.Status == 0 {
					return Transcript{}, fmt.Errorf("line %d: an exit status line is [N] with N > 0 (0 is the default)", c.ExpLine+k-1)
				}
				c.Expected = c.Expected[:k-1]
			}
		}
		if onlyEllipsis(c.Expected) {
			return Transcript{}, fmt.Errorf("line %d: the output of $ %s is only ... lines, which match anything: show a line of it that must be there", c.ExpLine, oneLine(c.Text))
		}
	}
	return tr, nil
}

// Transcripts are the console blocks of d, in order.
func Transcripts(d markdown.Doc) ([]Transcript, error) {
	var out []Transcript
	for _, b := range d.Blocks {
		if b.Info != "console" {
			if _, err := ParseDirective(b); err != nil {
				return nil, err
			}
			continue
		}
		tr, err := ParseTranscript(b)
		if err != nil {
			return nil, err
		}
		out = append(out, tr)
	}
	return out, nil
}

// onlyEllipsis says whether output lines are all ... (and there is one).
func onlyEllipsis(lines []string) bool {
	for _, l := range lines {
		if strings.TrimSpace(l) != "..." {
			return false
		}
	}
	return len(lines) > 0
}
