package main

import (
	"reflect"
	"strings"
	"testing"
)

const sample = `[{"SuiteDescription":"Kubernetes e2e suite","SpecReports":[
{"LeafNodeType":"SynchronizedBeforeSuite","State":"passed"},
{"ContainerHierarchyTexts":["[sig-storage] CSI Volumes","External Storage [Driver: d]","[Testpattern: Dynamic PV (default fs)] volumes"],"LeafNodeType":"It","LeafNodeText":"should store data","State":"passed"},
{"ContainerHierarchyTexts":["[sig-storage] CSI Volumes","External Storage [Driver: d]","[Testpattern: Dynamic PV (default fs)] provisioning"],"LeafNodeType":"It","LeafNodeText":"should provision storage with pvc data source","State":"failed"},
{"ContainerHierarchyTexts":["[sig-storage] CSI Volumes","External Storage [Driver: d]","[Testpattern: Dynamic PV (block volmode)] volumes"],"LeafNodeType":"It","LeafNodeText":"should store data","State":"skipped"},
{"ContainerHierarchyTexts":["[sig-storage] CSI Volumes","External Storage [Driver: d]","[Testpattern: Dynamic PV (default fs)] volume-expand"],"LeafNodeType":"It","LeafNodeText":"should resize volume","State":"timedout"}
]}]`

func TestEveryPatternMustNameASpecThatRan(t *testing.T) {
	texts, err := ranTexts(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		patterns string
		want     []int
	}{
		{"ran and failed both count", "volumes should store data\nprovisioning should provision storage with pvc data source$\n", []int{1, 1}},
		{"a skipped spec is not a spec that ran", `\(block volmode\)\] volumes should store data`, []int{0}},
		{"a renamed spec matches nothing", "volumes should keep data", []int{0}},
		{"the suite's description is part of the text", "^Kubernetes e2e suite \\[sig-storage\\]", []int{3}},
		{"a spec that timed out ran", "volume-expand should resize volume", []int{1}},
		{"suite nodes are not specs", "SynchronizedBeforeSuite", []int{0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := readPatterns(strings.NewReader(tc.patterns))
			if err != nil {
				t.Fatal(err)
			}
			if got := count(p, texts); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("counts %v, want %v", got, tc.want)
			}
		})
	}
}

func TestABadPatternIsAnError(t *testing.T) {
	if _, err := readPatterns(strings.NewReader("volumes (\n")); err == nil {
		t.Fatal("an unbalanced pattern was accepted")
	}
}
