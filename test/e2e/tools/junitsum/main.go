// Command junitsum reads the JUnit reports of a Kubernetes e2e suite run
// (ginkgo's --junit-report) and prints one line per report:
//
//	NAME: Ran N of M Specs: P Passed | F Failed | S Skipped
//
// then the name of every failed spec. It exits 1 when a spec failed, no
// spec ran, or ginkgo says the suite failed (SuiteSucceeded false: a
// process died, a timeout, an interrupt), so a run that proves nothing
// does not pass.
package main

import (
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

type testSuites struct {
	Suites []testSuite `xml:"testsuite"`
}

type testSuite struct {
	Properties []property `xml:"properties>property"`
	Cases      []testCase `xml:"testcase"`
}

type property struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type testCase struct {
	Name    string    `xml:"name,attr"`
	Status  string    `xml:"status,attr"`
	Failure *struct{} `xml:"failure"`
	Error   *struct{} `xml:"error"`
	Skipped *struct{} `xml:"skipped"`
}

// summary counts the specs of one report. Ginkgo writes its suite-level
// nodes (BeforeSuite, AfterSuite, ReportAfterSuite) as test cases too,
// named with their node type in brackets; they are not specs, but a failure
// in one fails the run.
type summary struct {
	total, ran, passed, failed, skipped int
	failures                            []string
	// suiteFailed: ginkgo's SuiteSucceeded property is false (a parallel
	// process died, the suite timed out or was interrupted) even where no
	// test case says so; reason is its SpecialSuiteFailureReason.
	suiteFailed bool
	reason      string
}

func summarize(r io.Reader) (summary, error) {
	var doc testSuites
	if err := xml.NewDecoder(r).Decode(&doc); err != nil {
		return summary{}, fmt.Errorf("parse JUnit report: %w", err)
	}
	var s summary
	for _, suite := range doc.Suites {
		for _, p := range suite.Properties {
			switch p.Name {
			case "SuiteSucceeded":
				if p.Value == "false" {
					s.suiteFailed = true
				}
			case "SpecialSuiteFailureReason", "SpecialSuiteFailureReasons":
				if p.Value != "" {
					s.reason = p.Value
				}
			}
		}
		for _, c := range suite.Cases {
			failed := c.Failure != nil || c.Error != nil || c.Status == "failed" || c.Status == "panicked" ||
				c.Status == "timedout" || c.Status == "interrupted" || c.Status == "aborted"
			if isSuiteNode(c.Name) {
				if failed {
					s.failed++
					s.failures = append(s.failures, c.Name)
				}
				continue
			}
			s.total++
			switch {
			case failed:
				s.ran++
				s.failed++
				s.failures = append(s.failures, c.Name)
			case c.Skipped != nil || c.Status == "skipped" || c.Status == "pending":
				s.skipped++
			default:
				s.ran++
				s.passed++
			}
		}
	}
	return s, nil
}

func isSuiteNode(name string) bool {
	for _, n := range []string{"[BeforeSuite]", "[AfterSuite]", "[SynchronizedBeforeSuite]",
		"[SynchronizedAfterSuite]", "[ReportBeforeSuite]", "[ReportAfterSuite]", "[DeferCleanup (Suite)]"} {
		if strings.HasPrefix(name, n) {
			return true
		}
	}
	return false
}

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: junitsum NAME=REPORT.xml...")
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	bad := false
	for _, arg := range flag.Args() {
		name, file, ok := strings.Cut(arg, "=")
		if !ok {
			name, file = arg, arg
		}
		f, err := os.Open(file)
		if err != nil {
			fmt.Printf("%s: no report: %v\n", name, err)
			bad = true
			continue
		}
		s, err := summarize(f)
		f.Close()
		if err != nil {
			fmt.Printf("%s: %v\n", name, err)
			bad = true
			continue
		}
		fmt.Printf("%s: Ran %d of %d Specs: %d Passed | %d Failed | %d Skipped\n",
			name, s.ran, s.total, s.passed, s.failed, s.skipped)
		for _, n := range s.failures {
			fmt.Printf("  FAILED: %s\n", n)
		}
		if s.suiteFailed {
			fmt.Printf("  SUITE FAILED (ginkgo's SuiteSucceeded is false) %s\n", s.reason)
		}
		if s.failed > 0 || s.ran == 0 || s.suiteFailed {
			bad = true
		}
	}
	if bad {
		os.Exit(1)
	}
}
