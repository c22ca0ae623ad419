package copytree

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A tenant swaps a directory of its volume with a symlink to outside the
// volume, in a loop, while the volume is copied (the driver copies as root).
// No copy may read anything outside the source (the canary behind the
// symlink never appears in a copy), create anything outside the destination,
// or hold anything the source never held.
func TestTreeStaysInsideUnderSwapAttack(t *testing.T) {
	for _, fs := range []struct {
		name string
		mkfs []string
	}{{"ext4", nil}, {"xfs", []string{"-m", "reflink=1"}}} {
		t.Run(fs.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, fs.name, 512, fs.mkfs...)
			src := filepath.Join(mnt, "volume")
			if err := os.Mkdir(src, 0o755); err != nil {
				t.Fatal(err)
			}
			attack := testutil.NewSwapAttack(t, src, filepath.Join(mnt, "outside"))
			before := attack.OutsideState(t)
			attack.Start()
			defer attack.Stop(t)
			start := time.Now()
			const copies = 40
			files, links := 0, 0
			for i := 0; i < copies; i++ {
				dst := filepath.Join(mnt, fmt.Sprint("copy", i))
				_, err := Tree(context.Background(), src, dst, Options{Workers: 2})
				// The escapes first: they are what this test is about.
				if diff := testutil.OutsideChanged(before, attack.OutsideState(t)); diff != "" {
					t.Fatalf("copy %d (%v into the attack, %d swaps) created files outside its destination:\n%s",
						i, time.Since(start), attack.Swaps(), diff)
				}
				f, l, cerr := attack.CheckCopy(dst)
				if cerr != nil {
					t.Fatalf("copy %d (%v into the attack, %d swaps): %v", i, time.Since(start), attack.Swaps(), cerr)
				}
				files, links = files+f, links+l
				if err != nil {
					t.Fatalf("copy %d of a volume whose entries are being swapped: %v", i, err)
				}
				if err := os.RemoveAll(dst); err != nil {
					t.Fatal(err)
				}
			}
			swaps := attack.Stop(t)
			// The copies must have raced the attack, not dodged it.
			if files == 0 || links == 0 || swaps < copies {
				t.Fatalf("%d copies held %d files and %d symlinks during %d swaps: the attack did not overlap them", copies, files, links, swaps)
			}
			t.Logf("%d copies during %d swaps in %v held %d of the volume's files and %d symlinks, whole; none escaped",
				copies, swaps, time.Since(start), files, links)
		})
	}
}
