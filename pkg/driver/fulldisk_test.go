package driver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A full filesystem under both the data and the state: every call that needs
// space fails with ResourceExhausted and leaves nothing half made, the driver
// restarts, what existed is intact, and all works again once space is freed.
func TestFullDisk(t *testing.T) {
	tests := []struct {
		name   string
		inodes bool
	}{
		{"blocks", false},
		{"inodes", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, "ext4", 32, "-N", "512", "-m", "0")
			e := newEnvOn(t, mnt)
			before := e.create(t, "before")
			data := filepath.Join(e.d.hostpath.vols.Path(before), "kept")
			if err := os.WriteFile(data, []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
			// 2 MiB of data, so a copy of this volume cannot fit once full.
			if err := os.WriteFile(filepath.Join(e.d.hostpath.vols.Path(before), "bulk"), make([]byte, 2<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			sr, err := e.d.CreateSnapshot(ctx, snapReq("before", before))
			if err != nil {
				t.Fatal(err)
			}
			snapBefore := sr.GetSnapshot().GetSnapshotId()
			filler := testutil.FillFS(t, mnt, tc.inodes)

			_, err = e.d.CreateVolume(ctx, createReq("during", 1<<20))
			wantCode(t, err, codes.ResourceExhausted)
			// Snapshot, restore and clone need space too (a snapshot taken
			// before the disk filled serves the restore).
			_, err = e.d.CreateSnapshot(ctx, snapReq("during", before))
			wantCode(t, err, codes.ResourceExhausted)
			_, err = e.d.CreateVolume(ctx, fromSnapshot("restored", 0, snapBefore))
			wantCode(t, err, codes.ResourceExhausted)
			_, err = e.d.CreateVolume(ctx, fromVolume("cloned", 0, before))
			wantCode(t, err, codes.ResourceExhausted)
			if left, _ := os.ReadDir(filepath.Join(mnt, "data", "partial")); len(left) != 0 {
				t.Fatalf("failed copies left in partial/: %v", left)
			}
			if snaps, _ := e.d.hostpath.vols.ListSnapshots(); len(snaps) != 1 {
				t.Fatalf("snapshot directories after failed snapshots: %v", snaps)
			}
			if _, err := e.d.Probe(ctx, nil); err != nil {
				t.Fatalf("Probe on a full disk: %v (a full disk is not a broken driver)", err)
			}
			sh, _ := e.d.NodeGetStorageHealth(ctx, nil)
			if len(sh.GetBackendHealth()) != 1 || sh.GetBackendHealth()[0].GetStatus() != csi.StorageHealthErrorType_STORAGE_DEGRADED {
				t.Fatalf("storage health on a full disk: %v", sh)
			}
			// Nothing half made.
			if names, _ := e.d.hostpath.vols.List(); len(names) != 1 {
				t.Fatalf("volume directories after failed creates: %v", names)
			}
			if _, err := e.d.store.GetVolumeByName("during"); err == nil {
				t.Fatal("a failed create left a record")
			}
			// A restart on the full disk works and keeps everything.
			e.restart(t)
			if got, err := os.ReadFile(data); err != nil || string(got) != "precious" {
				t.Fatalf("data after restart on a full disk: %q %v", got, err)
			}
			if _, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: before}); err != nil {
				t.Fatal(err)
			}
			// Freed space: everything works again.
			if err := os.RemoveAll(filler); err != nil {
				t.Fatal(err)
			}
			if _, err := e.d.CreateSnapshot(ctx, snapReq("after", before)); err != nil {
				t.Fatalf("snapshot after freeing space: %v", err)
			}
			if _, err := e.d.CreateVolume(ctx, fromSnapshot("restored", 0, snapBefore)); err != nil {
				t.Fatalf("restore after freeing space: %v", err)
			}
			id := e.create(t, "after")
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
			e.d.Close()
		})
	}
}
