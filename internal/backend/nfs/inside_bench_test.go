package nfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
)

// BenchmarkCheckNoShareInside is what a delete, an archive or a takeover of
// retained data now pays before it touches a volume: the walk of its tree
// for another share's records, one guarded step per directory or batch of
// entries, against a plain in-process walk of the same tree (beneath.Walk,
// no guard). Reported per entry: a volume of a million entries costs a
// million times that before its delete answers.
func BenchmarkCheckNoShareInside(b *testing.B) {
	x, export, _ := useStandInExport(b)
	const dirs, files = 200, 50
	root := filepath.Join(export, "vol")
	for d := 0; d < dirs; d++ {
		dir := filepath.Join(root, fmt.Sprintf("d%03d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for f := 0; f < files; f++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", f)), nil, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	entries := float64(dirs * (files + 1))
	b.Run("guarded", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := x.CheckNoShareInside(context.Background(), "vol"); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/entries, "ns/entry")
	})
	b.Run("plain-walk", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			d, err := beneath.OpenRoot(root)
			if err != nil {
				b.Fatal(err)
			}
			if err := beneath.Walk(d, func(*beneath.Entry) error { return nil }, beneath.WalkOptions{}); err != nil {
				b.Fatal(err)
			}
			d.Close()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/entries, "ns/entry")
	})
}
