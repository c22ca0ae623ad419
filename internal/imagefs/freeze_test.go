package imagefs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// isFrozen asks the kernel: freezing a frozen filesystem is EBUSY. (If it
// was not frozen, this froze it, so thaw and say no.)
func isFrozen(t *testing.T, mnt string) bool {
	t.Helper()
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	_, err = unix.IoctlRetInt(fd, fiFreeze)
	if errors.Is(err, unix.EBUSY) {
		return true
	}
	if err != nil {
		t.Fatalf("probe freeze of %s: %v", mnt, err)
	}
	if _, err := unix.IoctlRetInt(fd, fiThaw); err != nil {
		t.Fatalf("undo probe freeze of %s: %v", mnt, err)
	}
	return false
}

// TestWithFrozenAlwaysThaws: whatever goes wrong inside or half way through
// the freezing, no filesystem stays frozen.
func TestWithFrozenAlwaysThaws(t *testing.T) {
	dir := scratch(t)
	var mnts []string
	for i := range 2 {
		img, mnt := filepath.Join(dir, fmt.Sprint(i, ".img")), mkdir(t, filepath.Join(dir, fmt.Sprint("m", i)))
		if err := Create(img, 16<<20, Ext4); err != nil {
			t.Fatal(err)
		}
		mustMount(t, img, mnt, Ext4)
		t.Cleanup(func() { mustUnmount(t, img, mnt) })
		mnts = append(mnts, mnt)
	}
	boom := errors.New("copy failed half way")
	for _, tc := range []struct {
		name    string
		paths   []string
		fn      func() error
		wantErr error
		panics  bool
		ran     bool
	}{
		{"fn succeeds", mnts, nil, nil, false, true},
		{"fn fails", mnts, func() error { return boom }, boom, false, true},
		{"fn panics", mnts, func() error { panic(boom) }, nil, true, true},
		{"second path missing", []string{mnts[0], filepath.Join(dir, "nope")}, nil, os.ErrNotExist, false, false},
		{"second path not freezable", []string{mnts[0], "/proc"}, nil, errors.ErrUnsupported, false, false},
		{"same filesystem twice", []string{mnts[0], filepath.Join(mnts[0], "."), mnts[1]}, nil, nil, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			fn := func() error {
				ran = true
				for _, m := range mnts {
					if m == tc.paths[len(tc.paths)-1] || m == tc.paths[0] {
						if !isFrozen(t, m) {
							t.Errorf("%s not frozen inside WithFrozen", m)
						}
					}
				}
				if tc.fn != nil {
					return tc.fn()
				}
				return nil
			}
			var err error
			func() {
				defer func() {
					if r := recover(); (r != nil) != tc.panics {
						t.Fatalf("panic = %v, want panic %v", r, tc.panics)
					}
				}()
				err = WithFrozen("", tc.paths, fn)
			}()
			if ran != tc.ran {
				t.Errorf("fn ran = %v, want %v", ran, tc.ran)
			}
			switch {
			case tc.wantErr == errors.ErrUnsupported:
				if err == nil {
					t.Error("freezing /proc succeeded")
				}
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && !tc.panics && err != nil:
				t.Errorf("err = %v", err)
			}
			for _, m := range mnts {
				if isFrozen(t, m) {
					t.Fatalf("%s left frozen", m)
				}
				if err := os.WriteFile(filepath.Join(m, "after"), []byte("x"), 0o644); err != nil {
					t.Fatalf("write to %s after WithFrozen: %v", m, err)
				}
			}
		})
	}
	// Thaw is what a restarted driver calls: it says whether it thawed.
	fd, err := unix.Open(mnts[0], unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.IoctlRetInt(fd, fiFreeze); err != nil {
		t.Fatal(err)
	}
	if was, err := Thaw(mnts[0]); !was || err != nil {
		t.Fatalf("Thaw of a frozen fs = %v, %v", was, err)
	}
	if was, err := Thaw(mnts[0]); was || err != nil {
		t.Fatalf("Thaw of a thawed fs = %v, %v", was, err)
	}
}

