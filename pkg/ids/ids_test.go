package ids

import (
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
