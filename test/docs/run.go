package docs

import (
	"fmt"
	"strings"
)

// Session runs a file's commands: a Driver, or (for tests of the runner) a
// Shell with no driver.
type Session interface {
	Run(command string) (Result, error)
	// Restart stops the driver and starts it again, with RUN_FLAGS plus
	// flags from now on if there are flags, else with the same flags.
	Restart(flags []string) error
}

// RunTranscripts runs a file's transcripts in order in s, binding IDs in b,
// and stops at the first command whose output or status differs from its
// doc (a later command would fail for its sake), or that cannot run.
// Skipped blocks do not run.
func RunTranscripts(file string, trs []Transcript, s Session, b *Bindings) error {
	for _, tr := range trs {
		if tr.Directive.Skip != "" {
			continue
		}
		if tr.Directive.Restart {
			if err := s.Restart(tr.Directive.Flags); err != nil {
				return fmt.Errorf("%s:%d: <!-- doctest: %s -->: %w", file, tr.Block.Line-1, tr.Block.Directive, err)
			}
		}
		for _, c := range tr.Commands {
			r, err := s.Run(b.ToActual(c.Text))
			if err == nil {
				err = Check(c, r, b)
			}
			if err != nil {
				return fmt.Errorf("%s:%d: $ %s\n%w", file, c.Line, strings.ReplaceAll(c.Text, "\n", "\n  "), err)
			}
		}
	}
	return nil
}
