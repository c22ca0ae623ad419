package loop

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

const benchWrite = 256 << 20

// BenchmarkBlockWriteVsPlain: a raw block volume (a fresh sparse backing
// file on a loop device with direct I/O and 4 KiB sectors, as a block
// volume is attached) against a fresh plain file in the same directory.
// See testutil.WriteCases.
func BenchmarkBlockWriteVsPlain(b *testing.B) {
	testutil.RequireRoot(b)
	for _, tc := range testutil.WriteCases {
		b.Run(tc.Name, func(b *testing.B) {
			dir := testutil.BenchDir(b)
			testutil.CleanupLoopDevices(b, dir)
			plain := func(i int) (string, func()) {
				p := filepath.Join(dir, fmt.Sprint("plain", i))
				return p, func() { os.Remove(p) }
			}
			vol := func(i int) (string, func()) {
				p := filepath.Join(dir, fmt.Sprint("block", i))
				if err := os.WriteFile(p, nil, 0o600); err != nil {
					b.Fatal(err)
				}
				if err := os.Truncate(p, benchWrite); err != nil {
					b.Fatal(err)
				}
				d, err := Attach(p, Options{DirectIO: true, BlockSize: 4096})
				if err != nil {
					b.Fatal(err)
				}
				if !d.DirectIO {
					b.Logf("%s: the backing filesystem gave buffered I/O", d.Path)
				}
				return d.Path, func() {
					if _, err := Detach(d); err != nil {
						b.Error(err)
					}
					os.Remove(p)
				}
			}
			testutil.WriteRatio(b, benchWrite, tc.Direct, tc.Overwrite, tc.Writers, plain, vol)
		})
	}
}

// BenchmarkAttach: what a block volume's stage costs in loop work: a
// sparse 1 GiB backing file made and attached (direct I/O, 4 KiB sectors).
// The detach and removal are not timed.
func BenchmarkAttach(b *testing.B) {
	testutil.RequireRoot(b)
	dir := testutil.BenchDir(b)
	testutil.CleanupLoopDevices(b, dir)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := filepath.Join(dir, fmt.Sprint("vol", i))
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(p, 1<<30); err != nil {
			b.Fatal(err)
		}
		d, err := Attach(p, Options{DirectIO: true, BlockSize: 4096})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := Detach(d); err != nil {
			b.Fatal(err)
		}
		os.Remove(p)
		b.StartTimer()
	}
}

// BenchmarkFind: how long a restart takes per volume to learn which device
// holds a backing file (it lists every bound loop device).
func BenchmarkFind(b *testing.B) {
	testutil.RequireRoot(b)
	dir := testutil.BenchDir(b)
	testutil.CleanupLoopDevices(b, dir)
	var devs []*Device
	for i := range 16 {
		p := filepath.Join(dir, fmt.Sprint("vol", i))
		if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
			b.Fatal(err)
		}
		d, err := Attach(p, Options{})
		if err != nil {
			b.Fatal(err)
		}
		devs = append(devs, d)
	}
	b.Cleanup(func() {
		for _, d := range devs {
			Detach(d)
		}
	})
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if found, err := Find(filepath.Join(dir, "vol7")); err != nil || len(found) != 1 {
			b.Fatalf("Find = %v, %v", found, err)
		}
	}
}
