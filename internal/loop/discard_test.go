package loop

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// loopControl issues a loop-control ioctl that takes a device number.
func loopControl(req uintptr, n int) (int, error) {
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(ctl)
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(ctl), req, uintptr(n))
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// freshDevice adds a loop device of its own (LOOP_CTL_ADD), so it has the
// kernel's defaults whatever earlier users set on the others (a discard
// limit stays with a device across detaches), and removes it at cleanup.
// It returns the value for Options.device.
func freshDevice(t *testing.T) int {
	t.Helper()
	for n := 3000 + os.Getpid()%1000; n < 5000; n++ {
		got, err := loopControl(unix.LOOP_CTL_ADD, n)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			t.Fatalf("LOOP_CTL_ADD %d: %v", n, err)
		}
		t.Cleanup(func() {
			for i := 0; ; i++ {
				_, err := loopControl(unix.LOOP_CTL_REMOVE, got)
				if err == nil || i == 200 {
					if err != nil {
						t.Errorf("LOOP_CTL_REMOVE %d: %v", got, err)
					}
					break
				}
				time.Sleep(10 * time.Millisecond) // a deferred detach
			}
			os.Remove(filepath.Join(defaultDevDir, "loop"+strconv.Itoa(got)))
		})
		return got + 1
	}
	t.Fatal("no free loop device number to add")
	return 0
}

// allocated is what the file at p holds on disk.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func preallocated(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "disk.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		testutil.Missing(t, fmt.Sprintf("the test directory's filesystem cannot preallocate: %v", err),
			"set TMPDIR to a directory on ext4, xfs, btrfs or tmpfs")
	}
	return p
}

// What a user of a device does to give its blocks back: discard it all,
// punch a hole through it, zero it with unmapping allowed.
var giveBack = [][]string{
	{"blkdiscard", "DEV"},
	{"fallocate", "--punch-hole", "--offset", "0", "--length", "4MiB", "DEV"},
	{"blkdiscard", "--zeroout", "--offset", "4194304", "--length", "4194304", "DEV"},
}

func runOn(t *testing.T, dev string) {
	t.Helper()
	for _, c := range giveBack {
		args := append([]string(nil), c[1:]...)
		for i := range args {
			if args[i] == "DEV" {
				args[i] = dev
			}
		}
		out, err := exec.Command(c[0], args...).CombinedOutput()
		t.Logf("%s %v: %v %s", c[0], args, err, out)
	}
}

// A device attached with NoDiscard cannot punch holes in its backing file:
// whatever a user of the device runs, the file keeps every block it was
// given. The same device with the kernel's defaults (the control) does
// punch them, so the test shows the attack works where discards are on.
func TestNoDiscardKeepsTheBackingFileAllocated(t *testing.T) {
	dir := scratch(t)
	for _, tool := range []string{"blkdiscard", "fallocate"} {
		testutil.RequireCommand(t, tool)
	}
	const size = 32 << 20
	img := preallocated(t, dir, size)
	n := freshDevice(t)

	d, err := Attach(img, Options{DirectIO: true, BlockSize: 4096, device: n})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Discard {
		t.Fatalf("%s, freshly added, takes no discards: the control cannot run", d.Path)
	}
	runOn(t, d.Path)
	if got := allocated(t, img); got >= size {
		t.Fatalf("with discards on, the backing file still holds %d of %d bytes: the control did not punch", got, size)
	}
	detach(t, d)
	if err := unix.Truncate(img, 0); err != nil {
		t.Fatal(err)
	}
	img = preallocatedAgain(t, img, size)

	d, err = Attach(img, Options{DirectIO: true, BlockSize: 4096, NoDiscard: true, device: n})
	if err != nil {
		t.Fatal(err)
	}
	defer detach(t, d)
	if d.Discard {
		t.Fatalf("%s attached with NoDiscard says it takes discards", d.Path)
	}
	runOn(t, d.Path)
	if got := allocated(t, img); got < size {
		t.Fatalf("with NoDiscard the backing file holds %d of its %d bytes: a user of the device gave blocks back", got, size)
	}
	if st, err := Status(d.Path); err != nil || st.Discard {
		t.Fatalf("Status of %s: %+v %v, want no discard", d.Path, st, err)
	}
}

func preallocatedAgain(t *testing.T, p string, size int64) string {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		t.Fatal(err)
	}
	return p
}
