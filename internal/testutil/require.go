package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// RequireAllEnv names the environment variable CI sets to 1: then a test
// that cannot run for want of something this kind of machine has (a tool,
// root, a kernel feature) fails instead of skipping, so a green run means
// every proof ran. hack/check-test-deps.sh reads the same variable.
const RequireAllEnv = "HOSTPATH_TEST_REQUIRE_ALL"

// RequireAll reports whether missing requirements fail tests.
func RequireAll() bool { return os.Getenv(RequireAllEnv) == "1" }

// Missing stops a test that lacks what, which install says how to get
// (a Debian package to apt-get install, or the step to take): it fails the
// test when HOSTPATH_TEST_REQUIRE_ALL=1, and skips it otherwise.
//
// Use it only for what the machines CI runs on have (Debian 12 as root,
// with loop devices, xfs, btrfs and qemu). A test that cannot run there on
// purpose (a kernel feature they lack, a test another make target runs)
// calls t.Skip itself and says in a comment why.
func Missing(t testing.TB, what, install string) {
	t.Helper()
	if RequireAll() {
		t.Fatalf("%s, and %s=1 requires it: %s", what, RequireAllEnv, install)
		return
	}
	t.Skipf("skipping: %s (%s; with %s=1 this fails)", what, install, RequireAllEnv)
}

// debianPackage says which Debian package installs each command the tests
// run, for the message of a missing one.
var debianPackage = map[string]string{
	"mkfs.ext4":          "e2fsprogs",
	"e2fsck":             "e2fsprogs",
	"mkfs.xfs":           "xfsprogs",
	"mkfs.btrfs":         "btrfs-progs",
	"btrfs":              "btrfs-progs",
	"mount":              "mount",
	"losetup":            "mount",
	"fsfreeze":           "util-linux",
	"setpriv":            "util-linux",
	"unshare":            "util-linux",
	"blkdiscard":         "util-linux",
	"fallocate":          "util-linux",
	"id":                 "coreutils",
	"dd":                 "coreutils",
	"udevadm":            "udev",
	"pvcreate":           "lvm2",
	"pvs":                "lvm2",
	"cpio":               "cpio",
	"depmod":             "kmod",
	"qemu-system-x86_64": "qemu-system-x86",
	"bash":               "bash",
	"make":               "make",
	"pgrep":              "procps",
	"curl":               "curl",
	"ctr":                "containerd",
	"containerd":         "containerd",
}

// RequireCommand returns the path of the command name, or stops the test
// (see Missing) naming the Debian package that installs it.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	pkg, ok := debianPackage[name]
	if !ok {
		t.Fatalf("testutil: no Debian package known for %q: add it to debianPackage", name)
		return ""
	}
	Missing(t, name+" not found", "apt-get install "+pkg)
	return ""
}

// RequireMkfs returns the path of mkfs.<fstype>, or stops the test (see
// Missing) naming its package.
func RequireMkfs(t testing.TB, fstype string) string {
	t.Helper()
	return RequireCommand(t, "mkfs."+fstype)
}
