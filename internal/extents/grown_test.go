package extents

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// A file that only grew from a size inside a block: the block around the
// old end holds the same bytes in both files (the rest of it reads as
// zeros in both), so nothing changed.
func TestDeltaAfterGrowingFromAnUnalignedSize(t *testing.T) {
	dir := t.TempDir()
	const baseSize, targetSize = 10000, 20000
	data := bytes.Repeat([]byte{'x'}, baseSize)
	basePath, targetPath := filepath.Join(dir, "base"), filepath.Join(dir, "target")
	if err := os.WriteFile(basePath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(targetPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(targetPath, targetSize); err != nil {
		t.Fatal(err)
	}
	base, target := open(t, basePath), open(t, targetPath)
	got := collect(t, func(emit func(Range) error) error {
		_, err := Delta(context.Background(), base, target, 0, emit)
		return err
	})
	if len(got) != 0 {
		t.Fatalf("Delta of a file that only grew = %+v, want no range", got)
	}
}
