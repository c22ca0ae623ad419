package proto

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeDecode(t *testing.T) {
	e := Event{Kind: KindAck, Op: OpCreateVol, Name: "b1-w0-3", ID: "hpv1-0123", Src: "snap:sb1-w0-1", Sum: strings.Repeat("ab", 32)}
	line := Encode(e)
	got, ok := Decode(line)
	if !ok || !reflect.DeepEqual(got, e) {
		t.Fatalf("Decode(Encode(e)) = %+v, %v", got, ok)
	}
	// Whatever a power cut or a stray console write makes of a line, it
	// is refused, never misread.
	for _, bad := range []string{
		"",
		line[:len(line)-1], // cut short
		line[:20],          // cut shorter
		"x" + line,         // noise before
		strings.Replace(line, "b1-w0-3", "b1-w0-4", 1), // one changed byte
		"PC 00000000 {}",
		"[   12.345] some kernel message",
	} {
		if e, ok := Decode(bad); ok {
			t.Errorf("Decode(%q) accepted: %+v", bad, e)
		}
	}
}

func TestPlanRoundTrip(t *testing.T) {
	p := &Plan{Boot: 3, FS: "xfs", Workers: 4,
		Vols:  []Obj{{Name: "v", ID: "hpv1-1", State: Acked, Sums: []string{None, "abc"}, Boot: 2}},
		Snaps: []Obj{{Name: "s", State: Creating, Src: "vol:v", Sums: []string{"abc"}}}}
	path := filepath.Join(t.TempDir(), "plan.img")
	if err := WritePlan(path, p); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPlan(path)
	if err != nil || !reflect.DeepEqual(got, p) {
		t.Fatalf("ReadPlan = %+v, %v; want %+v", got, err, p)
	}
}
