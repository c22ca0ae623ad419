package vm

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

func TestCPIOExtractsWithHostCpio(t *testing.T) {
	cpio := testutil.RequireCommand(t, "cpio")
	// Sizes around the 4-byte padding, and names of every length mod 4.
	files := map[string]string{
		"a":           "",
		"bb/c":        "x",
		"bb/dd/eee":   "xyz",
		"bb/dd/ffff":  "wxyz",
		"g/h/i/jjjjj": strings.Repeat("0123456789", 1000) + "!",
	}
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	var names []string
	for n := range files {
		names = append(names, n)
	}
	for _, d := range parentDirs(names) {
		c.dir(d, 0o755)
	}
	for _, n := range names {
		c.file(n, 0o640, int64(len(files[n])), strings.NewReader(files[n]))
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 4", buf.Len())
	}
	dir := t.TempDir()
	cmd := exec.Command(cpio, "-i", "-d", "--quiet")
	cmd.Dir, cmd.Stdin = dir, &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	for n, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil || string(got) != want {
			t.Errorf("%s: got %d bytes (%v), want %d", n, len(got), err, len(want))
		}
		if st, err := os.Stat(filepath.Join(dir, n)); err == nil && st.Mode().Perm() != 0o640 {
			t.Errorf("%s: mode %v, want 0640", n, st.Mode().Perm())
		}
	}
}

func TestParentDirs(t *testing.T) {
	got := parentDirs([]string{"a/b/c", "a/d", "e", "f/g"})
	want := []string{"a", "f", "a/b"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parentDirs = %v, want %v", got, want)
	}
}

const testModulesDep = `kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/x/loop1.ko: kernel/x/loop2.ko
kernel/x/loop2.ko: kernel/x/loop1.ko
kernel/x/broken.ko: kernel/x/absent.ko
`

func TestResolveModules(t *testing.T) {
	idx, err := parseModulesDep(strings.NewReader(testModulesDep))
	if err != nil {
		t.Fatal(err)
	}
	idx.builtin["serial_8250"] = true
	for _, tc := range []struct {
		names   []string
		want    []string
		wantErr string
	}{
		{names: []string{"virtio_blk"}, want: []string{"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/block/virtio_blk.ko"}},
		// Shared dependencies come once, before the first module needing them.
		{names: []string{"virtio_blk", "virtio_pci"}, want: []string{"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
			"kernel/drivers/block/virtio_blk.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko", "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
			"kernel/drivers/virtio/virtio_pci.ko"}},
		{names: []string{"ext4"}, want: []string{"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/ext4/ext4.ko"}},
		// '-' and '_' name the same module, as for modprobe.
		{names: []string{"crc32c_intel", "crc32c-intel"}, want: []string{"kernel/arch/x86/crypto/crc32c-intel.ko"}},
		{names: []string{"serial_8250"}, want: nil},
		{names: []string{"nosuch"}, wantErr: `no module "nosuch"`},
		{names: []string{"loop1"}, wantErr: "cycle"},
		{names: []string{"broken"}, wantErr: "kernel/x/absent.ko (needed by broken) is not in modules.dep"},
	} {
		got, err := idx.resolve(tc.names)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("resolve(%v) error %v, want one containing %q", tc.names, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("resolve(%v) = %v, %v; want %v", tc.names, got, err, tc.want)
		}
	}
}

func TestLineWriter(t *testing.T) {
	for _, tc := range []struct {
		writes  []string
		lines   []string
		partial string
	}{
		{writes: []string{"a\nb\n"}, lines: []string{"a", "b"}},
		{writes: []string{"a", "b", "c\nd"}, lines: []string{"abc"}, partial: "d"},
		{writes: []string{"x\r\n", "\n"}, lines: []string{"x", ""}},
		{writes: []string{"cut in the mid"}, partial: "cut in the mid"},
	} {
		var lines []string
		w := NewLineWriter(func(l string) { lines = append(lines, l) })
		for _, s := range tc.writes {
			if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if !reflect.DeepEqual(lines, tc.lines) || w.Partial() != tc.partial {
			t.Errorf("writes %q: lines %q partial %q, want %q %q", tc.writes, lines, w.Partial(), tc.lines, tc.partial)
		}
	}
}

// collector gathers the lines of a serial port and lets a test wait for one.
type collector struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{}
}

func newCollector() *collector { return &collector{more: make(chan struct{}, 1)} }

func (c *collector) add(l string) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	c.mu.Unlock()
	select {
	case c.more <- struct{}{}:
	default:
	}
}

func (c *collector) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

func (c *collector) waitFor(t *testing.T, prefix string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		for _, l := range c.all() {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		select {
		case <-c.more:
		case <-deadline:
			t.Fatalf("no line %q within %s; got %q", prefix, d, c.all())
		}
	}
}

