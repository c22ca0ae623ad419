package hostpath

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// The cost of holding an image or block volume's room: making its 1 GiB
// file sparse (a truncate, as before) or preallocated (fallocate, as now),
// on an ext4 and an xfs data filesystem, and what the file takes on disk
// (MiB/op, st_blocks). Run with `go test -run '^$' -bench CreateVolumeFile
// -benchtime 20x ./internal/backend/hostpath/` as root.
func BenchmarkCreateVolumeFile(b *testing.B) {
	const size = 1 << 30
	for _, fs := range []string{"ext4", "xfs"} {
		mnt := testutil.LoopFS(b, fs, 3072)
		be, err := New(filepath.Join(mnt, "data"), Options{})
		if err != nil {
			b.Fatal(err)
		}
		for _, kind := range []struct{ name, fsType string }{{"image", "ext4"}, {"block", ""}} {
			for _, prealloc := range []bool{false, true} {
				name := fmt.Sprintf("%s/%s/sparse", fs, kind.name)
				if prealloc {
					name = fmt.Sprintf("%s/%s/preallocated", fs, kind.name)
				}
				b.Run(name, func(b *testing.B) {
					var used int64
					for i := 0; i < b.N; i++ {
						id := fmt.Sprintf("hpv1-%032x", i)
						if prealloc {
							if err := be.CreateImage(id, size, kind.fsType); err != nil {
								b.Fatal(err)
							}
						} else if err := createTruncated(be, id, size); err != nil {
							b.Fatal(err)
						}
						b.StopTimer()
						var st unix.Stat_t
						if err := unix.Stat(be.ImagePath(id), &st); err != nil {
							b.Fatal(err)
						}
						used += st.Blocks * 512
						if err := os.RemoveAll(be.Path(id)); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					b.ReportMetric(float64(used)/float64(b.N)/(1<<20), "MiB/op")
				})
			}
		}
	}
}

// createTruncated makes a volume's file as the driver did before it
// preallocated: a truncate to its size, fsync'd, with its directory.
func createTruncated(be *Backend, id string, size int64) error {
	if err := os.Mkdir(be.Path(id), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(be.ImagePath(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return be.syncDirs(be.Path(id), be.volumes)
}
