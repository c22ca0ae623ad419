package hostpath

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// NodeGetVolumeStats walks the volume while its pod may be renaming things
// in it: swapping a directory with a symlink to outside must never make the
// walk count (or reach) what is outside. The target holds 8 MiB, far more
// than the volume; the volume's own directory may be counted twice at most
// (seen under both names as it moves), never the target.
func TestUsageUnderSwapAttack(t *testing.T) {
	b := newBackend(t)
	if err := b.Create(idA, 0o777); err != nil {
		t.Fatal(err)
	}
	attack := testutil.NewSwapAttack(t, b.Path(idA), filepath.Join(filepath.Dir(b.Root()), "outside"))
	if err := os.WriteFile(filepath.Join(attack.Target, "big"), make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	still, err := b.Usage(idA)
	if err != nil {
		t.Fatal(err)
	}
	attack.Start()
	defer attack.Stop(t)
	for i := 0; i < 300; i++ {
		u, err := b.Usage(idA)
		if err != nil {
			t.Fatalf("usage %d under the attack: %v", i, err)
		}
		if u.Bytes > 2*still.Bytes || u.Inodes > 2*still.Inodes {
			t.Fatalf("usage %d after %d swaps counted %d bytes and %d inodes; the volume holds %d bytes and %d inodes: the walk left the volume",
				i, attack.Swaps(), u.Bytes, u.Inodes, still.Bytes, still.Inodes)
		}
	}
	t.Logf("300 usage walks during %d swaps stayed inside (volume: %d bytes, %d inodes)", attack.Stop(t), still.Bytes, still.Inodes)
}
