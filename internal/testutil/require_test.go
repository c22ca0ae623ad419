package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// recorder is a testing.TB that records how a helper stopped the test
// instead of stopping it. Calls it does not override go to the real test
// (so an unexpected t.Errorf fails it).
type recorder struct {
	testing.TB
	skipped, fatal []string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = append(r.skipped, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = append(r.fatal, fmt.Sprintf(format, args...))
}
func (r *recorder) Skip(args ...any)  { r.skipped = append(r.skipped, fmt.Sprint(args...)) }
func (r *recorder) Fatal(args ...any) { r.fatal = append(r.fatal, fmt.Sprint(args...)) }
func (r *recorder) SkipNow()          { r.skipped = append(r.skipped, "SkipNow") }
func (r *recorder) FailNow()          { r.fatal = append(r.fatal, "FailNow") }

// outcome is how the helper stopped the test: "skip", "fatal" or "" (it
// went on), with the one message, or "many" when it stopped more than once.
func (r *recorder) outcome() (string, string) {
	switch n := len(r.skipped) + len(r.fatal); {
	case n == 0:
		return "", ""
	case n > 1:
		return "many", strings.Join(append(r.skipped, r.fatal...), " | ")
	case len(r.fatal) == 1:
		return "fatal", r.fatal[0]
	default:
		return "skip", r.skipped[0]
	}
}

func TestMissing(t *testing.T) {
	for _, tc := range []struct {
		name, env, want string
	}{
		{"unset skips", "", "skip"},
		{"0 skips", "0", "skip"},
		{"only 1 turns it on", "true", "skip"},
		{"1 fails", "1", "fatal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(RequireAllEnv, tc.env) // restored afterwards
			r := &recorder{TB: t}
			Missing(r, "mkfs.xfs not found", "apt-get install xfsprogs")
			got, msg := r.outcome()
			if got != tc.want {
				t.Fatalf("%s=%q: stopped with %q (%s), want %q", RequireAllEnv, tc.env, got, msg, tc.want)
			}
			for _, part := range []string{"mkfs.xfs not found", "apt-get install xfsprogs", RequireAllEnv} {
				if !strings.Contains(msg, part) {
					t.Errorf("message %q does not say %q", msg, part)
				}
			}
		})
	}
}

func TestRequireCommand(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("no sh on PATH: %v", err)
	}
	for _, tc := range []struct {
		name, cmd, env string
		emptyPath      bool
		want, wantMsg  string
		wantPath       string
	}{
		{"present: its path", "sh", "1", false, "", "", sh},
		{"missing skips naming its package", "cpio", "", true, "skip", "apt-get install cpio", ""},
		{"missing fails under require-all", "mkfs.btrfs", "1", true, "fatal", "apt-get install btrfs-progs", ""},
		{"a command with no known package is the test's bug", "no-such-tool", "", true, "fatal", "debianPackage", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(RequireAllEnv, tc.env)
			if tc.emptyPath {
				t.Setenv("PATH", t.TempDir())
			}
			r := &recorder{TB: t}
			p := RequireCommand(r, tc.cmd)
			got, msg := r.outcome()
			if got != tc.want || !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("RequireCommand(%q): stopped with %q (%s), want %q saying %q", tc.cmd, got, msg, tc.want, tc.wantMsg)
			}
			if p != tc.wantPath {
				t.Errorf("RequireCommand(%q) = %q, want %q", tc.cmd, p, tc.wantPath)
			}
		})
	}
}

// Every package the messages name is one hack/check-test-deps.sh checks, so
// a developer who installs what it lists has every command the tests run.
func TestDebianPackagesAreChecked(t *testing.T) {
	b, err := os.ReadFile("../../hack/check-test-deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	script := string(b)
	for cmd, pkg := range debianPackage {
		if !strings.Contains(script, pkg+":"+cmd) {
			t.Errorf("hack/check-test-deps.sh does not check %s:%s", pkg, cmd)
		}
	}
}