// TestBootDiskSerialKill boots twice on one disk image: the first guest
// writes the disk, talks on ttyS1 and powers off by itself; the second
// reads what the first wrote, then ticks until it is killed.
func TestBootDiskSerialKill(t *testing.T) {
	k := Require(t)
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd")
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	script := `
if [ "$(dd if=/dev/vda bs=5 count=1 2>/dev/null)" = hello ]; then
	echo "second boot: disk says hello" > /dev/ttyS1
	i=0; while true; do i=$((i+1)); echo "tick $i" > /dev/ttyS1; sleep 0.05; done
fi
echo hello | dd of=/dev/vda conv=fsync 2>/dev/null
echo "first boot: wrote the disk; kernel $(uname -r)" > /dev/ttyS1
`
	r := &Initramfs{Kernel: k, Modules: []string{"virtio_pci", "virtio_blk"}, Script: script}
	if err := r.Write(initrd); err != nil {
		t.Fatal(err)
	}
	boot := func() (*Machine, *collector, *collector) {
		console, port := newCollector(), newCollector()
		m, err := Start(Config{Kernel: k, Initramfs: initrd, Disks: []Disk{{Path: disk}},
			Serial: []io.Writer{NewLineWriter(console.add), NewLineWriter(port.add)}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Kill)
		return m, console, port
	}

	m, console, port := boot()
	if err := m.WaitTimeout(3 * time.Minute); err != nil {
		t.Fatalf("first boot: %v\nconsole: %s", err, strings.Join(console.all(), "\n"))
	}
	t.Logf("first boot: powered off after %s; %s", m.Uptime().Round(10*time.Millisecond), console.waitFor(t, "vm: ready", 0))
	if want := "first boot: wrote the disk; kernel " + k.Release; !reflect.DeepEqual(port.all(), []string{want}) {
		t.Errorf("ttyS1 said %q, want %q", port.all(), want)
	}

	m, _, port = boot()
	port.waitFor(t, "second boot: disk says hello", 3*time.Minute)
	port.waitFor(t, "tick 3", time.Minute)
	pid := m.PID()
	m.Kill()
	if err := syscall.Kill(pid, 0); err != syscall.ESRCH {
		t.Errorf("qemu %d still exists after Kill: %v", pid, err)
	}
	if m.Err() == nil {
		t.Error("a killed machine reports a clean power-off")
	}
	// Every tick arrived whole and in order; the one in flight is dropped.
	for i, l := range port.all()[1:] {
		if want := fmt.Sprintf("tick %d", i+1); l != want {
			t.Errorf("line %d after the kill: %q, want %q", i, l, want)
		}
	}
}

// BenchmarkBoot measures a boot to /init's script and back to power-off:
// what each power cut of test/powercut costs at least.
func BenchmarkBoot(b *testing.B) {
	k := Require(b)
	initrd := filepath.Join(b.TempDir(), "initrd")
	r := &Initramfs{Kernel: k, Modules: []string{"virtio_pci", "virtio_blk", "ext4", "crc32c_generic"}, Script: "true"}
	if err := r.Write(initrd); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		m, err := Start(Config{Kernel: k, Initramfs: initrd})
		if err != nil {
			b.Fatal(err)
		}
		if err := m.WaitTimeout(3 * time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

func TestBzPayload(t *testing.T) {
	img := make([]byte, 4096)
	copy(img[0x202:], "HdrS")
	img[0x206], img[0x207] = 0x0f, 0x02 // protocol 2.15
	img[0x1f1] = 2                      // setup sectors: code starts at 3*512
	img[0x248], img[0x24c] = 16, 5      // payload at 1536+16, 5 bytes
	copy(img[1552:], "hello")
	if p, err := bzPayload(img); err != nil || string(p) != "hello" {
		t.Errorf("bzPayload = %q, %v", p, err)
	}
	img[0x24c] = 255
	img[0x24d] = 255
	if _, err := bzPayload(img); err == nil {
		t.Error("a payload past the end of the image was accepted")
	}
	if _, err := bzPayload(make([]byte, 4096)); err == nil {
		t.Error("an image without a setup header was accepted")
	}
}

func TestParseLibraryDepends(t *testing.T) {
	got := parseLibraryDepends(" libc6 (>= 2.34), libwrap0 | libfoo1, adduser, libtirpc3:any (>= 1.0.2), lsb-base")
	want := []string{"libc6", "libwrap0", "libtirpc3"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parseLibraryDepends = %q, want %q", got, want)
	}
}

// TestUserlandResolve: links inside a userland are followed inside it, an
// absolute target against its root and never against the host's /.
func TestUserlandResolve(t *testing.T) {
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mk("lib/x86_64-linux-gnu/libfoo.so.1.2.3")
	if err := os.WriteFile(filepath.Join(root, "lib/x86_64-linux-gnu/libfoo.so.1.2.3"), []byte("lib"), 0o644); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"lib/x86_64-linux-gnu/libfoo.so.1": "libfoo.so.1.2.3",                   // relative
		"lib64/ld.so":                      "/lib/x86_64-linux-gnu/libfoo.so.1", // absolute, inside the root
		"etc/hostfile":                     "/etc/passwd",                       // on the host, not in the root
		"loop/a":                           "b",
		"loop/b":                           "a",
	}
	for p, target := range links {
		mk(p)
		if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
			t.Fatal(err)
		}
	}
	u := &Userland{Root: root}
	want := filepath.Join(root, "lib/x86_64-linux-gnu/libfoo.so.1.2.3")
	for _, p := range []string{"/lib/x86_64-linux-gnu/libfoo.so.1", "/lib64/ld.so"} {
		if got, err := u.resolve(p); err != nil || got != want {
			t.Errorf("resolve(%s) = %q, %v; want %q", p, got, err, want)
		}
	}
	if got, err := u.resolve("/etc/hostfile"); err == nil {
		t.Errorf("resolve of a link out of the userland = %q, want an error", got)
	}
	if _, err := u.resolve("/loop/a"); err == nil || !strings.Contains(err.Error(), "too many levels") {
		t.Errorf("resolve of a link loop: %v, want ELOOP", err)
	}
	if _, err := u.findLibrary("libfoo.so.1"); err != nil {
		t.Errorf("findLibrary(libfoo.so.1): %v", err)
	}
	if _, err := u.findLibrary("libbar.so.1"); err == nil {
		t.Error("findLibrary found a library the userland does not have")
	}
}
