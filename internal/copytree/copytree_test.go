package copytree

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// makeTree builds every kind of entry a volume can hold. It needs root
// (ownership, device nodes, trusted.* xattrs).
func makeTree(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write := func(rel string, data []byte, mode os.FileMode) {
		must(os.WriteFile(filepath.Join(root, rel), data, mode))
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	must(os.MkdirAll(filepath.Join(root, "a", "deep", "er"), 0o755))
	must(os.Mkdir(filepath.Join(root, "sticky"), 0o755))
	must(os.Mkdir(filepath.Join(root, "many"), 0o755))
	write("a/f1", []byte("one"), 0o640)
	write("a/deep/er/f2", random(100), 0o600)
	write("big", random(5<<20), 0o644)
	write("empty", nil, 0o644)
	write("setuid", random(10), 0o755)
	write("h1", []byte("linked"), 0o644)
	for i := 0; i < 200; i++ {
		write(fmt.Sprintf("many/%03d", i), random(4096), 0o644)
	}
	// A 64 MiB file with two 4 KiB islands of data: 8 KiB allocated.
	f, err := os.Create(filepath.Join(root, "sparse"))
	must(err)
	must(f.Truncate(64 << 20))
	_, err = f.WriteAt(random(4096), 0)
	must(err)
	_, err = f.WriteAt(random(4096), 32<<20)
	must(err)
	must(f.Close())

	must(os.Link(filepath.Join(root, "h1"), filepath.Join(root, "h2")))
	must(os.Link(filepath.Join(root, "h1"), filepath.Join(root, "a", "h3")))
	must(os.Symlink("a/f1", filepath.Join(root, "rel")))
	must(os.Symlink("/etc/passwd", filepath.Join(root, "abs")))
	must(os.Symlink("nowhere", filepath.Join(root, "dangling")))
	must(unix.Mkfifo(filepath.Join(root, "pipe"), 0o600))
	must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))

	must(os.Lchown(filepath.Join(root, "a"), 1000, 1000))
	must(os.Lchown(filepath.Join(root, "a", "f1"), 1001, 1002))
	must(os.Lchown(filepath.Join(root, "rel"), 1003, 1003))
	must(os.Chmod(filepath.Join(root, "a"), 0o750))
	must(os.Chmod(filepath.Join(root, "sticky"), 0o1777))
	must(os.Chmod(filepath.Join(root, "setuid"), 0o4755))
	must(unix.Setxattr(filepath.Join(root, "big"), "user.color", []byte("blue"), 0))
	must(unix.Setxattr(filepath.Join(root, "a"), "user.owner", []byte("team-a"), 0))
	must(unix.Setxattr(filepath.Join(root, "h1"), "trusted.note", []byte{0, 1, 2}, 0))
	// Symlinks and special files cannot be opened: their xattrs are copied
	// by name relative to the directory.
	must(unix.Lsetxattr(filepath.Join(root, "rel"), "trusted.link", []byte("of a symlink"), 0))
	must(unix.Lsetxattr(filepath.Join(root, "pipe"), "trusted.fifo", []byte("of a fifo"), 0))

	// Fixed, distinct times, directories last so their own stick.
	when := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	var dirs []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if fi.IsDir() {
			dirs = append(dirs, p)
			return nil
		}
		when = when.Add(time.Second)
		ts := []unix.Timespec{unix.NsecToTimespec(when.UnixNano()), unix.NsecToTimespec(when.UnixNano())}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		when = when.Add(time.Minute)
		must(os.Chtimes(dirs[i], when, when))
	}
}

