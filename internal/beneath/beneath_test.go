package beneath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// tree makes a small tree with every kind of trap a tenant can plant and
// returns its open root. outside/secret must never be reached from it.
func tree(t *testing.T) (root *Dir, dir string) {
	t.Helper()
	base := t.TempDir()
	dir = filepath.Join(base, "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(base, "outside"), 0o755))
	must(os.WriteFile(filepath.Join(base, "outside", "secret"), []byte("secret"), 0o600))
	must(os.MkdirAll(filepath.Join(dir, "sub", "deeper"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "file"), []byte("data"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "sub", "deeper", "f"), []byte("deep"), 0o644))
	must(os.Symlink(filepath.Join(base, "outside"), filepath.Join(dir, "abs")))
	must(os.Symlink("../outside", filepath.Join(dir, "rel")))
	must(os.Symlink("file", filepath.Join(dir, "tofile")))
	must(os.Symlink("sub", filepath.Join(dir, "tosub")))
	must(unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644))
	root, err := OpenRoot(dir)
	must(err)
	t.Cleanup(func() { root.Close() })
	return root, dir
}

func TestOpenDir(t *testing.T) {
	root, _ := tree(t)
	tests := []struct {
		rel  string
		want error // nil: opens
	}{
		{"sub", nil},
		{"sub/deeper", nil},
		{"abs", ErrChanged},          // a symlink, absolute
		{"rel", ErrChanged},          // a symlink, relative, leading out
		{"tosub", ErrChanged},        // a symlink, even one that stays inside
		{"tosub/deeper", ErrChanged}, // a symlink in the middle
		{"file", ErrChanged},         // not a directory
		{"fifo", ErrChanged},
		{"missing", fs.ErrNotExist},
		{"..", unix.EINVAL},
		{"sub/../..", unix.EINVAL},
		{"/etc", unix.EINVAL},
		{"", unix.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.rel, func(t *testing.T) {
			d, err := root.OpenDir(tc.rel)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				d.Close()
				return
			}
			if err == nil {
				d.Close()
				t.Fatalf("OpenDir(%q) opened %s", tc.rel, d.Path())
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("OpenDir(%q): %v, want %v", tc.rel, err, tc.want)
			}
		})
	}
}

// Regular files only: whatever else is found is never opened, so a FIFO
// cannot block the caller and a device's open never runs.
func TestOpenFile(t *testing.T) {
	root, dir := tree(t)
	if err := unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		testutil.Missing(t, fmt.Sprintf("cannot make a device node here: %v", err), "run the tests as root (CAP_MKNOD)")
	}
	tests := []struct {
		name string
		want error
	}{
		{"file", nil},
		{"fifo", ErrChanged}, // would block an open for reading with no writer
		{"null", ErrChanged},
		{"tofile", ErrChanged},
		{"abs", ErrChanged},
		{"sub", ErrChanged},
		{"missing", fs.ErrNotExist},
		{"sub/deeper/f", unix.EINVAL}, // one name only
		{"..", unix.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				fd, st, err := root.OpenFile(tc.name)
				if tc.want == nil {
					if err != nil {
						t.Error(err)
						return
					}
					defer unix.Close(fd)
					buf := make([]byte, 16)
					n, _ := unix.Read(fd, buf)
					if string(buf[:n]) != "data" || st.Size != 4 {
						t.Errorf("read %q, size %d", buf[:n], st.Size)
					}
					return
				}
				if err == nil {
					unix.Close(fd)
					t.Errorf("OpenFile(%q) opened it", tc.name)
				} else if !errors.Is(err, tc.want) {
					t.Errorf("OpenFile(%q): %v, want %v", tc.name, err, tc.want)
				}
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				// Unblock a FIFO open so the test can end, then fail.
				if f, err := os.OpenFile(filepath.Join(dir, "fifo"), os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
				<-done
				t.Fatalf("OpenFile(%q) blocked", tc.name)
			}
		})
	}
}

func TestLstatReadlinkNames(t *testing.T) {
	root, _ := tree(t)
	names, err := root.Names()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"abs", "fifo", "file", "rel", "sub", "tofile", "tosub"}
	if !slices.Equal(names, want) {
		t.Fatalf("Names = %v, want %v", names, want)
	}
	again, _ := root.Names() // reads from the start again
	if !slices.Equal(again, want) {
		t.Fatalf("second Names = %v", again)
	}
	st, err := root.Lstat("abs")
	if err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Fatalf("Lstat of a symlink: %o %v (must not follow it)", st.Mode, err)
	}
	if target, err := root.Readlink("rel"); err != nil || target != "../outside" {
		t.Fatalf("Readlink = %q %v", target, err)
	}
	if _, err := root.Readlink("file"); !errors.Is(err, ErrChanged) {
		t.Fatalf("Readlink of a file: %v, want ErrChanged", err)
	}
	if _, err := root.Lstat("sub/deeper"); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Lstat of a path: %v, want EINVAL (one name only)", err)
	}
	if err := root.Chmod("abs", 0o600); !errors.Is(err, ErrChanged) {
		t.Fatalf("Chmod of a symlink: %v, want ErrChanged (it would follow it)", err)
	}
}

