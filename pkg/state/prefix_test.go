package state

import (
	"slices"
	"testing"
)

// VolumesNamed finds exactly the volumes whose name has the prefix, through
// the name index, and none once deleted.
func TestVolumesNamedByPrefix(t *testing.T) {
	s, _ := openTest(t)
	for _, v := range []*Volume{vol("id-1", "csi-ephemeral:b"), vol("id-2", "pvc-x"), vol("id-3", "csi-ephemeral:a"), vol("id-4", "csi-ephemera"), vol("id-5", "csi-ephemeral;")} {
		if err := s.PutVolume(v); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() []string {
		vols, err := s.VolumesNamed("csi-ephemeral:")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, v := range vols {
			out = append(out, v.ID)
		}
		return out
	}
	if got := ids(); !slices.Equal(got, []string{"id-3", "id-1"}) {
		t.Fatalf("VolumesNamed = %v, want [id-3 id-1] (in name order)", got)
	}
	if err := s.DeleteVolume("id-3"); err != nil {
		t.Fatal(err)
	}
	if got := ids(); !slices.Equal(got, []string{"id-1"}) {
		t.Fatalf("after a delete VolumesNamed = %v, want [id-1]", got)
	}
	if vols, err := s.VolumesNamed("none:"); err != nil || len(vols) != 0 {
		t.Fatalf("no match: %v, %v", vols, err)
	}
}