func allocated(t *testing.T, path string) int64 {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestTreeOnEachFilesystem(t *testing.T) {
	testutil.RequireRoot(t)
	tests := []struct {
		fs        string
		mkfs      []string
		noReflink bool
		want      Mechanism
	}{
		{"ext4", nil, false, Copy},
		{"xfs", []string{"-m", "reflink=1"}, false, Reflink},
		{"xfs", []string{"-m", "reflink=1"}, true, Copy},
		{"btrfs", nil, false, Reflink},
		{"btrfs", nil, true, Copy},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s/noReflink=%v", tc.fs, tc.noReflink), func(t *testing.T) {
			mnt := testutil.LoopFS(t, tc.fs, 512, tc.mkfs...)
			src, dst := filepath.Join(mnt, "src"), filepath.Join(mnt, "dst")
			if err := os.Mkdir(src, 0o755); err != nil {
				t.Fatal(err)
			}
			makeTree(t, src)
			want := testutil.TreeManifest(t, src)

			st, err := Tree(context.Background(), src, dst, Options{NoReflink: tc.noReflink})
			if err != nil {
				t.Fatal(err)
			}
			if got := testutil.TreeManifest(t, dst); testutil.DiffManifests(want, got) != "" {
				t.Fatalf("copy differs from source:\n%s", testutil.DiffManifests(want, got))
			}
			if st.Mechanism() != tc.want {
				t.Errorf("mechanism %s, want %s (%+v)", st.Mechanism(), tc.want, st)
			}
			if st.Files != 207 || st.HardLinks != 2 || st.Symlinks != 3 || st.Specials != 2 || st.Dirs != 6 {
				t.Errorf("stats %+v", st)
			}
			// Holes stay holes: 8 KiB of data in a 64 MiB file.
			if a := allocated(t, filepath.Join(dst, "sparse")); a > 1<<20 {
				t.Errorf("sparse file copy allocates %d bytes", a)
			}
			// The source is untouched by the copy.
			if again := testutil.TreeManifest(t, src); testutil.DiffManifests(want, again) != "" {
				t.Fatalf("source changed:\n%s", testutil.DiffManifests(want, again))
			}
		})
	}
}

