package hostpath

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"golang.org/x/sys/unix"
)

const idA = "hpv1-0000000000000000000000000000000a"

func newBackend(t *testing.T) *Backend {
	t.Helper()
	return newBackendWith(t, Options{})
}

func newBackendWith(t *testing.T, opts Options) *Backend {
	t.Helper()
	b, err := New(filepath.Join(t.TempDir(), "data"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.WaitIdle)
	return b
}

func TestCreateDeleteIdempotent(t *testing.T) {
	b := newBackend(t)
	for i := 0; i < 2; i++ {
		if err := b.Create(idA, 0o750); err != nil {
			t.Fatalf("create #%d: %v", i, err)
		}
	}
	fi, err := os.Stat(b.Path(idA))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o750 {
		t.Fatalf("mode = %v, want 0750 regardless of umask", fi.Mode().Perm())
	}
	if ok, err := b.Exists(idA); !ok || err != nil {
		t.Fatalf("Exists = %v, %v", ok, err)
	}
	for i := 0; i < 2; i++ {
		if err := b.Delete(idA); err != nil {
			t.Fatalf("delete #%d: %v", i, err)
		}
	}
	b.WaitIdle()
	if ok, _ := b.Exists(idA); ok {
		t.Fatal("volume still exists after delete")
	}
	if left, _ := os.ReadDir(b.trash); len(left) != 0 {
		t.Fatalf("trash not emptied: %v", left)
	}
}

func TestSymlinkInPlaceOfVolume(t *testing.T) {
	b := newBackend(t)
	outside := t.TempDir()
	if err := os.Symlink(outside, b.Path(idA)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Exists(idA); !errors.Is(err, ErrNotDirectory) {
		t.Fatalf("Exists on a symlink: %v, want ErrNotDirectory", err)
	}
	if err := b.Create(idA, 0o777); !errors.Is(err, ErrNotDirectory) {
		t.Fatalf("Create over a symlink: %v, want ErrNotDirectory", err)
	}
}

// A pod can plant symlinks to anything inside its volume; deleting the volume
// must remove the links, never what they point to.
func TestDeleteDoesNotFollowSymlinks(t *testing.T) {
	b := newBackend(t)
	outside := t.TempDir()
	precious := filepath.Join(outside, "precious")
	if err := os.WriteFile(precious, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.Create(idA, 0o777); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"dirlink": outside, "filelink": precious, "up": "../../../.."} {
		if err := os.Symlink(target, filepath.Join(b.Path(idA), name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Delete(idA); err != nil {
		t.Fatal(err)
	}
	b.WaitIdle()
	if data, err := os.ReadFile(precious); err != nil || string(data) != "keep" {
		t.Fatalf("file outside the volume damaged: %q, %v", data, err)
	}
}

func TestDeleteRefusesMountInside(t *testing.T) {
	testutil.RequireRoot(t)
	b := newBackend(t)
	testutil.CleanupMounts(t, b.Root())
	outside := t.TempDir()
	precious := filepath.Join(outside, "precious")
	if err := os.WriteFile(precious, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.Create(idA, 0o777); err != nil {
		t.Fatal(err)
	}
	inside := filepath.Join(b.Path(idA), "m")
	if err := os.Mkdir(inside, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(outside, inside, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(idA); !errors.Is(err, ErrMountedInside) {
		t.Fatalf("Delete with a mount inside: %v, want ErrMountedInside", err)
	}
	if err := unix.Unmount(inside, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(idA); err != nil {
		t.Fatal(err)
	}
	b.WaitIdle()
	if _, err := os.Stat(precious); err != nil {
		t.Fatalf("file behind the planted mount is gone: %v", err)
	}
}

func TestUsageCountsAllocatedBytes(t *testing.T) {
	b := newBackend(t)
	if err := b.Create(idA, 0o777); err != nil {
		t.Fatal(err)
	}
	dir := b.Path(idA)
	if err := os.WriteFile(filepath.Join(dir, "dense"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil { // 1 GiB hole
		t.Fatal(err)
	}
	f.Close()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	u, err := b.Usage(idA)
	if err != nil {
		t.Fatal(err)
	}
	if u.Inodes != 4 {
		t.Errorf("inodes = %d, want 4 (root, dense, sparse, sub)", u.Inodes)
	}
	if u.Bytes < 1<<20 || u.Bytes > 2<<20 {
		t.Errorf("bytes = %d, want about 1 MiB: the sparse file's hole must not count", u.Bytes)
	}
}

func TestQuarantineAndEmptyTrash(t *testing.T) {
	b := newBackend(t)
	if err := os.MkdirAll(filepath.Join(b.volumes, "stray", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	dst, err := b.Quarantine("stray")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst, "x")); err != nil {
		t.Fatalf("quarantined data not kept: %v", err)
	}
	for _, bad := range []string{"", "..", "../x", "/etc"} {
		if _, err := b.Quarantine(bad); err == nil {
			t.Errorf("Quarantine(%q) accepted", bad)
		}
	}
}

// Leftovers of partial copies and deletes are listed with the ID they were
// made for; one can be moved into place (never over an existing entry) or
// removed.
func TestLeftovers(t *testing.T) {
	b := newBackend(t)
	const idB = "hpv1-0000000000000000000000000000000b"
	for _, p := range []string{filepath.Join(b.trash, "old.1", "deep"), filepath.Join(b.partial, idA, "sub"), filepath.Join(b.partial, idB)} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	left, err := b.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Leftover{}
	for _, l := range left {
		got[l.ID] = l
	}
	if len(left) != 3 || !got["old"].Trash || got[idA].Trash || got[idA].Path != filepath.Join(b.partial, idA) {
		t.Fatalf("leftovers %+v", left)
	}
	if err := b.AdoptVolume(got[idA]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b.Path(idA), "sub")); err != nil {
		t.Fatalf("adopted copy not in place: %v", err)
	}
	if err := b.Create(idB, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := b.AdoptVolume(got[idB]); err == nil {
		t.Fatal("adopt replaced an existing volume directory")
	}
	for _, id := range []string{"old", idB} {
		if err := b.RemoveLeftover(got[id]); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := b.Leftovers(); len(left) != 0 {
		t.Fatalf("leftovers not removed: %v", left)
	}
	if err := b.AdoptVolume(Leftover{Path: filepath.Join(b.trash, "x"), ID: "../x"}); err == nil {
		t.Fatal("adopt accepted a path-like ID")
	}
}

func TestStatsAndWritable(t *testing.T) {
	b := newBackend(t)
	st, err := b.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalBytes <= 0 || st.AvailableBytes <= 0 || st.AvailableBytes > st.TotalBytes {
		t.Fatalf("implausible stats %+v", st)
	}
	if err := b.CheckWritable(); err != nil {
		t.Fatal(err)
	}
}

// The background removal itself refuses to enter a mount that appeared after
// Delete's check (a same-filesystem bind mount, which device numbers miss).
func TestRemoveTreeStopsAtMounts(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	outside := t.TempDir()
	precious := filepath.Join(outside, "precious")
	if err := os.WriteFile(precious, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	mnt := filepath.Join(tree, "a", "b", "m")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tree, "a", "f"), []byte("x"), 0o644)
	if err := unix.Mount(outside, mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := removeTree(tree); !errors.Is(err, ErrMountedInside) {
		t.Fatalf("removeTree over a bind mount: %v, want ErrMountedInside", err)
	}
	if _, err := os.Stat(precious); err != nil {
		t.Fatalf("removeTree reached through the mount: %v", err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := removeTree(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Fatalf("tree not removed: %v", err)
	}
}

// On btrfs a volume is a subvolume; a retried create keeps it and still
// applies the mode; delete destroys it.
func TestBtrfsVolumesAreSubvolumes(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	b, err := New(filepath.Join(mnt, "data"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Create(idA, 0o755); err != nil {
		t.Fatal(err)
	}
	if sub, err := btrfs.IsSubvolume(b.Path(idA)); !sub || err != nil {
		t.Fatalf("volume on btrfs is not a subvolume: %v %v", sub, err)
	}
	if err := b.Create(idA, 0o770|os.ModeSetgid); err != nil {
		t.Fatalf("retried create: %v", err)
	}
	if fi, _ := os.Stat(b.Path(idA)); fi.Mode().Perm() != 0o770 || fi.Mode()&os.ModeSetgid == 0 {
		t.Fatalf("mode after a retried create: %v, want setgid 0770", fi.Mode())
	}
	if err := b.Delete(idA); err != nil {
		t.Fatal(err)
	}
	b.WaitIdle()
	if left, _ := os.ReadDir(b.trash); len(left) != 0 {
		t.Fatalf("subvolume not destroyed: %v", left)
	}
}

// A tree far deeper than removeTree holds directories open is removed whole,
// with a bounded number of descriptors, and nothing is left beside it.
func TestRemoveDeepTree(t *testing.T) {
	b := newBackend(t)
	top := filepath.Join(b.trash, "deep.1")
	if err := os.Mkdir(top, 0o700); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(top)
	if err != nil {
		t.Fatal(err)
	}
	fd := int(dir.Fd())
	for i := 0; i < 3000; i++ { // past beneath.MaxDepth too
		if err := unix.Mkdirat(fd, "d", 0o700); err != nil {
			t.Fatal(err)
		}
		if i%500 == 0 {
			unix.Mknodat(fd, "f", unix.S_IFREG|0o600, 0)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fd != int(dir.Fd()) {
			unix.Close(fd)
		}
		fd = next
	}
	unix.Close(fd)
	dir.Close()
	// Far fewer descriptors than the tree is deep.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = 512
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	err = removeTree(top)
	unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(b.trash); len(left) != 0 {
		t.Fatalf("left in the trash: %v", left)
	}
}

// What a record will say is on disk before the backend returns: a new
// volume and its entry; a copy (all of it, while still in partial/) and
// then its rename into place, in both directories; a move to the trash, in
// both directories. A power cut after the caller records the result finds
// the data. (make powercut proves it with real power cuts; this test fails
// at once if a sync goes missing.)
func TestDurableBeforeReturn(t *testing.T) {
	t.Parallel()
	var seen []string
	b := newBackendWith(t, Options{SyncSeen: func(kind, path string) {
		state := ""
		if kind == "fs" {
			if _, err := os.Stat(path); err == nil {
				state = " (exists)"
			}
		}
		seen = append(seen, kind+" "+path+state)
	}})
	expect := func(what string, want ...string) {
		t.Helper()
		if strings.Join(seen, "\n") != strings.Join(want, "\n") {
			t.Fatalf("%s: syncs\n%s\nwant\n%s", what, strings.Join(seen, "\n"), strings.Join(want, "\n"))
		}
		seen = nil
	}
	if err := b.Create(idA, 0o750); err != nil {
		t.Fatal(err)
	}
	expect("create", "dir "+b.Path(idA), "dir "+b.volumes)
	os.WriteFile(filepath.Join(b.Path(idA), "f"), []byte("data"), 0o644)
	const snap = "hps1-0000000000000000000000000000000a"
	if _, err := b.Snapshot(context.Background(), idA, snap, nil); err != nil {
		t.Fatal(err)
	}
	expect("snapshot", "fs "+filepath.Join(b.partial, snap)+" (exists)", "dir "+b.snapshots, "dir "+b.partial)
	if _, err := os.Stat(filepath.Join(b.SnapshotPath(snap), "f")); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete(idA); err != nil {
		t.Fatal(err)
	}
	expect("delete", "dir "+b.volumes)
}

// An image's exclusive bytes leave out what it shares with a reflinked copy
// (which takes new space when rewritten), on xfs; on ext4 every allocated
// block is its own. An image is preallocated: its unwritten blocks are its
// own too (xfs shares only written ones).
func TestImageExclusive(t *testing.T) {
	for _, tc := range []struct {
		fs   string
		mkfs []string
	}{{"xfs", []string{"-m", "reflink=1"}}, {"ext4", nil}} {
		t.Run(tc.fs, func(t *testing.T) {
			mnt := testutil.LoopFS(t, tc.fs, 512, tc.mkfs...)
			b, err := New(filepath.Join(mnt, "data"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.CreateImage(idA, 64<<20, ""); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(b.ImagePath(idA), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(make([]byte, 8<<20), 0)
			f.Sync()
			f.Close()
			if got, err := b.ImageExclusive(idA); err != nil || got != 64<<20 {
				t.Fatalf("exclusive bytes of a 64 MiB image, 8 MiB written: %d %v", got, err)
			}
			const snap = "hps1-0000000000000000000000000000000a"
			if _, err := b.Snapshot(context.Background(), idA, snap, nil); err != nil {
				t.Fatal(err)
			}
			got, err := b.ImageExclusive(idA)
			want := int64(56 << 20) // what was written is shared with the snapshot
			if tc.fs == "ext4" {
				want = 64 << 20 // a copy shares nothing
			}
			if err != nil || got != want {
				t.Fatalf("exclusive bytes after a snapshot: %d %v, want %d", got, err, want)
			}
		})
	}
}

// An image whose extent map is longer than the bound is counted by the
// exclusive extents read up to the bound, without reading the rest of the
// map: less than it holds alone, so the room set aside for its rewrites
// (its size less that) errs large. Here 300 extents, all shared with a
// snapshot, read with a bound of 256: none counted as its own. Before, its
// allocated blocks were counted as its own, shared or not, and a tenant who
// fragmented its image and snapshotted it rewrote its blocks into room set
// aside for nobody.
func TestImageExclusiveOfAFragmentedImageIsBounded(t *testing.T) {
	mnt := testutil.LoopFS(t, "xfs", 512, "-m", "reflink=1")
	b, err := New(filepath.Join(mnt, "data"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CreateImage(idA, 64<<20, ""); err != nil {
		t.Fatal(err)
	}
	// Sparse again, so that each block written is an extent of its own.
	if err := os.Truncate(b.ImagePath(idA), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(b.ImagePath(idA), 64<<20); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(b.ImagePath(idA), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	const extents = 300
	for i := range extents { // a block, a hole: one extent each
		if _, err := f.WriteAt(make([]byte, 4096), int64(i)*8192); err != nil {
			t.Fatal(err)
		}
	}
	f.Sync()
	f.Close()
	const snap = "hps1-0000000000000000000000000000000a"
	if _, err := b.Snapshot(context.Background(), idA, snap, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := imageExclusive(b.ImagePath(idA), 1<<20); err != nil || got != 0 {
		t.Fatalf("exclusive bytes of an image all shared, the whole map read: %d %v", got, err)
	}
	if got, err := imageExclusive(b.ImagePath(idA), 256); err != nil || got != 0 {
		t.Fatalf("exclusive bytes of an image all shared, past the bound: %d %v, want 0", got, err)
	}
}
