package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/backend/hostpath"
)

// A held volume writes its whole size however full the data filesystem is
// made by anything else the driver placed on it. Reproduced on main: a
// claim of the default class (a directory nothing holds) filled the data
// filesystem and a held image got ENOSPC far below its size (sparse files:
// the room was bookkeeping only). Here a tenant with a raw block device
// first tries to give its blocks back (blkdiscard, fallocate --punch-hole:
// the loop driver punches holes in the backing file for both), the image's
// tenant trims its filesystem, then a directory volume fills the disk; the
// block volume and the image volume each write their whole size.
func TestHeldVolumesWriteTheirWholeSizeOnAFullDisk(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			var args []string
			if fs == "xfs" {
				args = []string{"-m", "reflink=1"}
			}
			mnt := testutil.LoopFS(t, fs, 768, args...)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)

			req := createReq("block", 96<<20)
			req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			block := r.GetVolume().GetVolumeId()
			_, dev := e.stageAndPublish(t, block, blockCap)

			req = createReq("image", 96<<20)
			req.Parameters = map[string]string{ParamLayout: LayoutImage}
			if r, err = e.d.CreateVolume(ctx, req); err != nil {
				t.Fatal(err)
			}
			image := r.GetVolume().GetVolumeId()
			_, imageTarget := e.stageAndPublish(t, image, rwo)

			r, err = e.d.CreateVolume(ctx, createReq("greedy", 16<<20))
			if err != nil {
				t.Fatal(err)
			}
			greedy := r.GetVolume().GetVolumeId()
			if got := r.GetVolume().GetVolumeContext()[ContextLimit]; got != hostpath.EnforceNone {
				t.Skipf("directory volumes are held here (%s); this test needs one that is not", got)
			}
			_, greedyTarget := e.stageAndPublish(t, greedy, rwo)

			// The tenants try to hand their blocks back; whether the kernel
			// refuses is not the point, what is left afterwards is.
			for _, c := range [][]string{{"blkdiscard", dev}, {"fallocate", "--punch-hole", "--offset", "0", "--length", "32MiB", dev}, {"fstrim", imageTarget}} {
				if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
					t.Logf("%v: %v %s", c, err, out)
				}
			}
			for _, id := range []string{block, image} {
				var st unix.Stat_t
				if err := unix.Stat(e.d.vols.ImagePath(id), &st); err != nil {
					t.Fatal(err)
				}
				if st.Blocks*512 < st.Size {
					t.Errorf("volume %s's file holds %d of its %d bytes on disk: what is not allocated, another writer can take", id, st.Blocks*512, st.Size)
				}
			}

			filler := testutil.FillFS(t, greedyTarget, false)
			defer os.RemoveAll(filler)

			if err := testutil.SeqWrite(dev, 96<<20, false, 1); err != nil {
				t.Errorf("writing the whole block volume on a full disk: %v", err)
			}
			var st unix.Statfs_t
			if err := unix.Statfs(imageTarget, &st); err != nil {
				t.Fatal(err)
			}
			free := int64(st.Bavail)*st.Bsize - 2<<20 // its own metadata grows as it fills
			free -= free % testutil.SeqWriteBlock
			if err := testutil.SeqWrite(filepath.Join(imageTarget, "data"), free, false, 1); err != nil {
				t.Errorf("writing %d bytes, all the image's filesystem offers, on a full disk: %v", free, err)
			}
			os.RemoveAll(filler)
			for _, id := range []string{block, image, greedy} {
				e.unpublishAndUnstage(t, id)
			}
		})
	}
}