// TestSnapshotWhileWriting takes a frozen copy of an image while a writer
// keeps appending and fsyncing: the copy is a clean filesystem (e2fsck finds
// nothing to fix), it mounts, and it holds a prefix of what was written. On
// an xfs (reflink) backing filesystem the copy is a reflink, elsewhere a
// sparse copy that stays sparse.
func TestSnapshotWhileWriting(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name    string
		backing func(t *testing.T) string
		want    Method
	}{
		{"ext4 backing", func(t *testing.T) string { return t.TempDir() }, SparseCopy},
		{"xfs reflink backing", func(t *testing.T) string { return testutil.LoopFS(t, "xfs", 400, "-m", "reflink=1") }, Reflink},
		{"btrfs backing", func(t *testing.T) string { return testutil.LoopFS(t, "btrfs", 256) }, Reflink},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A directory below the backing mount, so that the leak checks
			// do not count the backing mount itself.
			dir := guard(t, mkdir(t, filepath.Join(tc.backing(t), "work")))
			img, snap := filepath.Join(dir, "vol.img"), filepath.Join(dir, "snap.img")
			mnt, smnt := mkdir(t, filepath.Join(dir, "mnt")), mkdir(t, filepath.Join(dir, "smnt"))
			if err := Create(img, 64<<20, Ext4); err != nil {
				t.Fatal(err)
			}
			mustMount(t, img, mnt, Ext4)
			defer mustUnmount(t, img, mnt)

			// The writer appends numbered 4 KiB records and fsyncs each.
			var written atomic.Int64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				f, err := os.OpenFile(filepath.Join(mnt, "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
				if err != nil {
					t.Error(err)
					return
				}
				defer f.Close()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := f.Write(record(i)); err != nil {
						t.Error(err)
						return
					}
					if err := f.Sync(); err != nil {
						t.Error(err)
						return
					}
					written.Add(1)
				}
			}()
			for written.Load() < 50 {
				time.Sleep(time.Millisecond)
			}
			// A copy that fails in the middle of the freeze (its target
			// exists) thaws, and leaves the existing file alone.
			taken := filepath.Join(dir, "taken")
			if err := os.WriteFile(taken, []byte("mine"), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := Snapshot(img, mnt, taken); !errors.Is(err, os.ErrExist) {
				t.Fatalf("Snapshot onto an existing file = %v, want ErrExist", err)
			}
			if isFrozen(t, mnt) {
				t.Fatal("a failed Snapshot left the source frozen")
			}
			if b, _ := os.ReadFile(taken); string(b) != "mine" {
				t.Fatal("a failed Snapshot changed the file in its way")
			}
			acked := written.Load() // fsync'd before the snapshot began
			m, err := Snapshot(img, mnt, snap)
			close(stop)
			wg.Wait()
			if err != nil {
				t.Fatal(err)
			}
			if m != tc.want {
				t.Errorf("copied by %s, want %s", m, tc.want)
			}
			if isFrozen(t, mnt) {
				t.Fatal("source left frozen")
			}
			if out, err := exec.Command("e2fsck", "-fn", snap).CombinedOutput(); err != nil {
				t.Fatalf("the copy is not a clean filesystem: %v\n%s", err, out)
			}
			var st unix.Stat_t
			if err := unix.Stat(snap, &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != 64<<20 {
				t.Errorf("copy is %d bytes: want the full size", st.Size)
			}
			mustMount(t, snap, smnt, Ext4)
			defer mustUnmount(t, snap, smnt)
			got, err := os.ReadFile(filepath.Join(smnt, "log"))
			if err != nil {
				t.Fatal(err)
			}
			n := len(got) / 4096
			if len(got)%4096 != 0 || int64(n) < acked || int64(n) > written.Load() {
				t.Fatalf("copy holds %d bytes (%d records); %d were fsync'd before the snapshot, %d by the end", len(got), n, acked, written.Load())
			}
			for i := range n {
				if !bytes.Equal(got[i*4096:(i+1)*4096], record(i)) {
					t.Fatalf("record %d of the copy is not what was written", i)
				}
			}
			t.Logf("%s: copy holds %d of %d records written", m, n, written.Load())
		})
	}
}

func record(i int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, 4096)
	copy(b, fmt.Sprintf("record %08d\n", i))
	return b
}

// TestThawMarkedThawsOnlyWhatAFreezeMarked: a freeze whose thaw never came
// (a kill -9 between them) is undone from its marker at the next start; a
// filesystem someone else froze, with no marker of ours, stays frozen; a
// freeze that was thawed leaves no marker.
func TestThawMarkedThawsOnlyWhatAFreezeMarked(t *testing.T) {
	dir := scratch(t)
	markers := mkdir(t, filepath.Join(dir, "frozen"))
	var mnts []string
	for i := range 2 {
		img, mnt := filepath.Join(dir, fmt.Sprint(i, ".img")), mkdir(t, filepath.Join(dir, fmt.Sprint("m", i)))
		if err := Create(img, 16<<20, Ext4); err != nil {
			t.Fatal(err)
		}
		mustMount(t, img, mnt, Ext4)
		t.Cleanup(func() { mustUnmount(t, img, mnt) })
		mnts = append(mnts, mnt)
	}
	if err := WithFrozen(markers, mnts, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(markers); len(left) != 0 {
		t.Fatalf("markers left after a thaw: %v", left)
	}

	killed, err := Freeze(markers, mnts[0]) // and then the kill: no Thaw
	if err != nil {
		t.Fatal(err)
	}
	// Only closes its descriptor at the end, as the kill would have.
	defer killed.Thaw()
	users, err := Freeze("", mnts[1]) // an operator's fsfreeze
	if err != nil {
		t.Fatal(err)
	}
	defer users.Thaw()
	thawed, err := ThawMarked(markers)
	if err != nil {
		t.Fatal(err)
	}
	if len(thawed) != 1 || thawed[0] != mnts[0] {
		t.Errorf("ThawMarked thawed %v, want [%s]", thawed, mnts[0])
	}
	if isFrozen(t, mnts[0]) {
		t.Errorf("%s still frozen", mnts[0])
	}
	if !isFrozen(t, mnts[1]) {
		t.Errorf("%s, frozen by someone else, was thawed", mnts[1])
	}
	if left, _ := os.ReadDir(markers); len(left) != 0 {
		t.Errorf("markers left after ThawMarked: %v", left)
	}
}
