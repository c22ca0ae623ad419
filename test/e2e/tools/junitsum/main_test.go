package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestSummarizeCountsSpecsNotSuiteNodes(t *testing.T) {
	tests := []struct {
		name string
		xml  string
		want summary
	}{
		{
			name: "passed, failed, skipped and suite nodes",
			xml: `<testsuites><testsuite>
<testcase name="[SynchronizedBeforeSuite]" status="passed"></testcase>
<testcase name="[sig-storage] A should store data" status="passed"></testcase>
<testcase name="[sig-storage] B should expand" status="failed"><failure message="x">x</failure></testcase>
<testcase name="[sig-storage] C block" status="skipped"><skipped message="no block"></skipped></testcase>
<testcase name="[ReportAfterSuite] Kubernetes e2e JUnit report" status="passed"></testcase>
</testsuite></testsuites>`,
			want: summary{total: 3, ran: 2, passed: 1, failed: 1, skipped: 1,
				failures: []string{"[sig-storage] B should expand"}},
		},
		{
			name: "a failed suite node fails the run without being a spec",
			xml: `<testsuites><testsuite>
<testcase name="[SynchronizedBeforeSuite]" status="failed"><failure>nodes not ready</failure></testcase>
<testcase name="[sig-storage] A" status="skipped"><skipped/></testcase>
</testsuite></testsuites>`,
			want: summary{total: 1, skipped: 1, failed: 1, failures: []string{"[SynchronizedBeforeSuite]"}},
		},
		{
			name: "ginkgo's SuiteSucceeded false fails the run though every case passed",
			xml: `<testsuites><testsuite><properties>
<property name="SuiteSucceeded" value="false"></property>
<property name="SpecialSuiteFailureReason" value="Interrupted by User"></property>
</properties><testcase name="a" status="passed"></testcase></testsuite></testsuites>`,
			want: summary{total: 1, ran: 1, passed: 1, suiteFailed: true, reason: "Interrupted by User"},
		},
		{
			name: "a timed-out spec is a failure",
			xml:  `<testsuites><testsuite><testcase name="slow" status="timedout"></testcase></testsuite></testsuites>`,
			want: summary{total: 1, ran: 1, failed: 1, failures: []string{"slow"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := summarize(strings.NewReader(tt.xml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("summarize = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSummarizeRefusesWhatIsNotAReport(t *testing.T) {
	if _, err := summarize(strings.NewReader("not xml")); err == nil {
		t.Error("summarize accepted text that is not a JUnit report")
	}
}
