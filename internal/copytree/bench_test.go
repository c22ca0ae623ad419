package copytree

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// BenchmarkTree copies issue 3's reference volume (one 1 GiB file of
// random bytes and 10 000 files of 4 KiB) on each filesystem with the
// mechanism the engine picks there. Run by make bench (needs root):
//
//	go test -run '^$' -bench Tree -benchtime 3x ./internal/copytree/
func BenchmarkTree(b *testing.B) {
	for _, fs := range []struct {
		name string
		mkfs []string
	}{{"ext4", nil}, {"xfs-reflink", []string{"-m", "reflink=1"}}, {"btrfs", nil}} {
		b.Run(fs.name, func(b *testing.B) {
			kind := map[string]string{"ext4": "ext4", "xfs-reflink": "xfs", "btrfs": "btrfs"}[fs.name]
			mnt := testutil.LoopFS(b, kind, 8<<10, fs.mkfs...)
			src := filepath.Join(mnt, "src")
			writeReferenceVolume(b, src)
			b.ResetTimer()
			var st Stats
			var cpu time.Duration
			for i := 0; i < b.N; i++ {
				dst := filepath.Join(mnt, fmt.Sprint("dst", i))
				var err error
				before := cpuTime(b)
				if st, err = Tree(context.Background(), src, dst, Options{Workers: benchWorkers}); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime(b) - before
				b.StopTimer()
				if err := os.RemoveAll(dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(st.Files), "files")
			// CPU time (user and system, the kernel's copying included) says
			// what a copy costs even when other work shares the machine and
			// makes wall time noisy.
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
			b.Logf("%s: mechanism %s", fs.name, st.Mechanism())
		})
	}
}

func writeReferenceVolume(b *testing.B, dir string) {
	b.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "small"), 0o755); err != nil {
		b.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{1})
	block := make([]byte, 4<<20)
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		b.Fatal(err)
	}
	for written := 0; written < 1<<30; written += len(block) {
		r.Read(block)
		if _, err := f.Write(block); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	small := make([]byte, 4096)
	for i := 0; i < 10000; i++ {
		r.Read(small)
		if err := os.WriteFile(filepath.Join(dir, "small", fmt.Sprint(i)), small, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// cpuTime is the process's user and system time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var benchWorkers = func() int {
	n, _ := strconv.Atoi(os.Getenv("COPYTREE_WORKERS"))
	return n
}()
