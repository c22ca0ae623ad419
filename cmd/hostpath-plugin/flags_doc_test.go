package main

import (
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
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

// proseDefaults are the flags whose default in docs/flags.md is words, not
// a value to compare with the flag's default, and why. A row's default is
// otherwise a value (see defaultValue), which must be the flag's.
var proseDefaults = map[string]string{
	"nodeid":                            "the machine's hostname, read at start",
	"controller":                        "both: with neither --controller nor --node, both services run",
	"node":                              "both: with neither --controller nor --node, both services run",
	"max-volume-size":                   "1 TiB in words; the flag's default is in bytes",
	"ephemeral-max-size":                "1Gi or --max-volume-size, whichever is smaller, at start",
	"ephemeral-default-size":            "256Mi or the max, whichever is smaller, at start",
	"ephemeral-max-count-per-namespace": "a quarter of --ephemeral-max-count, at start",
	"http-endpoint":                     "off: the empty default serves nothing",
	"udev-rules-dir":                    "off: the empty default writes no rules",
	"nfs-mount-dir":                     "<state-dir>/nfs: under --state-dir, at start",
	"version":                           "a command, not a setting: no default",
	"transfer-listen":                   "off: the empty default serves no peer",
	"transfer-peers":                    "off: the empty default fetches from no peer",
	"transfer-namespace":                "the pod's own, read at start from its service account",
	"kubeconfig":                        "the pod's service account: the empty default",
	"transfer-rate":                     "off: the empty default bounds nothing",
}

var (
	codeDefault = regexp.MustCompile("^`([^`<>]+)`$")
	bareDefault = regexp.MustCompile(`^(true|false|[0-9]+(?:\.[0-9]+)?[a-zµ]*)(?: \(.*\))?$`)
)

// defaultValue is the value a default cell of docs/flags.md names: a
// single code span (`unix:///csi/csi.sock`), or a bare number, duration or
// bool (4, 30s, true), which a remark in parentheses may follow (0 (no
// limit)). ok is false for anything else: words.
func defaultValue(cell string) (v string, ok bool) {
	cell = strings.TrimSpace(cell)
	if m := codeDefault.FindStringSubmatch(cell); m != nil {
		return m[1], true
	}
	if m := bareDefault.FindStringSubmatch(cell); m != nil {
		return m[1], true
	}
	return "", false
}

// sameDefault says whether the doc's value is the flag's default: equal,
// or the same duration (1m is 1m0s).
func sameDefault(doc, def string) bool {
	if doc == def {
		return true
	}
	a, errA := time.ParseDuration(doc)
	b, errB := time.ParseDuration(def)
	return errA == nil && errB == nil && a == b
}

// checkDefaults compares the default cell of each row of the flags table
// doc with the default of each flag the row names, and says what differs.
func checkDefaults(doc string, fs *flag.FlagSet, prose map[string]string) []string {
	name := regexp.MustCompile("`--([a-z0-9-]+)`")
	var problems []string
	seen := map[string]bool{}
	for _, line := range strings.Split(doc, "\n") {
		cells := strings.Split(line, "|")
		if !strings.HasPrefix(line, "| ") || len(cells) < 5 {
			continue
		}
		cell := strings.TrimSpace(cells[2])
		v, plain := defaultValue(cell)
		for _, n := range name.FindAllStringSubmatch(cells[1], -1) {
			f := fs.Lookup(n[1])
			if f == nil {
				continue // TestFlagsTableListsEveryFlag says so
			}
			seen[f.Name] = true
			_, isProse := prose[f.Name]
			switch {
			case plain && isProse:
				problems = append(problems, fmt.Sprintf("--%s: docs/flags.md's default %q is a value now: drop the flag from proseDefaults, so that it is compared", f.Name, cell))
			case plain && !sameDefault(v, f.DefValue):
				problems = append(problems, fmt.Sprintf("--%s: docs/flags.md says the default is %s, the flag's is %q", f.Name, cell, f.DefValue))
			case !plain && !isProse:
				problems = append(problems, fmt.Sprintf("--%s: docs/flags.md's default %q is neither a value (`code`, or a bare number, duration or bool) nor in proseDefaults, with why it is words", f.Name, cell))
			}
		}
	}
	for n := range prose {
		if !seen[n] {
			problems = append(problems, fmt.Sprintf("proseDefaults lists --%s, which has no row in docs/flags.md", n))
		}
	}
	sort.Strings(problems)
	return problems
}

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("hostpath-plugin", flag.ContinueOnError)
	registerFlags(fs)
	return fs
}

