package testutil

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// WriteSampleTree fills dir with a small volume's worth of what users keep:
// nested directories, random files, a sparse file, a symlink, a hard link,
// an xattr and a file owned by another user. files sets how many small
// files go into many/.
func WriteSampleTree(t testing.TB, dir string, files int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "db", "wal"), 0o750))
	must(os.MkdirAll(filepath.Join(dir, "many"), 0o755))
	data := make([]byte, 256<<10)
	rand.Read(data)
	must(os.WriteFile(filepath.Join(dir, "db", "table"), data, 0o640))
	must(os.WriteFile(filepath.Join(dir, "db", "wal", "000001"), data[:4096], 0o600))
	for i := 0; i < files; i++ {
		must(os.WriteFile(filepath.Join(dir, "many", strconv.Itoa(i)), data[i%1000:i%1000+512], 0o644))
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	must(f.Truncate(32 << 20))
	_, err = f.WriteAt(data[:4096], 16<<20)
	must(err)
	must(f.Close())
	must(os.Symlink("db/table", filepath.Join(dir, "link")))
	must(os.Link(filepath.Join(dir, "db", "table"), filepath.Join(dir, "table-hardlink")))
	must(unix.Setxattr(filepath.Join(dir, "db"), "user.app", []byte("mongo"), 0))
	must(os.Chown(filepath.Join(dir, "db", "wal", "000001"), 999, 999))
}
