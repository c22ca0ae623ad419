package nfs

import (
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/test/vm"
)

// lines collects what a serial port says.
type lines struct {
	mu sync.Mutex
	l  []string
}

func (c *lines) add(s string) { c.mu.Lock(); c.l = append(c.l, s); c.mu.Unlock() }
func (c *lines) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.l...)
}

// TestMountInVM boots the guest, starts its NFS server and mounts an
// export through mount.nfs with NFSv4.2 and with NFSv3: what the driver's
// node plugin does, without the driver. It checks the mounts are NFS, that
// a file written through one is on the export, and that both unmount.
func TestMountInVM(t *testing.T) {
	g := requireImage(t)
	script := `
set -e
nfs-server
mkdir -p /mnt/v4 /mnt/v3
echo hello > /export/file
mount -t nfs -o nfsvers=4.2 127.0.0.1:/export /mnt/v4
mount -t nfs -o nfsvers=3 127.0.0.1:/export /mnt/v3
echo "mounted $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS1
grep ' /mnt/' /proc/mounts | while read src dir type opts rest; do echo "mount $dir $type $src $(echo $opts | tr , '\n' | grep '^vers=')" > /dev/ttyS1; done
echo "v4 reads $(cat /mnt/v4/file)" > /dev/ttyS1
echo via-v3 > /mnt/v3/written
echo "export has $(cat /export/written)" > /dev/ttyS1
umount /mnt/v4
umount /mnt/v3
echo "unmounted" > /dev/ttyS1
`
	initrd := g.initramfs(t, nil, script)
	con, port := &lines{}, &lines{}
	m, err := vm.Start(vm.Config{Kernel: g.kernel, Initramfs: initrd, MemoryMiB: 1024,
		Serial: []io.Writer{vm.NewLineWriter(con.add), vm.NewLineWriter(port.add)}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	if err := m.WaitTimeout(3 * time.Minute); err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, strings.Join(con.all(), "\n"))
	}
	got := port.all()
	t.Logf("powered off after %s; guest says:\n%s", m.Uptime().Round(100*time.Millisecond), strings.Join(got, "\n"))
	want := []string{
		"mount /mnt/v4 nfs4 127.0.0.1:/export vers=4.2",
		"mount /mnt/v3 nfs 127.0.0.1:/export vers=3",
		"v4 reads hello",
		"export has via-v3",
		"unmounted",
	}
	for _, w := range want {
		found := false
		for _, l := range got {
			found = found || l == w
		}
		if !found {
			t.Errorf("the guest did not say %q", w)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", strings.Join(con.all(), "\n"))
	}
}