// TestFlagsTableDefaults keeps the defaults docs/flags.md gives the
// driver's: each row's default is the flag's, or words the test lists.
func TestFlagsTableDefaults(t *testing.T) {
	doc, err := os.ReadFile("../../docs/flags.md")
	if err != nil {
		t.Fatalf("reading the flags table: %v", err)
	}
	for _, p := range checkDefaults(string(doc), newFlagSet(), proseDefaults) {
		t.Error(p)
	}
	compared := 0
	for _, l := range strings.Split(string(doc), "\n") {
		if c := strings.Split(l, "|"); len(c) > 4 {
			if _, ok := defaultValue(c[2]); ok {
				compared++
			}
		}
	}
	if compared < 15 {
		t.Errorf("only %d defaults compared: the table's format changed", compared)
	}
}

// checkDefaults on docs/flags.md changed: each change is found.
func TestFlagsTableDefaultsChanged(t *testing.T) {
	b, err := os.ReadFile("../../docs/flags.md")
	if err != nil {
		t.Fatalf("reading the flags table: %v", err)
	}
	doc := string(b)
	for _, tc := range []struct {
		old, new string // the edit of docs/flags.md
		prose    func(map[string]string)
		want     string
	}{
		{old: "| `--drain-timeout` | 30s |", new: "| `--drain-timeout` | 45s |", want: "--drain-timeout: docs/flags.md says the default is 45s"},
		{old: "| `unix:///csi/csi.sock` |", new: "| `unix:///run/csi.sock` |", want: "--endpoint: docs/flags.md says the default is `unix:///run/csi.sock`"},
		{old: "| `--max-volumes-per-node` | 0 (no limit) |", new: "| `--max-volumes-per-node` | 8 (no limit) |", want: "--max-volumes-per-node: docs/flags.md says the default is 8 (no limit)"},
		{old: "| `--ephemeral` | true |", new: "| `--ephemeral` | false |", want: "--ephemeral: docs/flags.md says the default is false"},
		{old: "| `--usage-interval` | 1m |", new: "| `--usage-interval` | 1h |", want: "--usage-interval: docs/flags.md says the default is 1h"},
		{old: "| `--drain-timeout` | 30s |", new: "| `--drain-timeout` | thirty seconds |", want: `--drain-timeout: docs/flags.md's default "thirty seconds" is neither a value`},
		{old: "| `--nodeid` | hostname |", new: "| `--nodeid` | `vm` |", want: "--nodeid: docs/flags.md's default \"`vm`\" is a value now"},
		{old: "| `--nodeid` |", new: "| `--nodeid` |", prose: func(p map[string]string) { p["no-such-flag"] = "x" }, want: "proseDefaults lists --no-such-flag, which has no row"},
	} {
		changed := strings.Replace(doc, tc.old, tc.new, 1)
		if !strings.Contains(doc, tc.old) {
			t.Fatalf("docs/flags.md has no %q: update this test", tc.old)
		}
		prose := map[string]string{}
		for k, v := range proseDefaults {
			prose[k] = v
		}
		if tc.prose != nil {
			tc.prose(prose)
		}
		got := strings.Join(checkDefaults(changed, newFlagSet(), prose), "\n")
		if !strings.Contains(got, tc.want) {
			t.Errorf("%q -> %q: problems\n%s\nwant one with %q", tc.old, tc.new, got, tc.want)
		}
	}
}
