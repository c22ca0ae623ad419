package extents

import (
	"bytes"
	"context"
	"errors"
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

// dataFilesystems are the data filesystems the driver keeps block volumes
// on: xfs and btrfs reflink a snapshot, ext4 copies it.
var dataFilesystems = []struct {
	name   string
	mkfs   []string
	shares bool // snapshots share the blocks they did not change
}{
	{"xfs", []string{"-m", "reflink=1"}, true},
	{"btrfs", nil, true},
	{"ext4", nil, false},
}

// write is one write the test makes into a volume's file.
type write struct{ off, n int64 }

// randomWrites are count writes into a file of size bytes: whole blocks,
// partial blocks and unaligned runs across block boundaries.
func randomWrites(r *rand.Rand, size int64, count int) []write {
	var ws []write
	for range count {
		var w write
		switch r.IntN(3) {
		case 0: // whole blocks
			w = write{off: r.Int64N(size/BlockSize) * BlockSize, n: (1 + r.Int64N(16)) * BlockSize}
		case 1: // part of one block
			w = write{off: r.Int64N(size/BlockSize)*BlockSize + r.Int64N(BlockSize-100), n: 1 + r.Int64N(99)}
		default: // unaligned, across blocks
			w = write{off: r.Int64N(size - 1), n: 1 + r.Int64N(5*BlockSize)}
		}
		w.n = min(w.n, size-w.off)
		ws = append(ws, w)
	}
	return ws
}

func apply(t *testing.T, r *rand.Rand, path string, ws []write) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, w := range ws {
		buf := make([]byte, w.n)
		for i := range buf {
			buf[i] = byte(r.UintN(255) + 1) // never a zero byte: a write always changes a fresh block
		}
		if _, err := f.WriteAt(buf, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// snapshot copies the volume's directory the way the backend does.
func snapshot(t *testing.T, vol, dst string) string {
	t.Helper()
	if _, err := copytree.Tree(context.Background(), vol, dst, copytree.Options{}); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dst, "disk.img")
}

func open(t *testing.T, path string) File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return File{Fd: int(f.Fd()), Size: st.Size, Dev: st.Dev}
}

// blocks is a set of block numbers, from ranges.
func blocks(rs []Range) []int64 {
	var out []int64
	for _, r := range rs {
		for b := r.Offset / BlockSize; b*BlockSize < r.End(); b++ {
			out = append(out, b)
		}
	}
	return out
}

// touched are the blocks the writes reached.
func touched(ws ...[]write) []int64 {
	seen := map[int64]bool{}
	for _, list := range ws {
		for _, w := range list {
			for b := w.off / BlockSize; b*BlockSize < w.off+w.n; b++ {
				seen[b] = true
			}
		}
	}
	out := make([]int64, 0, len(seen))
	for b := range seen {
		out = append(out, b)
	}
	slices.Sort(out)
	return out
}

// differing compares two files block by block, the brute-force way.
func differing(t *testing.T, a, b string) []int64 {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for off := 0; off < len(y); off += BlockSize {
		end := min(off+BlockSize, len(y))
		var was []byte
		if off < len(x) {
			was = x[off:min(end, len(x))]
		}
		now := y[off:end]
		if !bytes.Equal(was, now) && !(len(was) == 0 && allZero(now)) {
			out = append(out, int64(off/BlockSize))
		}
	}
	return out
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func collect(t *testing.T, f func(emit func(Range) error) error) []Range {
	t.Helper()
	var rs []Range
	err := f(func(r Range) error {
		if n := len(rs); n > 0 && r.Offset <= rs[n-1].End() {
			t.Fatalf("range %+v follows %+v: not increasing and apart", r, rs[n-1])
		}
		if r.Offset%BlockSize != 0 || r.Length%BlockSize != 0 || r.Length <= 0 {
			t.Fatalf("range %+v is not whole blocks", r)
		}
		rs = append(rs, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// Two snapshots of a preallocated block volume's file with random writes
// between them: Delta reports exactly the blocks a byte comparison finds
// changed, deciding what the snapshots share without reading it; Allocated
// reports exactly the blocks ever written. Both from any starting offset
// give the tail of the same answer.
func TestDeltaAndAllocatedMatchABruteForceComparison(t *testing.T) {
	for _, fs := range dataFilesystems {
		t.Run(fs.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, fs.name, 512, fs.mkfs...)
			const size = 64 << 20
			vol := filepath.Join(mnt, "vol")
			if err := os.Mkdir(vol, 0o700); err != nil {
				t.Fatal(err)
			}
			img := filepath.Join(vol, "disk.img")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			if err := imagefs.Allocate(f, size); err != nil {
				t.Fatal(err)
			}
			f.Close()
			r := rand.New(rand.NewPCG(uint64(len(fs.name)), 7))
			first := randomWrites(r, size, 60)
			apply(t, r, img, first)
			s1 := snapshot(t, vol, filepath.Join(mnt, "s1"))
			second := randomWrites(r, size, 60)
			// Some writes exactly over earlier ones.
			second = append(second, first[0], first[5], write{first[9].off + 1, first[9].n})
			apply(t, r, img, second)
			s2 := snapshot(t, vol, filepath.Join(mnt, "s2"))

			base, target := open(t, s1), open(t, s2)
			var st Stats
			delta := collect(t, func(emit func(Range) error) (err error) {
				st, err = Delta(context.Background(), base, target, 0, emit)
				return err
			})
			want := differing(t, s1, s2)
			if got := blocks(delta); !slices.Equal(got, want) {
				t.Fatalf("Delta reports blocks %v\nbrute force finds %v", got, want)
			}
			if fs.shares && st.SharedBytes == 0 {
				t.Fatalf("on %s nothing was found shared: %+v", fs.name, st)
			}
			if fs.shares && st.BytesRead > 4*int64(len(want)+len(touched(second)))*BlockSize {
				t.Fatalf("on %s Delta read %d bytes for %d changed blocks", fs.name, st.BytesRead, len(want))
			}
			t.Logf("%s: %d changed blocks in %d ranges; %+v", fs.name, len(want), len(delta), st)

			alloc := collect(t, func(emit func(Range) error) error {
				return Allocated(context.Background(), target.Fd, target.Size, 0, emit)
			})
			if got, want := blocks(alloc), touched(first, second); !slices.Equal(got, want) {
				t.Fatalf("Allocated reports blocks %v\nthe writes reached %v", got, want)
			}

			for _, from := range []int64{1, BlockSize, first[3].off, second[2].off + 7, size / 2, size - 1, size} {
				tail := func(all []Range) []Range {
					var out []Range
					for _, r := range all {
						if r.End() <= from {
							continue
						}
						if s := from &^ (BlockSize - 1); r.Offset < s {
							r = Range{Offset: s, Length: r.End() - s}
						}
						out = append(out, r)
					}
					return out
				}
				gotD := collect(t, func(emit func(Range) error) error {
					_, err := Delta(context.Background(), base, target, from, emit)
					return err
				})
				if want := tail(delta); !slices.Equal(gotD, want) {
					t.Fatalf("Delta from %d: %v, want %v", from, gotD, want)
				}
				gotA := collect(t, func(emit func(Range) error) error {
					return Allocated(context.Background(), target.Fd, target.Size, from, emit)
				})
				if want := tail(alloc); !slices.Equal(gotA, want) {
					t.Fatalf("Allocated from %d: %v, want %v", from, gotA, want)
				}
			}
		})
	}
}

// A walk stops when its context is cancelled.
func TestCancelledWalkStops(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f := open(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Allocated(ctx, f.Fd, f.Size, 0, func(Range) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Allocated with a cancelled context: %v", err)
	}
	if _, err := Delta(ctx, f, f, 0, func(Range) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Delta with a cancelled context: %v", err)
	}
}

// What emit returns ends the walk with that error.
func TestEmitErrorEndsTheWalk(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, make([]byte, 64<<10), 0o600)
	data := make([]byte, 64<<10)
	for i := 0; i < len(data); i += 2 * BlockSize {
		data[i] = 1 // every other block changed: many ranges
	}
	os.WriteFile(b, data, 0o600)
	stop := errors.New("client went away")
	n := 0
	_, err := Delta(context.Background(), open(t, a), open(t, b), 0, func(Range) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Delta after emit failed: %v after %d ranges", err, n)
	}
}

// Where the filesystem keeps no extent map (tmpfs), Allocated walks
// SEEK_DATA/SEEK_HOLE and Delta compares the ranges that are data in either
// file: the same answers as a brute-force comparison.
func TestWithoutAnExtentMap(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Error(err)
		}
	})
	const size = 16 << 20
	r := rand.New(rand.NewPCG(5, 5))
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
	}
	first := randomWrites(r, size, 30)
	apply(t, r, a, first)
	// b: a's data, then more writes.
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.OpenFile(b, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range first {
		fb.WriteAt(x[w.off:w.off+w.n], w.off)
	}
	fb.Close()
	second := randomWrites(r, size, 30)
	apply(t, r, b, second)

	base, target := open(t, a), open(t, b)
	if err := newMapReader(target.Fd, target.Size, 0).fill(); !errors.Is(err, ErrNoExtentMap) {
		t.Fatalf("tmpfs has an extent map here (%v): this test checks nothing", err)
	}
	var st Stats
	got := collect(t, func(emit func(Range) error) (err error) {
		st, err = Delta(context.Background(), base, target, 0, emit)
		return err
	})
	if want := differing(t, a, b); !slices.Equal(blocks(got), want) {
		t.Fatalf("Delta reports blocks %v\nbrute force finds %v", blocks(got), want)
	}
	if st.BytesRead >= 2*size {
		t.Fatalf("Delta read %d bytes: the holes too", st.BytesRead)
	}
	alloc := collect(t, func(emit func(Range) error) error {
		return Allocated(context.Background(), target.Fd, target.Size, 0, emit)
	})
	if got, want := blocks(alloc), touched(first, second); !slices.Equal(got, want) {
		t.Fatalf("Allocated reports blocks %v\nthe writes reached %v", got, want)
	}
}
