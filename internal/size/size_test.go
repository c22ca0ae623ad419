package size

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"1048576", 1 << 20, false},
		{"0", 0, false},
		{"1Gi", 1 << 30, false},
		{"500Mi", 500 << 20, false},
		{"2Ti", 2 << 40, false},
		{"1G", 1e9, false},
		{"10k", 10000, false},
		{"7Ei", 7 << 60, false},
		{"8Ei", 0, true}, // 2^63: one past the largest
		{"9223372036854775807", 1<<63 - 1, false},
		{"9223372036854775808", 0, true},
		{"", 0, true},
		{"Gi", 0, true},
		{"1.5Gi", 0, true},
		{"-1Gi", 0, true},
		{"+1", 0, true},
		{"1e9", 0, true},
		{"1gi", 0, true},
		{"1 Gi", 0, true},
		{"0x10", 0, true},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("Parse(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
