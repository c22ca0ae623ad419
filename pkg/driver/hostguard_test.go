package driver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A tenant with a block volume writes what the host would act on: an ext4
// filesystem (udev links it in /dev/disk/by-uuid) and an LVM physical
// volume (udev runs pvscan, which auto-activates its volume group). With
// --udev-rules-dir the driver's rule makes udev leave the volume's loop
// device alone, while other loop devices (here the one under the data
// filesystem) are probed as before. udevadm test runs the host's real
// rules on the real devices.
func TestHostIgnoresWhatTenantsWriteIntoBlockVolumes(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"udevadm", "mkfs.ext4", "pvcreate", "pvs"} {
		testutil.RequireCommand(t, tool)
	}
	const rulesDir = "/run/udev/rules.d" // read by udev, not kept across boots
	if err := os.MkdirAll(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	mnt := testutil.LoopFS(t, "ext4", 128)
	cleanupUnder(t, mnt)
	e := &testEnv{dir: mnt, stateDir: filepath.Join(mnt, "state"), dataDir: filepath.Join(mnt, "data")}
	cfg := e.config()
	cfg.DriverName = fmt.Sprintf("guard-%d.test.example", os.Getpid())
	cfg.UdevRulesDir = rulesDir
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	t.Cleanup(func() { d.Close() })
	rule := filepath.Join(rulesDir, "10-"+cfg.DriverName+".rules")
	t.Cleanup(func() { os.Remove(rule) })
	if _, err := os.Stat(rule); err != nil {
		t.Fatalf("the driver wrote no rule: %v", err)
	}

	device := func(name string) string {
		req := createReq(name, 16<<20)
		req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
		r, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		id := r.GetVolume().GetVolumeId()
		_, target := e.stageAndPublish(t, id, blockCap)
		t.Cleanup(func() { e.unpublishAndUnstage(t, id) })
		var st unix.Stat_t
		if err := unix.Stat(target, &st); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("/dev/loop%d", unix.Minor(st.Rdev))
	}
	fsDev, lvmDev := device("tenant-fs"), device("tenant-lvm")
	for _, c := range [][]string{{"mkfs.ext4", "-q", "-F", fsDev}, {"pvcreate", "-q", "-ff", "-y", lvmDev}} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	// lvm commands run on the host scan every device: the filter shipped in
	// deploy/host/lvm.conf keeps them off the tenant's physical volume.
	shipped, err := os.ReadFile("../../deploy/host/lvm.conf")
	if err != nil {
		t.Fatal(err)
	}
	var filter string
	for _, l := range strings.Split(string(shipped), "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "global_filter") {
			filter = "devices { " + l + " }"
		}
	}
	pvs := func(args ...string) string {
		cmd := exec.Command("pvs", append([]string{"--noheadings", "-o", "pv_name"}, args...)...)
		cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := pvs(); !strings.Contains(out, lvmDev) {
		t.Fatalf("pvs without the filter does not see the tenant's PV %s:\n%s", lvmDev, out)
	}
	if out := pvs("--config", filter); strings.Contains(out, lvmDev) {
		t.Errorf("pvs with the shipped filter %q still sees the tenant's PV:\n%s", filter, out)
	}
	// The data filesystem's own loop device: its backing file is outside
	// the data directory, so the rule must not touch it.
	var mst unix.Stat_t
	if err := unix.Stat(mnt, &mst); err != nil {
		t.Fatal(err)
	}
	dataLoop := fmt.Sprintf("loop%d", unix.Minor(mst.Dev))

	// The kubelet gives a pod a raw block volume through a loop device of
	// its own, backed by the published device node.
	kubeletDev := kubeletLoop(t, fsDev)
	// A device attached by a driver whose container is gone: the kernel
	// now shows its backing file from the hostPath's root, not under the
	// data directory.
	orphanDev := attachFromGoneNamespace(t, mnt, lvmDev)
	for _, tc := range []struct {
		name, dev string
		guarded   bool
	}{
		{"tenant's ext4", fsDev, true},
		{"tenant's LVM PV", lvmDev, true},
		{"the kubelet's loop device of the tenant's ext4", kubeletDev, true},
		{"a tenant's LVM PV attached from a namespace now gone", orphanDev, true},
		{"loop device outside the data directory", "/dev/" + dataLoop, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := udevTest(t, tc.dev)
			probed := strings.Contains(out, "ID_FS_TYPE=ext4") || strings.Contains(out, "ID_FS_TYPE=LVM2_member")
			acted := strings.Contains(out, "by-uuid") || strings.Contains(out, "pvscan")
			if tc.guarded && (probed || acted) {
				t.Errorf("udev probed %v or acted %v on a tenant's device:\n%s", probed, acted, out)
			}
			if tc.guarded && !strings.Contains(out, "UDISKS_IGNORE=1") {
				t.Errorf("udev did not mark the tenant's device as not the host's:\n%s", out)
			}
			if !tc.guarded && !probed {
				t.Errorf("udev no longer probes a loop device that is not a volume's:\n%s", out)
			}
		})
	}
}

// udevTest runs the host's udev rules for an add event of the block device
// dev and returns what udev did, then undoes the links it made.
func udevTest(t *testing.T, dev string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	out, err := exec.Command("udevadm", "test", "--action=add", sys).CombinedOutput()
	if err != nil {
		t.Fatalf("udevadm test %s: %v\n%s", sys, err, out)
	}
	// udevadm test makes the links it would make: remove them again.
	_ = exec.Command("udevadm", "test", "--action=remove", sys).Run()
	links, _ := filepath.Glob("/dev/disk/*/*")
	for _, l := range links {
		var lst unix.Stat_t
		if unix.Stat(l, &lst) == nil && lst.Rdev == st.Rdev {
			os.Remove(l)
		}
	}
	return string(out)
}

func losetup(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("losetup", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// kubeletLoop does what the kubelet does for a pod's raw block volume: it
// binds the device onto <plugins>/kubernetes.io/csi/volumeDevices/<pv>/dev/<pod>
// and attaches a loop device to that file.
func kubeletLoop(t *testing.T, dev string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "plugins/kubernetes.io/csi/volumeDevices/pvc-1/dev")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(dir, "0b5f-pod")
	if err := os.WriteFile(node, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, node, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(node, unix.MNT_DETACH) })
	l := losetup(t, "-f", "--show", node)
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", l).Run() })
	return l
}

// attachFromGoneNamespace attaches a second loop device to the backing
// file of dev from a mount namespace that sees the data filesystem at
// another path, and lets that namespace end, as a replaced driver
// container does.
func attachFromGoneNamespace(t *testing.T, mnt, dev string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/%s/loop/backing_file", filepath.Base(dev)))
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(mnt, strings.TrimSpace(string(b)))
	if err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("backing file %s is not under %s", b, mnt)
	}
	view := t.TempDir()
	script := fmt.Sprintf("mount --make-rprivate / && mount --bind %q %q && losetup -f --show %q", mnt, view, filepath.Join(view, rel))
	out, err := exec.Command("unshare", "--mount", "sh", "-ec", script).CombinedOutput()
	if err != nil {
		t.Fatalf("attach from another namespace: %v\n%s", err, out)
	}
	l := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", l).Run() })
	shown, err := os.ReadFile(fmt.Sprintf("/sys/block/%s/loop/backing_file", filepath.Base(l)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(string(shown), mnt) || strings.HasPrefix(string(shown), view) {
		t.Fatalf("the kernel still shows %s from a path the driver knows; the case is not made", shown)
	}
	t.Logf("attached from a namespace now gone: %s shows %s", l, strings.TrimSpace(string(shown)))
	return l
}
