package driver

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Issue 7, point 1: a pod swaps a directory of its volume with a symlink to
// outside the volume, in a loop, while the driver (root) snapshots and
// clones the volume; the snapshots are then restored (they hold the symlink,
// which must be copied as a symlink, never followed). Nothing outside the
// source may be read (the canary never appears in a snapshot or volume),
// nothing outside the destination created, and every copy holds only what
// the volume held. On ext4 (copy) and xfs (reflink); btrfs snapshots a
// subvolume in one ioctl and walks nothing.
func TestCopiesStayInsideUnderSwapAttack(t *testing.T) {
	for _, fs := range []struct {
		name string
		mkfs []string
	}{{"ext4", nil}, {"xfs", []string{"-m", "reflink=1"}}} {
		t.Run(fs.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, fs.name, 512, fs.mkfs...)
			e := newEnvOn(t, mnt)
			victim := e.create(t, "victim")
			// Outside the data and state directories, on the same filesystem.
			attack := testutil.NewSwapAttack(t, e.d.hostpath.vols.Path(victim), filepath.Join(mnt, "outside"))
			before := attack.OutsideState(t)
			checkCopy := func(what, dir string, err error) (files, links int) {
				t.Helper()
				if diff := testutil.OutsideChanged(before, attack.OutsideState(t)); diff != "" {
					t.Fatalf("%s (%d swaps) created files outside its destination:\n%s", what, attack.Swaps(), diff)
				}
				if err != nil {
					t.Fatalf("%s of a volume whose entries are being swapped: %v", what, err)
				}
				files, links, err = attack.CheckCopy(dir)
				if err != nil {
					t.Fatalf("%s (%d swaps): %v", what, attack.Swaps(), err)
				}
				return files, links
			}

			// One snapshot before the attack, so at least one holds the
			// symlink for certain.
			r, err := e.d.CreateSnapshot(ctx, snapReq("calm", victim))
			if err != nil {
				t.Fatal(err)
			}
			snaps := []string{r.GetSnapshot().GetSnapshotId()}

			attack.Start()
			defer attack.Stop(t)
			start := time.Now()
			const rounds = 12
			copied := 0
			for i := 0; i < rounds; i++ {
				r, err := e.d.CreateSnapshot(ctx, snapReq(fmt.Sprint("snap-", i), victim))
				id := r.GetSnapshot().GetSnapshotId()
				f, _ := checkCopy(fmt.Sprintf("snapshot %d", i), e.d.hostpath.vols.SnapshotPath(id), err)
				snaps = append(snaps, id)

				c, err := e.d.CreateVolume(ctx, fromVolume(fmt.Sprint("clone-", i), 0, victim))
				g, _ := checkCopy(fmt.Sprintf("clone %d", i), e.d.hostpath.vols.Path(c.GetVolume().GetVolumeId()), err)
				copied += f + g
			}
			swaps := attack.Swaps()

			// Restores while the attack still runs: a snapshot is the pod's
			// no longer, but its symlinks are still the pod's.
			restoredLinks := 0
			for i, id := range snaps {
				want := testutil.TreeManifest(t, e.d.hostpath.vols.SnapshotPath(id))
				v, err := e.d.CreateVolume(ctx, fromSnapshot(fmt.Sprint("restore-", i), 0, id))
				dir := e.d.hostpath.vols.Path(v.GetVolume().GetVolumeId())
				_, l := checkCopy(fmt.Sprintf("restore of snapshot %d", i), dir, err)
				if got := testutil.TreeManifest(t, dir); testutil.DiffManifests(want, got) != "" {
					t.Fatalf("restore %d differs from its snapshot:\n%s", i, testutil.DiffManifests(want, got))
				}
				restoredLinks += l
			}
			if copied == 0 || restoredLinks == 0 || swaps < rounds {
				t.Fatalf("copies held %d files, restores %d symlinks, during %d swaps: the test did not test the attack", copied, restoredLinks, swaps)
			}
			t.Logf("%d snapshots and %d clones during %d swaps (%v), %d restores: %d files copied, %d symlinks restored, none escaped",
				rounds, rounds, swaps, time.Since(start), len(snaps), copied, restoredLinks)
		})
	}
}
