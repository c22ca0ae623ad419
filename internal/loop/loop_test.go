package loop

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

// scratch is a directory for backing files whose loop devices are counted:
// the test fails if any is still attached at the end (and they are detached).
func scratch(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		testutil.Missing(t, fmt.Sprintf("no /dev/loop-control (%v): the loop module is not loaded", err), "modprobe loop")
	}
	dir := t.TempDir()
	testutil.CleanupLoopDevices(t, dir)
	return dir
}

// pattern is size bytes that differ at every 512-byte sector, so a read of
// the wrong place does not pass.
func pattern(size int, seed byte) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i/512) ^ seed ^ byte(i)
	}
	return b
}

func newFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// readDev reads n bytes from the start of a device, bypassing any cache the
// device itself keeps.
func readDev(t *testing.T, dev string, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return b
}

func detach(t *testing.T, d *Device) {
	t.Helper()
	deferred, err := Detach(d)
	if err != nil {
		t.Fatalf("detach %s: %v", d.Path, err)
	}
	// Deferred happens when another process has the device open for a
	// moment (another test package listing loop devices reads each one's
	// status): the kernel then detaches it at that last close.
	for i := 0; ; i++ {
		_, err := Status(d.Path)
		if errors.Is(err, ErrNotAttached) {
			return
		}
		if !deferred || i == 200 {
			t.Fatalf("after detach (deferred %v), Status(%s) = %v, want ErrNotAttached", deferred, d.Path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAttachReadWriteDetach(t *testing.T) {
	dir := scratch(t)
	const size = 4 << 20
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"buffered", Options{}},
		{"direct", Options{DirectIO: true}},
		{"read-only", Options{ReadOnly: true}},
		{"4k-sectors", Options{DirectIO: true, BlockSize: 4096}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := pattern(size, 1)
			file := newFile(t, dir, tc.name, want)
			d, err := Attach(file, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if _, err := Status(d.Path); err == nil {
					_, _ = Detach(d)
				}
			}()
			if d.ReadOnly != tc.opts.ReadOnly || d.AutoClear {
				t.Errorf("device flags %+v, asked for %+v", d, tc.opts)
			}
			if d.BackingFile != file {
				t.Errorf("BackingFile = %q, want %q", d.BackingFile, file)
			}
			if sz, err := Size(d.Path); err != nil || sz != size {
				t.Errorf("Size = %d, %v; want %d", sz, err, size)
			}
			if tc.opts.BlockSize != 0 {
				b, _ := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/queue/logical_block_size", d.Number))
				if got := string(bytes.TrimSpace(b)); got != fmt.Sprint(tc.opts.BlockSize) {
					t.Errorf("logical block size %s, asked for %d", got, tc.opts.BlockSize)
				}
			}
			if got := readDev(t, d.Path, size); !bytes.Equal(got, want) {
				t.Fatal("device content differs from its backing file")
			}

			// Write through the device; the bytes must land in the file.
			news := pattern(64<<10, 7)
			f, err := os.OpenFile(d.Path, os.O_RDWR, 0)
			if tc.opts.ReadOnly {
				if err == nil {
					_, err = f.WriteAt(news, 1<<20)
					if err == nil {
						err = f.Sync()
					}
					f.Close()
				}
				if err == nil {
					t.Fatal("wrote to a read-only loop device")
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt(news, 1<<20); err != nil {
					t.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				f.Close()
				copy(want[1<<20:], news)
			}
			detach(t, d)
			got, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("backing file does not hold what was written through the device")
			}
		})
	}
}

func TestAttachErrorsLeakNothing(t *testing.T) {
	dir := scratch(t)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	empty := newFile(t, dir, "empty", nil)
	for _, tc := range []struct {
		name, file string
		opts       Options
	}{
		{"missing file", filepath.Join(dir, "nope"), Options{}},
		{"directory", filepath.Join(dir, "adir"), Options{}},
		{"bad block size", empty, Options{BlockSize: 3000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d, err := Attach(tc.file, tc.opts); err == nil {
				_, _ = Detach(d)
				t.Fatalf("Attach(%s) succeeded", tc.file)
			} else {
				t.Logf("error, as it should be: %v", err)
			}
			if left := testutil.LoopDevicesUnder(t, dir); len(left) != 0 {
				t.Fatalf("a failed attach left %v attached", left)
			}
		})
	}
}

// TestFindAfterRestart is what a driver does after a restart: it knows the
// backing file from its state and asks which device holds it.
func TestFindAfterRestart(t *testing.T) {
	dir := scratch(t)
	file := newFile(t, dir, "vol", pattern(1<<20, 3))
	orig, err := Attach(file, Options{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = Detach(orig) })

	found, err := Find(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Path != orig.Path || found[0].DirectIO != orig.DirectIO {
		t.Fatalf("Find = %+v, want just %+v", found, orig)
	}

	// A rename keeps the binding; the kernel follows it.
	renamed := filepath.Join(dir, "vol.renamed")
	if err := os.Rename(file, renamed); err != nil {
		t.Fatal(err)
	}
	found, err = Find(renamed)
	if err != nil || len(found) != 1 || found[0].Path != orig.Path || found[0].BackingFile != renamed {
		t.Fatalf("Find(renamed) = %+v, %v; want %s backed by %s", found, err, orig.Path, renamed)
	}
	// A new file at the old path is not the old file.
	newFile(t, dir, "vol", pattern(1<<20, 4))
	if found, err := Find(file); err != nil || len(found) != 0 {
		t.Fatalf("Find(new file at old path) = %+v, %v; want none", found, err)
	}

	// A deleted backing file: Find cannot name it any more, List still
	// shows the device so that a reconcile can detach it.
	if err := os.Remove(renamed); err != nil {
		t.Fatal(err)
	}
	all, err := List()
	if err != nil {
		t.Fatal(err)
	}
	var gone *Device
	for i := range all {
		if all[i].Path == orig.Path {
			gone = &all[i]
		}
	}
	if gone == nil || !gone.BackingDeleted || gone.BackingFile != renamed {
		t.Fatalf("List entry for %s = %+v, want a deleted backing file %s", orig.Path, gone, renamed)
	}
	detach(t, gone)
}

// TestStaleDeviceIsNotDetached: a Device remembered from before must not
// detach whatever holds that device number now.
func TestStaleDeviceIsNotDetached(t *testing.T) {
	dir := scratch(t)
	a := newFile(t, dir, "a", pattern(1<<20, 1))
	b := newFile(t, dir, "b", pattern(1<<20, 2))
	da, err := Attach(a, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stale := *da
	detach(t, da)
	if _, err := Detach(&stale); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("second Detach = %v, want ErrNotAttached", err)
	}
	// Attach b until it lands on a's old number (the kernel hands out the
	// lowest free one, but other tests attach too).
	var db *Device
	var extra []*Device
	defer func() {
		for _, d := range extra {
			_, _ = Detach(d)
		}
	}()
	for i := 0; i < 20; i++ {
		d, err := Attach(b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if d.Number == stale.Number {
			db = d
			break
		}
		extra = append(extra, d)
	}
	if db == nil {
		// Not a failure in CI: another test package attaching loop
		// devices at the same time can hold the number; nothing is missing.
		t.Skipf("skipping: loop%d stayed taken by another process", stale.Number)
	}
	defer Detach(db)
	if _, err := Detach(&stale); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("Detach(stale) on a device now holding another file = %v, want ErrNotAttached", err)
	}
	if d, err := Status(db.Path); err != nil || d.BackingInode != db.BackingInode {
		t.Fatalf("the other file's device was disturbed: %+v, %v", d, err)
	}
	devs, err := DetachFile(b)
	if err != nil || len(devs) != len(extra)+1 {
		t.Fatalf("DetachFile(b) = %d devices, %v; want %d", len(devs), err, len(extra)+1)
	}
	extra = nil
}

// TestDetachWhileOpen: the kernel cannot unbind a device in use; it unbinds
// it at the last close, and Detach says so.
func TestDetachWhileOpen(t *testing.T) {
	dir := scratch(t)
	file := newFile(t, dir, "vol", pattern(1<<20, 5))
	d, err := Attach(file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	user, err := os.Open(d.Path)
	if err != nil {
		_, _ = Detach(d)
		t.Fatal(err)
	}
	deferred, err := Detach(d)
	if err != nil || !deferred {
		user.Close()
		t.Fatalf("Detach of an open device = deferred %v, %v; want deferred, no error", deferred, err)
	}
	// Still readable by its user until it lets go.
	b := make([]byte, 512)
	if _, err := user.ReadAt(b, 0); err != nil || !bytes.Equal(b, pattern(512, 5)) {
		t.Errorf("open user lost the device after a deferred detach: %v", err)
	}
	if st, err := Status(d.Path); err != nil || !st.AutoClear {
		t.Errorf("deferred device status = %+v, %v; want bound with autoclear", st, err)
	}
	user.Close()
	if deferred, err := waitUnbound(d.Number); deferred || err != nil {
		t.Fatalf("device still bound after its last user closed it")
	}
}

// TestAutoClear: an autoclear device lives while a mount holds it and goes
// away with the unmount; Attach holds it open until the caller lets go.
func TestAutoClear(t *testing.T) {
	dir := scratch(t)
	testutil.RequireMkfs(t, "ext4")
	file := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", file).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	testutil.CleanupMounts(t, dir)

	d, err := Attach(file, Options{AutoClear: true, DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	if !d.AutoClear {
		t.Fatalf("device %+v is not autoclear", d)
	}
	if err := unix.Mount(d.Path, mnt, "ext4", 0, ""); err != nil {
		d.Close()
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := Status(d.Path); err != nil || st.BackingInode != d.BackingInode {
		t.Fatalf("mounted autoclear device went away after Close: %+v, %v", st, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "x"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if deferred, _ := waitUnbound(d.Number); deferred {
		t.Fatalf("autoclear device still attached after unmount")
	}

	// Closing without mounting gives the device up at once.
	d, err = Attach(file, Options{AutoClear: true})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if deferred, _ := waitUnbound(d.Number); deferred {
		t.Fatalf("autoclear device still attached after Close without a mount")
	}
	// Detach of a held autoclear device is the same give-up, not an error.
	d, err = Attach(file, Options{AutoClear: true})
	if err != nil {
		t.Fatal(err)
	}
	if deferred, err := Detach(d); deferred || err != nil {
		t.Fatalf("Detach of a held autoclear device = %v, %v", deferred, err)
	}
	if _, err := Status(d.Path); !errors.Is(err, ErrNotAttached) {
		t.Fatalf("held autoclear device still attached after Detach: %v", err)
	}
}

// TestConcurrentAttach: many goroutines attaching at once race for the same
// free device; each must end up with its own.
func TestConcurrentAttach(t *testing.T) {
	dir := scratch(t)
	const n = 24
	files := make([]string, n)
	for i := range files {
		files[i] = newFile(t, dir, fmt.Sprint("f", i), pattern(64<<10, byte(i)))
	}
	devs := make([]*Device, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	var busyRetries atomic.Int64
	start := make(chan struct{})
	for i := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			devs[i], errs[i] = Attach(files[i], Options{DirectIO: i%2 == 0, busyRetries: &busyRetries})
		}()
	}
	close(start)
	wg.Wait()
	t.Logf("%d attaches lost a race for a free device and retried", busyRetries.Load())
	t.Cleanup(func() {
		for _, d := range devs {
			if d != nil {
				_, _ = Detach(d)
			}
		}
	})
	seen := map[string]int{}
	for i, d := range devs {
		if errs[i] != nil {
			t.Fatalf("attach %d: %v", i, errs[i])
		}
		if j, dup := seen[d.Path]; dup {
			t.Fatalf("files %d and %d share %s", j, i, d.Path)
		}
		seen[d.Path] = i
		if got := readDev(t, d.Path, 64<<10); !bytes.Equal(got, pattern(64<<10, byte(i))) {
			t.Fatalf("%s does not hold file %d", d.Path, i)
		}
	}
	var wg2 sync.WaitGroup
	for i := range devs {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			_, errs[i] = Detach(devs[i])
		}()
	}
	wg2.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("detach %d: %v", i, err)
		}
	}
	if left := testutil.LoopDevicesUnder(t, dir); len(left) != 0 {
		t.Fatalf("left attached: %v", left)
	}
}

// TestSetCapacity: grow the file, tell the device, and the new end is there
// while the device stays attached and open.
func TestSetCapacity(t *testing.T) {
	dir := scratch(t)
	file := newFile(t, dir, "vol", pattern(8<<20, 9))
	d, err := Attach(file, Options{DirectIO: true})
	if err != nil {
		t.Fatal(err)
	}
	defer detach(t, d)
	user, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer user.Close()
	if err := os.Truncate(file, 24<<20); err != nil {
		t.Fatal(err)
	}
	if sz, _ := Size(d.Path); sz != 8<<20 {
		t.Fatalf("device grew to %d before LOOP_SET_CAPACITY", sz)
	}
	sz, err := SetCapacity(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if sz != 24<<20 {
		t.Fatalf("SetCapacity = %d, want %d", sz, 24<<20)
	}
	if sz2, _ := Size(d.Path); sz2 != sz {
		t.Fatalf("Size = %d after SetCapacity returned %d", sz2, sz)
	}
	// The open user writes into the new space; it lands in the file.
	tail := pattern(4096, 11)
	if _, err := user.WriteAt(tail, 20<<20); err != nil {
		t.Fatalf("write into grown space: %v", err)
	}
	if err := user.Sync(); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(file)
	got := make([]byte, 4096)
	_, err = f.ReadAt(got, 20<<20)
	f.Close()
	if err != nil || !bytes.Equal(got, tail) {
		t.Fatalf("grown space write did not reach the file: %v", err)
	}
}

// TestMissingDeviceNode: in a container whose /dev is not a devtmpfs, a new
// loop device has no node; Attach makes one.
func TestMissingDeviceNode(t *testing.T) {
	dir := scratch(t)
	dev := filepath.Join(dir, "dev")
	if err := os.Mkdir(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/dev/loop-control", &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(dev, "loop-control"), unix.S_IFCHR|0o600, int(st.Rdev)); err != nil {
		testutil.Missing(t, fmt.Sprintf("cannot make device nodes in %s: %v", dev, err),
			"run the tests as root (CAP_MKNOD), with TMPDIR on a filesystem mounted without nodev")
	}
	file := newFile(t, dir, "vol", pattern(1<<20, 13))
	d, err := attach(dev, file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer detach(t, d)
	if filepath.Dir(d.Path) != dev {
		t.Fatalf("device path %s is not in %s", d.Path, dev)
	}
	if err := unix.Stat(d.Path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("no block node made at %s: %v", d.Path, err)
	}
	if got := readDev(t, d.Path, 1<<20); !bytes.Equal(got, pattern(1<<20, 13)) {
		t.Fatal("made node does not reach the attached file")
	}
	found, err := find(dev, file)
	if err != nil || len(found) != 1 || found[0].Path != d.Path {
		t.Fatalf("find through the made node = %+v, %v", found, err)
	}
}

// TestEnsure is a block volume's stage and a restart's reconcile: the
// first call attaches, later ones reuse, a pending detach is cancelled, and
// a device that holds the file differently is refused.
func TestEnsure(t *testing.T) {
	dir := scratch(t)
	file := newFile(t, dir, "vol", pattern(1<<20, 17))
	opts := Options{DirectIO: true, BlockSize: 4096}
	d, reused, err := Ensure(file, opts)
	if err != nil || reused {
		t.Fatalf("first Ensure = %+v, reused %v, %v", d, reused, err)
	}
	defer Detach(d)
	if d.BlockSize != 4096 {
		t.Errorf("BlockSize = %d, want 4096", d.BlockSize)
	}
	again, reused, err := Ensure(file, opts)
	if err != nil || !reused || again.Path != d.Path {
		t.Fatalf("second Ensure = %+v, reused %v, %v; want %s reused", again, reused, err, d.Path)
	}
	for _, bad := range []Options{
		{ReadOnly: true, BlockSize: 4096},
		{BlockSize: 512},
		{AutoClear: true},
	} {
		if x, _, err := Ensure(file, bad); err == nil {
			Detach(x)
			t.Errorf("Ensure(%+v) over a device attached as %+v succeeded", bad, opts)
		}
	}

	// A detach deferred by a user, then Ensure (the volume is staged again
	// before the user let go): the device must stay after the user closes.
	user, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if deferred, err := Detach(d); err != nil || !deferred {
		user.Close()
		t.Fatalf("Detach with a user = %v, %v", deferred, err)
	}
	kept, reused, err := Ensure(file, opts)
	user.Close()
	if err != nil || !reused || kept.AutoClear {
		t.Fatalf("Ensure over a pending detach = %+v, reused %v, %v", kept, reused, err)
	}
	if st, err := Status(d.Path); err != nil || st.AutoClear || st.BackingInode != d.BackingInode {
		t.Fatalf("after the user closed, %s = %+v, %v; want still attached", d.Path, st, err)
	}
	if list, err := List(); err != nil || len(filterFile(list, d)) != 1 {
		t.Fatalf("want exactly one device for the file, List = %v", err)
	}
}

func filterFile(devs []Device, of *Device) []Device {
	var out []Device
	for _, d := range devs {
		if d.BackingDev == of.BackingDev && d.BackingInode == of.BackingInode {
			out = append(out, d)
		}
	}
	return out
}
