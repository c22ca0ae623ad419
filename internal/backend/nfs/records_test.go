package nfs

import (
	"context"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// On a server that refuses hard links, a new volume record (a name only
// the driver draws) is put in place by a check and a rename, still never
// over an existing record; a subdirectory claim (a name a tenant's subDir
// decides) is not, and says why.
func TestNewRecordsOnAServerWithoutHardLinks(t *testing.T) {
	t.Parallel()
	x, _, _ := useStandInExportWith(t, Options{LinkRecord: func(int, string, int, string, int) error { return unix.EPERM }})

	ctx := context.Background()
	r := &VolumeRecord{ID: "v1", Name: "pv-1", SubDir: "a", Phase: PhaseCreating}
	if err := x.CreateVolume(ctx, r, "k1"); err != nil {
		t.Fatalf("new volume record on a server without hard links: %v", err)
	}
	if got, err := x.GetVolume(ctx, "k1"); err != nil || got.ID != "v1" {
		t.Fatalf("record written: %v %v", got, err)
	}
	other := &VolumeRecord{ID: "v2", Name: "pv-2", SubDir: "b", Phase: PhaseCreating}
	if err := x.CreateVolume(ctx, other, "k1"); !errors.Is(err, ErrExists) {
		t.Errorf("a second record of the same key: %v, want ErrExists", err)
	}
	if got, err := x.GetVolume(ctx, "k1"); err != nil || got.ID != "v1" {
		t.Errorf("the first record after a second create of its key: %v %v", got, err)
	}
	if _, err := x.ClaimSubDir(ctx, "a", "v1"); !errors.Is(err, unix.EPERM) {
		t.Errorf("a subdirectory claim on a server without hard links: %v, want EPERM (no fallback for names a tenant decides)", err)
	}
}
