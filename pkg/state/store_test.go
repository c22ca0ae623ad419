package state

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTest(t testing.TB) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func vol(id, name string) *Volume {
	return &Volume{ID: id, Name: name, CapacityBytes: 1 << 20, AccessType: "mount", NodeID: "n1", Phase: PhaseReady, CreatedAt: time.Unix(1, 0).UTC()}
}

func TestVolumeRecords(t *testing.T) {
	s, _ := openTest(t)
	a := vol("id-a", "name-a")
	if err := s.PutVolume(a); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		get     func() (*Volume, error)
		wantID  string
		wantErr error
	}{
		{"by id", func() (*Volume, error) { return s.GetVolume("id-a") }, "id-a", nil},
		{"by name", func() (*Volume, error) { return s.GetVolumeByName("name-a") }, "id-a", nil},
		{"missing id", func() (*Volume, error) { return s.GetVolume("id-x") }, "", ErrNotFound},
		{"missing name", func() (*Volume, error) { return s.GetVolumeByName("name-x") }, "", ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := tc.get()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && v.ID != tc.wantID {
				t.Fatalf("got %q, want %q", v.ID, tc.wantID)
			}
		})
	}
	if err := s.PutVolume(vol("id-b", "name-a")); !errors.Is(err, ErrNameTaken) {
		t.Fatalf("second volume with the same name: err = %v, want ErrNameTaken", err)
	}
	if err := s.SetVolumeCapacity("id-a", 5<<20, 0); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.GetVolume("id-a"); v.CapacityBytes != 5<<20 {
		t.Fatalf("capacity = %d after SetVolumeCapacity", v.CapacityBytes)
	}
	if err := s.SetVolumePhase("id-x", PhaseDeleting); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetVolumePhase on a missing volume: %v", err)
	}
}

func TestDeleteVolumeRemovesNameAndPublications(t *testing.T) {
	s, _ := openTest(t)
	if err := s.PutVolume(vol("id-a", "name-a")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*Publication{
		{VolumeID: "id-a", Kind: KindStage, Path: "/s", Phase: PhaseMounted},
		{VolumeID: "id-a", Kind: KindPublish, Path: "/t", StagingPath: "/s", Phase: PhaseMounted},
	} {
		if err := s.PutPublication(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPublication(&Publication{VolumeID: "id-none", Kind: KindStage, Path: "/s"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("publication of an unknown volume: err = %v", err)
	}
	if pubs, _ := s.PublicationsOf("id-a"); len(pubs) != 2 {
		t.Fatalf("PublicationsOf = %d, want 2", len(pubs))
	}
	if err := s.DeleteVolume("id-a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVolume("id-a"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.GetVolumeByName("name-a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("name still indexed: %v", err)
	}
	if pubs, _ := s.AllPublications(); len(pubs) != 0 {
		t.Fatalf("publications left: %d", len(pubs))
	}
	// The name is free again.
	if err := s.PutVolume(vol("id-b", "name-a")); err != nil {
		t.Fatal(err)
	}
}

func TestListVolumesPagination(t *testing.T) {
	s, _ := openTest(t)
	for i := 0; i < 10; i++ {
		v := vol(fmt.Sprintf("id-%02d", i), fmt.Sprintf("n%d", i))
		if i%3 == 0 {
			v.Phase = PhaseCreating
		}
		if err := s.PutVolume(v); err != nil {
			t.Fatal(err)
		}
	}
	ready := func(v *Volume) bool { return v.Phase == PhaseReady }
	tests := []struct {
		name  string
		limit int
		pages []string
	}{
		{"all at once", 0, []string{"01,02,04,05,07,08"}},
		{"pages of 4", 4, []string{"01,02,04,05", "07,08"}},
		{"pages of 6", 6, []string{"01,02,04,05,07,08"}},
		{"pages of 1", 1, []string{"01", "02", "04", "05", "07", "08"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			token := ""
			for {
				vols, next, err := s.ListVolumes(token, tc.limit, ready)
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, v := range vols {
					ids = append(ids, strings.TrimPrefix(v.ID, "id-"))
				}
				got = append(got, strings.Join(ids, ","))
				if next == "" {
					break
				}
				token = next
			}
			if strings.Join(got, "|") != strings.Join(tc.pages, "|") {
				t.Fatalf("pages = %q, want %q", got, tc.pages)
			}
		})
	}
}

func TestReopenKeepsRecords(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutVolume(vol("id-a", "name-a")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second Open of a held database: err = %v", err)
	}
	s.Close()
	if err := s.PutVolume(vol("id-b", "name-b")); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.GetVolumeByName("name-a"); err != nil || v.ID != "id-a" {
		t.Fatalf("after reopen: %v %v", v, err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(dir+"/"+DBFileName, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte("99"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "newer driver") {
		t.Fatalf("Open of a newer schema: err = %v", err)
	}
}

// Many writers at once share commits; a failing change (a taken name) must
// fail alone and never drop or fail its batch neighbours.
func TestConcurrentWritesGroupCommit(t *testing.T) {
	s, _ := openTest(t)
	if err := s.PutVolume(vol("id-taken", "taken")); err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("name-%d", i)
			if i%10 == 0 {
				name = "taken"
			}
			errs[i] = s.PutVolume(vol(fmt.Sprintf("id-%03d", i), name))
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if i%10 == 0 {
			if !errors.Is(err, ErrNameTaken) {
				t.Errorf("writer %d: err = %v, want ErrNameTaken", i, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	vols, _, err := s.ListVolumes("", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1 + n - n/10; len(vols) != want {
		t.Fatalf("%d volumes stored, want %d", len(vols), want)
	}
}

func BenchmarkPutVolumeParallel(b *testing.B) {
	s, _ := openTest(b)
	var mu sync.Mutex
	i := 0
	b.SetParallelism(8) // 16 writers on 2 cores, like the load goal
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			i++
			id := fmt.Sprintf("id-%09d", i)
			mu.Unlock()
			if err := s.PutVolume(vol(id, "n"+id)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
