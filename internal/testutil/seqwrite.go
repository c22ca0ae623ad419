package testutil

import (
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// WriteCases are the write benchmarks' cases: a new volume's first fill and
// a full overwrite of it, each with O_DIRECT and through the page cache
// (fsync at the end), by one writer; and O_DIRECT by four writers at once
// (several I/Os in flight). See WriteRatio.
var WriteCases = []struct {
	Name              string
	Direct, Overwrite bool
	Writers           int
}{
	{"fresh/direct", true, false, 1},
	{"fresh/buffered", false, false, 1},
	{"overwrite/direct", true, true, 1},
	{"overwrite/buffered", false, true, 1},
	{"fresh/direct-4writers", true, false, 4},
	{"overwrite/direct-4writers", true, true, 4},
}

// SeqWriteBlock is the write size SeqWrite uses.
const SeqWriteBlock = 1 << 20

// SeqWrite writes size bytes (a multiple of SeqWriteBlock) to path from the
// start, one block per write(2), and fsyncs at the end, so the time it takes
// includes getting the data and its block allocations to the disk. With
// direct, path is opened O_DIRECT and the page cache is bypassed; without,
// the writes go through the page cache and the final fsync pays for them.
// path is created when it does not exist (a block device must exist).
//
// With writers > 1, that many goroutines each write their own contiguous
// share of the range at once (each still one block at a time), as a
// database with several I/Os in flight does. A regular file is then first
// extended to size (sparse), so that no writer extends it: the parallel
// writes meet holes, like the writes to a volume's sparse backing file.
func SeqWrite(path string, size int64, direct bool, writers int) error {
	flags := os.O_WRONLY | os.O_CREATE
	if direct {
		flags |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if writers < 1 {
		writers = 1
	}
	if fi, err := f.Stat(); err == nil && writers > 1 && fi.Mode().IsRegular() && fi.Size() < size {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("extend %s: %w", path, err)
		}
	}
	share := size / int64(writers) / SeqWriteBlock * SeqWriteBlock
	errs := make(chan error, writers)
	for w := range writers {
		from, to := int64(w)*share, int64(w+1)*share
		if w == writers-1 {
			to = size
		}
		go func() { errs <- writeRange(f, from, to) }()
	}
	for range writers {
		if err := <-errs; err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

func writeRange(f *os.File, from, to int64) error {
	// O_DIRECT wants an aligned buffer: an anonymous mapping is page
	// aligned.
	buf, err := unix.Mmap(-1, 0, SeqWriteBlock, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = byte(i*7 + 1) // no zeros for anything to skip
	}
	for off := from; off < to; off += SeqWriteBlock {
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("at %d: %w", off, err)
		}
	}
	return nil
}

// BenchDir is the directory benchmarks keep their files in:
// $HOSTPATH_BENCH_DIR when set (to measure a particular disk), else a
// temporary directory.
func BenchDir(b *testing.B) string {
	b.Helper()
	if d := os.Getenv("HOSTPATH_BENCH_DIR"); d != "" {
		d, err := os.MkdirTemp(d, "bench")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	return b.TempDir()
}

// WriteRatio compares sequential writes to a volume with the same writes to
// a plain file. Each of b.N rounds gets a fresh plain path and a fresh
// volume path from the two functions (untimed: they may make files, images,
// devices), with overwrite writes size bytes to both first (untimed: the
// timed writes then meet allocated blocks, a database's steady state rather
// than a new volume's first fill), times SeqWrite of size bytes with
// writers writers to each (alternating which goes
// first, so neither always meets a disk the other just filled), and calls
// their cleanups. It reports plain-MB/s and vol-MB/s over all rounds, and
// ratio: the median over rounds of vol/plain throughput (issue 9's goal is
// >= 0.9). Each round's two writes run back to back, so the median of the
// paired ratios resists other load on the machine better than a ratio of
// totals does. ns/op covers both writes.
func WriteRatio(b *testing.B, size int64, direct, overwrite bool, writers int, plain, vol func(i int) (path string, done func())) {
	b.Helper()
	var plainT, volT time.Duration
	var ratios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		pp, pdone := plain(i)
		vp, vdone := vol(i)
		if overwrite {
			for _, p := range []string{pp, vp} {
				if err := SeqWrite(p, size, direct, writers); err != nil {
					b.Fatal(err)
				}
			}
		}
		unix.Sync() // start both from a quiet disk
		b.StartTimer()
		order := []struct {
			path string
			t    *time.Duration
		}{{pp, &plainT}, {vp, &volT}}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		var took [2]time.Duration
		for j, o := range order {
			start := time.Now()
			if err := SeqWrite(o.path, size, direct, writers); err != nil {
				b.Fatal(err)
			}
			took[j] = time.Since(start)
			*o.t += took[j]
		}
		if i%2 == 1 {
			took[0], took[1] = took[1], took[0]
		}
		ratios = append(ratios, took[0].Seconds()/took[1].Seconds())
		b.StopTimer()
		vdone()
		pdone()
		b.StartTimer()
	}
	mb := float64(size) * float64(b.N) / 1e6
	b.ReportMetric(mb/plainT.Seconds(), "plain-MB/s")
	b.ReportMetric(mb/volT.Seconds(), "vol-MB/s")
	sort.Float64s(ratios)
	med := ratios[len(ratios)/2]
	if len(ratios)%2 == 0 {
		med = (ratios[len(ratios)/2-1] + med) / 2
	}
	b.ReportMetric(med, "ratio")
}