// A mount inside the tree, file or directory, is reported; Walk skips it
// or fails, as asked; nothing behind it is reached.
func TestMountsInside(t *testing.T) {
	testutil.RequireRoot(t)
	root, dir := tree(t)
	testutil.CleanupMounts(t, dir)
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "behind"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	mounts := []struct{ from, to string }{
		{other, filepath.Join(dir, "sub", "deeper")},
		{filepath.Join(other, "behind"), filepath.Join(dir, "file")},
	}
	for _, m := range mounts {
		if err := unix.Mount(m.from, m.to, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(m.to, 0)
	}
	if _, err := root.OpenDir("sub/deeper"); !errors.Is(err, ErrMountInside) {
		t.Errorf("OpenDir across a bind mount: %v, want ErrMountInside", err)
	}
	if fd, _, err := root.OpenFile("file"); !errors.Is(err, ErrMountInside) {
		if err == nil {
			unix.Close(fd)
		}
		t.Errorf("OpenFile of a file bind mount: %v, want ErrMountInside", err)
	}
	if _, err := root.Lstat("file"); !errors.Is(err, ErrMountInside) {
		t.Errorf("Lstat of a file bind mount: %v, want ErrMountInside", err)
	}
	if err := Walk(root, func(*Entry) error { return nil }, WalkOptions{}); !errors.Is(err, ErrMountInside) {
		t.Errorf("Walk over mounts: %v, want ErrMountInside", err)
	}
	var seen []string
	err := Walk(root, func(e *Entry) error { seen = append(seen, e.Path); return nil }, WalkOptions{SkipMounts: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".", "abs", "fifo", "rel", "sub", "tofile", "tosub"}
	if !slices.Equal(seen, want) {
		t.Fatalf("Walk skipping mounts saw %v, want %v", seen, want)
	}
}

func TestWalk(t *testing.T) {
	root, _ := tree(t)
	var visits, leaves []string
	err := Walk(root, func(e *Entry) error {
		kind := "-"
		if e.IsDir() {
			kind = "d"
			if e.Stat.Mode&unix.S_IFMT != unix.S_IFDIR {
				t.Errorf("%s: Dir set on a non-directory", e.Path)
			}
		}
		visits = append(visits, kind+e.Path)
		return nil
	}, WalkOptions{Leave: func(e *Entry) error { leaves = append(leaves, e.Path); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	wantVisits := []string{"d.", "-abs", "-fifo", "-file", "-rel", "dsub", "dsub/deeper", "-sub/deeper/f", "-tofile", "-tosub"}
	if !slices.Equal(visits, wantVisits) {
		t.Errorf("visits %v, want %v", visits, wantVisits)
	}
	if want := []string{"sub/deeper", "sub", "."}; !slices.Equal(leaves, want) {
		t.Errorf("leaves %v, want %v", leaves, want)
	}
	// SkipDir skips a directory's contents and its Leave.
	visits, leaves = nil, nil
	err = Walk(root, func(e *Entry) error {
		visits = append(visits, e.Path)
		if e.Path == "sub" {
			return SkipDir
		}
		return nil
	}, WalkOptions{Leave: func(e *Entry) error { leaves = append(leaves, e.Path); return nil }})
	if err != nil || slices.Contains(visits, "sub/deeper") || slices.Contains(leaves, "sub") {
		t.Errorf("SkipDir: err %v, visits %v, leaves %v", err, visits, leaves)
	}
	// An error stops the walk and comes back as is.
	stop := errors.New("stop")
	if err := Walk(root, func(e *Entry) error {
		if e.Path == "fifo" {
			return stop
		}
		return nil
	}, WalkOptions{}); err != stop {
		t.Errorf("Walk returned %v, want the callback's error", err)
	}
}

// nest makes depth directories, each inside the last, below dir (deeper
// than any path could reach: it goes by descriptors).
func nest(t *testing.T, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < depth; i++ {
		if err := unix.Mkdirat(fd, "n", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "n", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	unix.Close(fd)
}

// scratch is a directory for many small metadata writes: on a tmpfs of its
// own where the test may mount one (a journaled disk takes seconds for the
// thousands of nested mkdirs below).
func scratch(t *testing.T) string {
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		return dir
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		return dir
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount scratch tmpfs: %v", err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// A tree nested deeper than MaxDepth fails clearly instead of using a
// descriptor per level without bound; MaxDepth itself is walked.
func TestWalkDepthBound(t *testing.T) {
	for _, tc := range []struct {
		depth   int
		tooDeep bool
	}{{MaxDepth, false}, {MaxDepth + 1, true}} {
		dir := filepath.Join(scratch(t), "tree")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		nest(t, dir, tc.depth)
		root, err := OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		deepest := 0
		err = Walk(root, func(e *Entry) error { deepest = max(deepest, e.Depth); return nil }, WalkOptions{})
		root.Close()
		if tc.tooDeep {
			if !errors.Is(err, ErrTooDeep) {
				t.Errorf("depth %d: %v, want ErrTooDeep", tc.depth, err)
			}
		} else if err != nil || deepest != tc.depth {
			t.Errorf("depth %d: %v, deepest entry seen %d", tc.depth, err, deepest)
		}
		// t.TempDir's cleanup cannot remove a tree deeper than PATH_MAX.
		if err := removeNested(dir); err != nil {
			t.Fatal(err)
		}
	}
	// And a path of more than PATH_MAX bytes opens, in pieces.
	dir := filepath.Join(scratch(t), "tree")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	nest(t, dir, 3000)
	defer removeNested(dir)
	root, err := OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	d, err := root.OpenDir(strings.Repeat("n/", 2999) + "n")
	if err != nil {
		t.Fatalf("open a 6000-byte path: %v", err)
	}
	d.Close()
}

func removeNested(dir string) error {
	root, err := OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	var rm func(d *Dir) error
	rm = func(d *Dir) error {
		sub, err := d.OpenDir("n")
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		err = rm(sub)
		sub.Close()
		if err != nil {
			return err
		}
		return d.Unlink("n", unix.AT_REMOVEDIR)
	}
	return rm(root)
}

// The attack of issue 7: a directory and a symlink to outside swapped in a
// loop while the tree is walked. No walk ever lists what is outside.
func TestWalkUnderSwapAttack(t *testing.T) {
	base := t.TempDir()
	vol := filepath.Join(base, "volume")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	attack := testutil.NewSwapAttack(t, vol, filepath.Join(base, "outside"))
	root, err := OpenRoot(vol)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	attack.Start()
	defer attack.Stop(t)
	entries := 0
	for i := 0; i < 200; i++ {
		err := Walk(root, func(e *Entry) error {
			entries++
			if e.Name == "canary" || e.Stat.Ino == 0 {
				t.Fatalf("walk %d reached %s outside the tree", i, e.Path)
			}
			if e.Depth > 3 {
				t.Fatalf("walk %d went through a symlink: %s", i, e.Path)
			}
			return nil
		}, WalkOptions{})
		if err != nil {
			t.Fatalf("walk %d: %v", i, err)
		}
	}
	t.Logf("200 walks, %d entries, during %d swaps", entries, attack.Stop(t))
}

// Retained directories stay open until the last Close.
func TestRetainClose(t *testing.T) {
	root, _ := tree(t)
	d, err := root.OpenDir("sub")
	if err != nil {
		t.Fatal(err)
	}
	d.Retain()
	d.Close()
	if _, err := d.Lstat("deeper"); err != nil {
		t.Fatalf("a retained directory was closed: %v", err)
	}
	d.Close()
	if _, err := unix.FcntlInt(uintptr(d.Fd()), unix.F_GETFD, 0); err == nil {
		t.Log("descriptor number reused by another goroutine; cannot check it was closed")
	} else if !errors.Is(err, unix.EBADF) {
		t.Fatalf("fcntl after the last Close: %v", err)
	}
}

func TestRenameNoReplace(t *testing.T) {
	t.Parallel()
	t.Run("renameat2", func(t *testing.T) { t.Parallel(); testRenameNoReplace(t, Options{}) })
	t.Run("flags refused as on NFS", func(t *testing.T) {
		t.Parallel()
		testRenameNoReplace(t, Options{RefuseRenameFlags: true})
	})
}

func testRenameNoReplace(t *testing.T, opts Options) {
	dir := t.TempDir()
	for _, n := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(dir, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root, err := OpenRootWith(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	// Every directory opened below the root renames as the root does.
	for _, open := range []func(string) (*Dir, error){root.OpenChild, root.OpenDir} {
		sub, err := open("b")
		if err != nil {
			t.Fatal(err)
		}
		if sub.opts != opts {
			t.Errorf("a directory opened below a root with %+v has %+v", opts, sub.opts)
		}
		sub.Close()
	}
	if err := root.RenameNoReplace("a", root, "b"); !errors.Is(err, unix.EEXIST) {
		t.Errorf("rename onto an existing directory: %v, want EEXIST", err)
	}
	if err := root.RenameNoReplace("a", root, "c"); err != nil {
		t.Errorf("rename to a free name: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c")); err != nil {
		t.Errorf("after the rename: %v", err)
	}
}
