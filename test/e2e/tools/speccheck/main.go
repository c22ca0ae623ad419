// Command speccheck reads ginkgo JSON reports (--json-report) of a
// Kubernetes e2e suite run that focused on a list of patterns, and checks
// that every pattern still names a spec that ran: a pattern that matches no
// spec any more (the spec was renamed upstream, or a capability stopped
// applying) would otherwise go on "passing" by running nothing.
//
//	speccheck -patterns FILE REPORT.json...
//
// FILE holds one regular expression per line (ginkgo's --focus syntax,
// matched as ginkgo matches a focus: against the suite's description and
// the spec's container and leaf texts). It prints, per pattern, how many
// specs it matched that ran (passed, failed, timed out, ...: not skipped or
// pending), and exits 1 when one matched none.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// report is the part of ginkgo's types.Report read here.
type report struct {
	SuiteDescription string
	SpecReports      []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
	}
}

// ranTexts returns the focus text of every It spec that ran.
func ranTexts(r io.Reader) ([]string, error) {
	var reports []report
	if err := json.NewDecoder(r).Decode(&reports); err != nil {
		return nil, fmt.Errorf("decode ginkgo JSON report: %w", err)
	}
	var texts []string
	for _, rep := range reports {
		for _, s := range rep.SpecReports {
			if s.LeafNodeType != "It" || s.State == "skipped" || s.State == "pending" {
				continue
			}
			parts := []string{}
			for _, t := range append(append([]string{}, s.ContainerHierarchyTexts...), s.LeafNodeText) {
				if t != "" {
					parts = append(parts, t)
				}
			}
			texts = append(texts, rep.SuiteDescription+" "+strings.Join(parts, " "))
		}
	}
	return texts, nil
}

// readPatterns reads one regular expression per non-empty line.
func readPatterns(r io.Reader) ([]*regexp.Regexp, error) {
	var res []*regexp.Regexp
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		re, err := regexp.Compile(line)
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", line, err)
		}
		res = append(res, re)
	}
	return res, sc.Err()
}

// count returns, per pattern, the number of texts it matches.
func count(patterns []*regexp.Regexp, texts []string) []int {
	n := make([]int, len(patterns))
	for i, re := range patterns {
		for _, t := range texts {
			if re.MatchString(t) {
				n[i]++
			}
		}
	}
	return n
}

func main() {
	patternsFile := flag.String("patterns", "", "file of regular expressions, one per line")
	flag.Parse()
	if *patternsFile == "" || flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: speccheck -patterns FILE REPORT.json...")
		os.Exit(2)
	}
	f, err := os.Open(*patternsFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	patterns, err := readPatterns(f)
	f.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var texts []string
	for _, path := range flag.Args() {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		t, err := ranTexts(f)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(2)
		}
		texts = append(texts, t...)
	}
	rc := 0
	for i, n := range count(patterns, texts) {
		fmt.Printf("%3d ran  %s\n", n, patterns[i])
		if n == 0 {
			rc = 1
		}
	}
	if rc != 0 {
		fmt.Println("speccheck: a pattern ran no spec (renamed upstream, or no definition file claims what it needs)")
	}
	os.Exit(rc)
}
