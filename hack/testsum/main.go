// Command testsum reads `go test -json` on stdin and prints what a person
// needs from it: one line per package as `go test` prints them, the whole
// output of every failed test, and every skipped test with its reason, so a
// CI log says how many proofs did not run and why. The full stream is kept
// in the file named by -log. It exits 1 if a test or package failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

func main() {
	logPath := flag.String("log", "", "file to write the whole -json stream to")
	flag.Parse()
	var in io.Reader = os.Stdin
	if *logPath != "" {
		f, err := os.Create(*logPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsum:", err)
			os.Exit(2)
		}
		defer f.Close()
		in = io.TeeReader(os.Stdin, f)
	}
	os.Exit(summarize(in, os.Stdout))
}

func summarize(in io.Reader, out io.Writer) int {
	output := map[string]*strings.Builder{} // package/test -> its output
	pkgOutput := map[string]*strings.Builder{}
	var skipped, failed []string
	var failedPkgs []string
	started := map[string][]string{} // package -> tests started
	ended := map[string]bool{}       // package/test that passed, failed or skipped
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			// A build failure prints plain text before the JSON.
			fmt.Fprintln(out, string(line))
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "build-output":
			fmt.Fprint(out, e.Output)
		case "output":
			if e.Test == "" {
				b := pkgOutput[e.Package]
				if b == nil {
					b = &strings.Builder{}
					pkgOutput[e.Package] = b
				}
				b.WriteString(e.Output)
				// Package lines: ok, FAIL, "?" and build errors.
				if strings.HasPrefix(e.Output, "ok ") || strings.HasPrefix(e.Output, "FAIL") ||
					strings.HasPrefix(e.Output, "?") || strings.HasPrefix(e.Output, "panic") ||
					strings.Contains(e.Output, "[build failed]") || strings.HasPrefix(e.Output, "#") {
					fmt.Fprint(out, e.Output)
				}
				continue
			}
			b := output[key]
			if b == nil {
				b = &strings.Builder{}
				output[key] = b
			}
			b.WriteString(e.Output)
		case "run":
			started[e.Package] = append(started[e.Package], e.Test)
		case "skip":
			if e.Test != "" {
				skipped = append(skipped, key)
				ended[key] = true
			}
		case "fail":
			if e.Test != "" {
				failed = append(failed, key)
				ended[key] = true
			} else {
				failedPkgs = append(failedPkgs, e.Package)
			}
		case "pass":
			if e.Test != "" {
				delete(output, key)
				ended[key] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "testsum: reading go test's output:", err)
		return 1
	}
	for _, k := range failed {
		fmt.Fprintf(out, "\n=== FAILED %s\n%s", k, text(output[k]))
	}
	// A test binary that died (a panic in another goroutine, a timeout,
	// os.Exit) ends the tests it was running without a fail event: their
	// output and the package's own (the panic, the goroutines) say why.
	for _, p := range failedPkgs {
		for _, name := range started[p] {
			if k := p + " " + name; !ended[k] {
				fmt.Fprintf(out, "\n=== UNFINISHED %s (the test binary ended while it ran)\n%s", k, text(output[k]))
			}
		}
		if o := beyondResult(text(pkgOutput[p])); o != "" && !strings.Contains(o, "[build failed]") {
			fmt.Fprintf(out, "\n=== OUTPUT OF %s outside its tests\n%s", p, o)
		}
	}
	sort.Strings(skipped)
	fmt.Fprintf(out, "\n%d tests skipped\n", len(skipped))
	for _, k := range skipped {
		fmt.Fprintf(out, "  %s: %s\n", k, reason(text(output[k])))
	}
	if len(failed) > 0 || len(failedPkgs) > 0 {
		return 1
	}
	return 0
}

func text(b *strings.Builder) string {
	if b == nil {
		return ""
	}
	return b.String()
}

// reason is the message a skip gave: its output without go test's own
// "=== RUN" and "--- SKIP" lines.
func reason(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		keep = append(keep, t)
	}
	return strings.Join(keep, " / ")
}

// beyondResult is a package's own output without its ok or FAIL lines, or
// "" when that is all it printed.
func beyondResult(s string) string {
	var keep []string
	for _, l := range strings.SplitAfter(s, "\n") {
		t := strings.TrimSpace(l)
		if t == "" || t == "FAIL" || strings.HasPrefix(t, "FAIL\t") || strings.HasPrefix(t, "ok ") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "")
}
