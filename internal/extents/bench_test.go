package extents

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/copytree"
	"github.com/hostpath-csi/hostpath-csi/internal/imagefs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// BenchmarkSnapshotDelta: a block volume of 1 GiB and of 16 GiB, a tenth of
// it written (1 MiB runs at random places), a snapshot, 1% of its capacity
// rewritten (4-64 KiB writes at random places), a second snapshot, made as
// the backend makes them (reflink on xfs and btrfs, a copy of the data on
// ext4). Then the changed blocks between the snapshots, from the extent
// maps (delta) against reading both files whole and comparing them
// (fullcompare): time per answer, and MB-read/op, what each read from the
// two files. Both start from a cold page cache for the snapshots' files
// (POSIX_FADV_DONTNEED before each round); both answers are checked equal
// once. Needs root (loop-mounted filesystems under $HOSTPATH_BENCH_DIR or
// the temporary directory).
func BenchmarkSnapshotDelta(b *testing.B) {
	for _, fs := range dataFilesystems {
		for _, gib := range []int64{1, 16} {
			b.Run(fmt.Sprintf("%s/%dGiB", fs.name, gib), func(b *testing.B) {
				base, target := deltaFixture(b, fs.name, fs.mkfs, gib<<30)
				var want []int64
				b.Run("delta", func(b *testing.B) {
					var st Stats
					var changed int64
					for b.Loop() {
						b.StopTimer()
						dropCache(b, base, target)
						b.StartTimer()
						changed = 0
						var err error
						st, err = Delta(context.Background(), base, target, 0, func(r Range) error { changed += r.Length; return nil })
						if err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(st.BytesRead)/1e6, "MB-read/op")
					b.ReportMetric(float64(changed)/1e6, "MB-changed")
				})
				b.Run("fullcompare", func(b *testing.B) {
					var read int64
					for b.Loop() {
						b.StopTimer()
						dropCache(b, base, target)
						b.StartTimer()
						read, want = fullCompare(b, base, target)
					}
					b.ReportMetric(float64(read)/1e6, "MB-read/op")
				})
				var got []int64
				if _, err := Delta(context.Background(), base, target, 0, func(r Range) error {
					got = append(got, blocks([]Range{r})...)
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				if want != nil && !slices.Equal(got, want) {
					b.Fatalf("delta reports %d changed blocks, a full compare %d", len(got), len(want))
				}
			})
		}
	}
}

// deltaFixture makes the volume, its two snapshots, and opens them.
func deltaFixture(b *testing.B, fsName string, mkfs []string, size int64) (File, File) {
	b.Helper()
	testutil.RequireRoot(b)
	if d := os.Getenv("HOSTPATH_BENCH_DIR"); d != "" {
		b.Setenv("TMPDIR", d)
	}
	// The volume is preallocated whole; the snapshots take what was written.
	mnt := testutil.LoopFS(b, fsName, int(size>>20)+int(size>>20)/2+1024, mkfs...)
	vol := filepath.Join(mnt, "vol")
	if err := os.Mkdir(vol, 0o700); err != nil {
		b.Fatal(err)
	}
	img := filepath.Join(vol, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := imagefs.Allocate(f, size); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(size), 1))
	src := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 1<<20)
	put := func(off, n int64) {
		src.Read(buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			b.Fatal(err)
		}
	}
	for _, mib := range r.Perm(int(size >> 20))[:size>>20/10] {
		put(int64(mib)<<20, 1<<20)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	s1 := snapshotB(b, vol, filepath.Join(mnt, "s1"))
	for changed := int64(0); changed < size/100; {
		n := (1 + r.Int64N(16)) * BlockSize
		put(r.Int64N(size/BlockSize-16)*BlockSize, n)
		changed += n
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	s2 := snapshotB(b, vol, filepath.Join(mnt, "s2"))
	return openB(b, s1), openB(b, s2)
}

func snapshotB(b *testing.B, vol, dst string) string {
	b.Helper()
	if _, err := copytree.Tree(context.Background(), vol, dst, copytree.Options{}); err != nil {
		b.Fatal(err)
	}
	return filepath.Join(dst, "disk.img")
}

func openB(b *testing.B, path string) File {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		b.Fatal(err)
	}
	return File{Fd: int(f.Fd()), Size: st.Size, Dev: st.Dev}
}

func dropCache(b *testing.B, files ...File) {
	for _, f := range files {
		if err := unix.Fadvise(f.Fd, 0, 0, unix.FADV_DONTNEED); err != nil {
			b.Fatal(err)
		}
	}
}

// fullCompare reads both files whole and compares them block by block: what
// a backup without changed block tracking does.
func fullCompare(b *testing.B, base, target File) (read int64, changed []int64) {
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < target.Size; off += int64(len(y)) {
		n, err := unix.Pread(target.Fd, y, off)
		if err != nil {
			b.Fatal(err)
		}
		m, err := unix.Pread(base.Fd, x[:n], off)
		if err != nil || m != n {
			b.Fatal(m, err)
		}
		read += int64(n + m)
		for i := 0; i < n; i += BlockSize {
			if !bytes.Equal(x[i:i+BlockSize], y[i:i+BlockSize]) {
				changed = append(changed, (off+int64(i))/BlockSize)
			}
		}
	}
	return read, changed
}
