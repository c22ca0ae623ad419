package main

import (
	"flag"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestFlagsTableListsEveryFlag keeps docs/flags.md and the driver's flags
// the same set: a flag added without its row, or a row left for a flag
// that went, fails here.
func TestFlagsTableListsEveryFlag(t *testing.T) {
	doc, err := os.ReadFile("../../docs/flags.md")
	if err != nil {
		t.Fatalf("reading the flags table: %v", err)
	}
	// The first cell of each row names one or more flags: | `--a`, `--b` | ...
	row := regexp.MustCompile("(?m)^\\| ([^|]*)\\|")
	name := regexp.MustCompile("`--([a-z0-9-]+)`")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		for _, n := range name.FindAllStringSubmatch(m[1], -1) {
			documented[n[1]] = true
		}
	}
	fs := flag.NewFlagSet("hostpath-plugin", flag.ContinueOnError)
	registerFlags(fs)
	defined := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { defined[f.Name] = true })

	var missing, stale []string
	for n := range defined {
		if !documented[n] {
			missing = append(missing, "--"+n)
		}
	}
	for n := range documented {
		if !defined[n] {
			stale = append(stale, "--"+n)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("docs/flags.md has no row for %s", strings.Join(missing, ", "))
	}
	if len(stale) > 0 {
		t.Errorf("docs/flags.md lists %s, which the driver does not define", strings.Join(stale, ", "))
	}
	if len(defined) < 20 {
		t.Fatalf("only %d flags registered: registerFlags is not what the binary uses", len(defined))
	}
}
