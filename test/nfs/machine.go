// Package nfs is the NFS end-to-end test (make e2e-nfs). This machine's
// kernel has neither an NFS client nor a server, so the test boots Debian's
// kernel in a VM (test/vm), which has both as modules, with an initramfs
// that carries a kernel NFS server's daemons and util-linux/nfs-common's
// mount (Debian packages, see vm.FetchUserland), the driver and the guest
// program (./guest). The NFS server and its clients are on the VM's own
// loopback; the VM has no network device. The guest program reports on its
// second serial port; the test asserts on those reports.
package nfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/test/vm"
)

// packages are the Debian packages the guest's NFS server and client come
// from; vm.FetchUserland adds the library packages they need.
var packages = []string{"nfs-kernel-server", "nfs-common", "rpcbind", "mount", "netbase", "nftables"}

// programs are what the guest runs of them.
var programs = []string{
	"/usr/sbin/rpc.nfsd", "/usr/sbin/rpc.mountd", "/usr/sbin/exportfs", "/usr/sbin/nfsdcld",
	"/sbin/rpcbind", "/sbin/rpc.statd", "/sbin/mount.nfs", "/usr/bin/rpcinfo", "/sbin/showmount",
	"/bin/mount", "/bin/umount", "/usr/sbin/nft",
}

// modules are the kernel's NFS server and client (with v3 and v4), and
// nf_tables, with which the guest makes the server stop answering (its
// libcrc32c asks the crypto API for crc32c by name: load it first).
var modules = []string{"nfsd", "nfs", "nfsv3", "nfsv4", "crc32c_generic", "nf_tables"}

// Exports, as the guest's /etc/exports has them. /export-squash squashes
// root, as most NFS servers do by default; /export does not, so the driver
// (root) can keep owners when it copies. The guest replaces the filesystem
// under /export-stale to make the handles its clients hold stale.
const exports = `/export 127.0.0.0/8(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=1)
/export-squash 127.0.0.0/8(rw,sync,no_subtree_check,root_squash,insecure,fsid=2)
/export-stale 127.0.0.0/8(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=3)
`

// serverScript starts a kernel NFS server on the guest's loopback, serving
// /etc/exports (directories on tmpfs), NFSv3 and NFSv4.x. nfsdcld tracks
// NFSv4 clients: with it and no client to reclaim, nfsd skips its grace
// period, during which it would refuse to open files for 90 s (10 s with
// the times set below, should nfsdcld not answer in time).
const serverScript = `#!/bin/sh
set -e
ip link set lo up
mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/nfsdcld /var/lib/nfs/sm /var/lib/nfs/sm.bak /run/rpcbind /export /export-squash /export-stale
mount -t tmpfs -o mode=0755 export /export
mount -t tmpfs -o mode=0777 export-squash /export-squash
mount -t tmpfs -o mode=0755 export-stale /export-stale
mount -t nfsd nfsd /proc/fs/nfsd
mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs
rpcbind -w
rpc.statd --no-notify
nfsdcld -F -d >/tmp/nfsdcld.log 2>&1 &
i=0
until grep -qs "Starting event dispatch" /tmp/nfsdcld.log; do
	i=$((i+1)); [ $i -lt 200 ] || { echo "nfs-server: nfsdcld did not start"; cat /tmp/nfsdcld.log; exit 1; }
	sleep 0.05
done
echo 10 > /proc/fs/nfsd/nfsv4leasetime
echo 10 > /proc/fs/nfsd/nfsv4gracetime
exportfs -ra
rpc.mountd
rpc.nfsd 4
echo "nfs-server: up after $(cut -d' ' -f1 /proc/uptime) s"
`

// etc are files the daemons read.
var etc = map[string]string{
	"/etc/exports":       exports,
	"/etc/passwd":        "root:x:0:0:root:/:/bin/sh\n_rpc:x:100:65534::/run/rpcbind:/bin/false\nstatd:x:101:65534::/var/lib/nfs:/bin/false\ntenant:x:1000:1000::/:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
	"/etc/group":         "root:x:0:\ntenant:x:1000:\nnogroup:x:65534:\n",
	"/etc/hosts":         "127.0.0.1 localhost\n::1 localhost\n",
	"/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
	"/etc/nfs.conf":      "[nfsd]\nthreads=4\n",
}

// guestImage is what an initramfs for an NFS test is made of.
type guestImage struct {
	kernel *vm.Kernel
	files  map[string]string // guest path -> host path
	dir    string
}

// requireImage fetches the kernel and the userland (into the VM cache) or
// skips the test with the reason, and prepares the files every NFS guest
// carries.
func requireImage(t *testing.T) *guestImage {
	t.Helper()
	k := vm.Require(t)
	u, err := vm.FetchUserland(vm.CacheDir(), packages)
	if err != nil {
		if errors.Is(err, vm.ErrUnavailable) {
			testutil.Missing(t, fmt.Sprintf("the guest's NFS programs: %v", err),
				"apt-get install apt dpkg, and apt-get update so that apt-get download finds them")
		}
		t.Fatal(err)
	}
	files, err := u.Closure(programs...)
	if err != nil {
		t.Fatal(err)
	}
	files["/sbin/mount.nfs4"] = files["/sbin/mount.nfs"]
	for _, f := range []string{"/etc/netconfig", "/etc/services", "/etc/protocols", "/etc/rpc"} {
		files[f] = filepath.Join(u.Root, f)
	}
	dir := t.TempDir()
	write := func(guest, content string, mode os.FileMode) {
		host := filepath.Join(dir, strings.ReplaceAll(strings.TrimPrefix(guest, "/"), "/", "_"))
		if err := os.WriteFile(host, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		files[guest] = host
	}
	for guest, content := range etc {
		write(guest, content, 0o644)
	}
	write("/bin/nfs-server", serverScript, 0o755)
	return &guestImage{kernel: k, files: files, dir: dir}
}

// buildStatic builds a Go program of this module for the guest.
func buildStatic(t *testing.T, dir, out, pkg string) string {
	t.Helper()
	dst := filepath.Join(dir, out)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", dst, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, b)
	}
	return dst
}

// initramfs writes an initramfs with the image's files, extra files and
// the script.
func (g *guestImage) initramfs(t *testing.T, extra map[string]string, script string) string {
	t.Helper()
	files := map[string]string{}
	for k, v := range g.files {
		files[k] = v
	}
	for k, v := range extra {
		files[k] = v
	}
	r := &vm.Initramfs{Kernel: g.kernel, Modules: modules, Files: files, Script: script}
	p := filepath.Join(g.dir, fmt.Sprintf("initrd-%d", len(script)))
	if err := r.Write(p); err != nil {
		t.Fatal(err)
	}
	return p
}
