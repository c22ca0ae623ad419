package main

import (
	"os"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		file     string
		code     int
		want     []string
		wantNone []string
	}{
		{"testdata/mixed.json", 1,
			[]string{"FAIL\ttsx/b [build failed]", "syntax error", "ok  \ttsx/c", "=== FAILED tsx/a TestBad", "it broke",
				"1 tests skipped", "tsx/a TestSkip: a_test.go:4: no widget here"},
			[]string{"fine", "TestOK"}},
		{"testdata/died.json", 1,
			[]string{"FAIL\ttsx/d", "=== UNFINISHED tsx/d TestDies", "panic: boom in a goroutine",
				"=== UNFINISHED tsx/e TestExit", "about to exit"},
			nil},
		{"testdata/pass.json", 0, []string{"ok  \ttsx/c", "0 tests skipped"}, []string{"FAILED"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var out strings.Builder
			if code := summarize(f, &out); code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.wantNone {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q, which passed:\n%s", w, out.String())
				}
			}
		})
	}
}
