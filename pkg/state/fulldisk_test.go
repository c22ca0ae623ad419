package state

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Commits that hit a full disk fail with ENOSPC, and the database keeps every
// record that was acknowledged before: it reopens and reads back intact.
func TestFullDiskDoesNotCorrupt(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 16, "-m", "0")
	s, err := Open(mnt + "/state")
	if err != nil {
		t.Fatal(err)
	}
	testutil.FillFS(t, mnt, false)
	// Large records make the file grow until the disk says no.
	big := map[string]string{"pad": strings.Repeat("x", 64<<10)}
	var acked []string
	var failure error
	for i := 0; i < 10000 && failure == nil; i++ {
		v := vol(fmt.Sprintf("id-%05d", i), fmt.Sprintf("name-%05d", i))
		v.Parameters = big
		if err := s.PutVolume(v); err != nil {
			failure = err
			break
		}
		acked = append(acked, v.ID)
	}
	if !errors.Is(failure, unix.ENOSPC) {
		t.Fatalf("writing into a full disk: %v after %d records, want ENOSPC", failure, len(acked))
	}
	// Still usable for reads, and a small change may still fit or fail cleanly.
	if _, err := s.GetVolume("id-00000"); len(acked) > 0 && err != nil {
		t.Fatalf("read after ENOSPC: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close after ENOSPC: %v", err)
	}
	s, err = Open(mnt + "/state")
	if err != nil {
		t.Fatalf("reopen after ENOSPC: %v", err)
	}
	defer s.Close()
	for _, id := range acked {
		v, err := s.GetVolume(id)
		if err != nil || v.Parameters["pad"] != big["pad"] {
			t.Fatalf("acknowledged record %s after reopen: %v", id, err)
		}
	}
	vols, _, err := s.ListVolumes("", 0, nil)
	if err != nil || len(vols) != len(acked) {
		t.Fatalf("after reopen: %d records (%v), want the %d acknowledged", len(vols), err, len(acked))
	}
	t.Logf("%d records acknowledged before ENOSPC, all intact after reopen", len(acked))
}
