package ids

import (
	"fmt"
	"strings"
	"testing"
)

func TestNewVolumeIDIsValidAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewVolumeID()
		if err := ValidateVolumeID(id); err != nil {
			t.Fatalf("fresh ID %q rejected: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("duplicate ID %q", id)
		}
		seen[id] = true
	}
}

func TestValidateVolumeID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{"v1", "hpv1-0123456789abcdef0123456789abcdef", true},
		{"empty", "", false},
		{"no prefix", "0123456789abcdef0123456789abcdef", false},
		{"upper hex", "hpv1-0123456789ABCDEF0123456789abcdef", false},
		{"short", "hpv1-0123", false},
		{"long", "hpv1-0123456789abcdef0123456789abcdef0", false},
		{"dotdot", "hpv1-../../../../../../../../../etc/pa", false},
		{"slash", "hpv1-0123456789abcdef/123456789abcdef", false},
		{"nul", "hpv1-0123456789abcdef\x00123456789abcdef", false},
		{"absolute", "/etc/passwd", false},
		{"huge", "hpv1-" + strings.Repeat("a", 1<<20), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateVolumeID(tc.id)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateVolumeID(%.40q) = %v, want ok=%v", tc.id, err, tc.ok)
			}
			if err != nil && len(err.Error()) > 200 {
				t.Fatalf("error message not truncated: %d bytes", len(err.Error()))
			}
		})
	}
}

func TestSnapshotIDs(t *testing.T) {
	id := NewSnapshotID()
	if err := ValidateSnapshotID(id); err != nil {
		t.Fatalf("fresh snapshot ID %q rejected: %v", id, err)
	}
	if ValidateVolumeID(id) == nil || ValidateSnapshotID(NewVolumeID()) == nil {
		t.Fatal("a snapshot ID passes as a volume ID or the other way round")
	}
}

// An error message quotes at most about 40 characters of what it was sent,
// whatever the bytes (%q shows a byte that is not UTF-8 as 4 characters).
func TestTruncateBoundsQuotedLength(t *testing.T) {
	for _, s := range []string{strings.Repeat("a", 1000), strings.Repeat("\x9a", 1000), strings.Repeat("\"", 1000),
		strings.Repeat("é", 1000), strings.Repeat("\x00", 1000), strings.Repeat("日本", 500)} {
		if q := fmt.Sprintf("%q", truncate(s)); len(q) > 40+2+3 {
			t.Errorf("truncate(%.8q...) quotes as %d characters: %s", s, len(q), q)
		}
	}
	if got := truncate("short"); got != "short" {
		t.Errorf("truncate(short) = %q", got)
	}
	if got := truncate(strings.Repeat("a", 41)); got != strings.Repeat("a", 40)+"..." {
		t.Errorf("truncate of 41 bytes = %q", got)
	}
}
