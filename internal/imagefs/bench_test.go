package imagefs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

const benchWrite = 256 << 20

func benchScratch(b *testing.B, fs string) string {
	b.Helper()
	testutil.RequireRoot(b)
	testutil.RequireMkfs(b, fs)
	dir := testutil.BenchDir(b)
	testutil.CleanupLoopDevices(b, dir)
	testutil.CleanupMounts(b, dir)
	return dir
}

// BenchmarkImageWriteVsPlain: a file written into a freshly made image
// volume (sparse image, loop with direct I/O, mounted), against the same
// file written to the directory the image lives in (see testutil.WriteCases).
func BenchmarkImageWriteVsPlain(b *testing.B) {
	for _, fs := range []string{Ext4, XFS} {
		for _, tc := range testutil.WriteCases {
			b.Run(fs+"/"+tc.Name, func(b *testing.B) {
				dir := benchScratch(b, fs)
				plain := func(i int) (string, func()) {
					p := filepath.Join(dir, fmt.Sprint("plain", i))
					return p, func() { os.Remove(p) }
				}
				vol := func(i int) (string, func()) {
					img, mnt := filepath.Join(dir, fmt.Sprint("img", i)), filepath.Join(dir, fmt.Sprint("mnt", i))
					if err := os.Mkdir(mnt, 0o755); err != nil {
						b.Fatal(err)
					}
					if err := Create(img, 2*benchWrite, fs); err != nil {
						b.Fatal(err)
					}
					m, err := Mount(img, mnt, MountOptions{FSType: fs})
					if err != nil {
						b.Fatal(err)
					}
					if !m.DirectIO {
						b.Logf("%s: the backing filesystem gave buffered I/O", m.Device)
					}
					return filepath.Join(mnt, "data"), func() {
						if err := Unmount(img, mnt); err != nil {
							b.Error(err)
						}
						os.Remove(img)
						os.Remove(mnt)
					}
				}
				testutil.WriteRatio(b, benchWrite, tc.Direct, tc.Overwrite, tc.Writers, plain, vol)
			})
		}
	}
}

// BenchmarkCreateMount: what an image volume's create and first stage cost:
// a sparse 1 GiB image made, attached, formatted (mkfs through mount-utils)
// and mounted. The unmount and removal are not timed.
func BenchmarkCreateMount(b *testing.B) {
	for _, fs := range []string{Ext4, XFS} {
		b.Run(fs, func(b *testing.B) {
			dir := benchScratch(b, fs)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				img, mnt := filepath.Join(dir, fmt.Sprint("img", i)), filepath.Join(dir, fmt.Sprint("mnt", i))
				if err := os.Mkdir(mnt, 0o755); err != nil {
					b.Fatal(err)
				}
				if err := Create(img, 1<<30, fs); err != nil {
					b.Fatal(err)
				}
				if _, err := Mount(img, mnt, MountOptions{FSType: fs}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := Unmount(img, mnt); err != nil {
					b.Fatal(err)
				}
				os.Remove(img)
				b.StartTimer()
			}
		})
	}
}

// BenchmarkRemount: a later stage of an existing image (fsck, mount): what
// a pod restart costs.
func BenchmarkRemount(b *testing.B) {
	for _, fs := range []string{Ext4, XFS} {
		b.Run(fs, func(b *testing.B) {
			dir := benchScratch(b, fs)
			img, mnt := filepath.Join(dir, "img"), filepath.Join(dir, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				b.Fatal(err)
			}
			if err := Create(img, 1<<30, fs); err != nil {
				b.Fatal(err)
			}
			if _, err := Mount(img, mnt, MountOptions{FSType: fs}); err != nil {
				b.Fatal(err)
			}
			if err := Unmount(img, mnt); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := Mount(img, mnt, MountOptions{FSType: fs}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := Unmount(img, mnt); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