func TestTreeRefusesMountInside(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	src := filepath.Join(dir, "src")
	inside := filepath.Join(src, "m")
	if err := os.MkdirAll(inside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(t.TempDir(), inside, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(inside, 0)
	if _, err := Tree(context.Background(), src, filepath.Join(dir, "dst"), Options{}); !errors.Is(err, ErrMountInside) {
		t.Fatalf("copy over a mount: %v, want ErrMountInside", err)
	}
}

func TestTreeCancelled(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "x"), 0o755)
	os.WriteFile(filepath.Join(src, "x", "f"), []byte("data"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Tree(ctx, src, filepath.Join(dir, "dst"), Options{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v", err)
	}
}

func TestTreeExistingDestination(t *testing.T) {
	dir := t.TempDir()
	if _, err := Tree(context.Background(), dir, dir, Options{}); err == nil {
		t.Fatal("copy onto an existing directory accepted")
	}
}

// A niced copy lowers only its own threads: the caller's thread and the
// process keep their priority afterwards.
func TestNiceDoesNotLeak(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(src, "d", fmt.Sprint(i)), []byte("x"), 0o644)
	}
	before, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Tree(context.Background(), src, filepath.Join(dir, "dst"), Options{Nice: 10}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ { // whatever thread this goroutine lands on
		runtime.Gosched()
		if after, _ := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid()); after != before {
			t.Fatalf("thread priority %d after a niced copy, %d before", after, before)
		}
	}
}

// changingContent is what the writer of TestTreeOfChangingSource puts in
// file k at generation gen: it names both and its length depends on both,
// so a torn file (cut short or run on) or a mixed one (parts of two
// generations) cannot pass for whole.
func changingContent(k, gen int) []byte {
	head := fmt.Sprintf("file %d generation %d\n", k, gen)
	return append([]byte(head), bytes.Repeat([]byte(fmt.Sprintf("<%d/%d>", k, gen)), 1+(gen*7919+k*131)%3000)...)
}

// checkChangingFile reports whether data is whole content of file k.
func checkChangingFile(k int, data []byte) error {
	var gotK, gen int
	if _, err := fmt.Sscanf(string(data), "file %d generation %d\n", &gotK, &gen); err != nil {
		return fmt.Errorf("no header (%d bytes): %v", len(data), err)
	}
	if gotK != k {
		return fmt.Errorf("holds file %d's content", gotK)
	}
	if want := changingContent(k, gen); !bytes.Equal(data, want) {
		return fmt.Errorf("generation %d torn or mixed: %d bytes, want %d", gen, len(data), len(want))
	}
	return nil
}

// A source in use: files are replaced whole (written aside and renamed into
// place, as databases and editors do) and removed, symlinks and directories
// appear and vanish, all while it is copied. The copy succeeds every time;
// every file it holds is one the writer wrote, whole, under its own name;
// every symlink is one the writer made; and the source is never damaged.
func TestTreeOfChangingSource(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	sub := filepath.Join(src, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Errors are expected and ignored where the writer races itself:
		// a directory removed while a file is written into it.
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := i % 50
			d := sub
			if i%3 == 0 { // some files in directories that come and go
				d = filepath.Join(sub, fmt.Sprint("dir", k%5))
				os.Mkdir(d, 0o755)
			}
			p := filepath.Join(d, strconv.Itoa(k))
			if os.WriteFile(p+".tmp", changingContent(k, i), 0o644) == nil {
				os.Rename(p+".tmp", p)
			}
			gone := filepath.Join(sub, strconv.Itoa((i+25)%50))
			os.Remove(gone)
			os.Remove(gone + ".link")
			os.Remove(p + ".link")
			os.Symlink(fmt.Sprintf("target-%d-%d", k, i), p+".link")
			if i%40 == 39 {
				os.RemoveAll(filepath.Join(sub, fmt.Sprint("dir", (k+2)%5)))
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}()
	files, links := 0, 0
	for n := 0; n < 30; n++ {
		dst := filepath.Join(dir, fmt.Sprint("dst", n))
		if _, err := Tree(context.Background(), src, dst, Options{}); err != nil {
			t.Fatalf("copy %d of a changing source: %v", n, err)
		}
		f, l, err := checkChangingTree(dst)
		if err != nil {
			t.Fatalf("copy %d: %v", n, err)
		}
		files, links = files+f, links+l
	}
	close(stop)
	<-done
	if _, _, err := checkChangingTree(src); err != nil {
		t.Fatalf("source damaged: %v", err)
	}
	if files == 0 || links == 0 {
		t.Fatalf("30 copies captured %d files and %d symlinks: the writer did not overlap the copies", files, links)
	}
	t.Logf("30 copies captured %d whole files and %d symlinks of the writer's", files, links)
}

// checkChangingTree checks a tree made by TestTreeOfChangingSource's writer
// (or a copy of one) and counts its finished files and its symlinks.
func checkChangingTree(root string) (files, links int, err error) {
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		name := d.Name()
		switch {
		case d.IsDir():
			if rel != "." && rel != "sub" && !(filepath.Dir(rel) == "sub" && strings.HasPrefix(name, "dir")) {
				return fmt.Errorf("%s: a directory the writer never made", rel)
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			k, ok := strings.CutSuffix(name, ".link")
			if !ok || !strings.HasPrefix(target, "target-"+k+"-") {
				return fmt.Errorf("%s: symlink to %q, which the writer never made", rel, target)
			}
			links++
		case d.Type().IsRegular():
			if strings.HasSuffix(name, ".tmp") {
				return nil // caught while the writer wrote it: its own business
			}
			k, err := strconv.Atoi(name)
			if err != nil {
				return fmt.Errorf("%s: a file the writer never made", rel)
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := checkChangingFile(k, data); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
			files++
		default:
			return fmt.Errorf("%s: %s, which the writer never made", rel, d.Type())
		}
		return nil
	})
	return files, links, err
}
