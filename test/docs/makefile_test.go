package docs

import (
	"os"
	"strings"
	"testing"
)

// The scratch Makefile takes RUN_FLAGS and the recipes from the real one.
func TestMakefileParts(t *testing.T) {
	b, err := os.ReadFile(fixtureRepo + "/Makefile")
	if err != nil {
		t.Fatal(err)
	}
	mk := string(b)
	flags, err := makeVariable(mk, "RUN_FLAGS")
	if want := "--endpoint=unix://$(CURDIR)/$(OUT)/csi.sock --http-endpoint=127.0.0.1:9808"; err != nil || flags != want {
		t.Errorf("RUN_FLAGS = %q, %v; want %q", flags, err, want)
	}
	if _, err := makeVariable(mk, "NOPE"); err == nil {
		t.Error("an undefined variable was found")
	}
	recipe, err := makeRecipe(mk, "build")
	if want := "\tgo build -o $(OUT)/ ./cmd/..."; err != nil || strings.Join(recipe, "\n") != want {
		t.Errorf("build recipe %q, %v; want %q", recipe, err, want)
	}
	for _, tc := range []struct{ mk, target, wantErr string }{
		{"run: build\n\t$(GO) run ./cmd/x\n", "run", "uses $(GO), which the docs tests' scratch Makefile does not define"},
		{"run:\n\n", "run", "has no recipe"},
		{"demo:\n\tx\n", "run", "has no run target"},
	} {
		if _, err := makeRecipe(tc.mk, tc.target); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("makeRecipe(%q, %s): %v, want %q", tc.mk, tc.target, err, tc.wantErr)
		}
	}
	// The real Makefile's, which the transcripts use.
	real, err := os.ReadFile(repoRoot + "/Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range scratchTargets {
		if _, err := makeRecipe(string(real), target); err != nil {
			t.Error(err)
		}
	}
	if f, err := makeVariable(string(real), "RUN_FLAGS"); err != nil || !strings.Contains(f, "--endpoint=unix://$(CURDIR)/$(OUT)/csi.sock") {
		t.Errorf("the Makefile's RUN_FLAGS: %q, %v", f, err)
	}
}
