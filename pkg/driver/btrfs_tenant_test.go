package driver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/quota"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// tenantUID is who the tenant's processes run as: nobody, with no groups
// and no capabilities, as an unprivileged process in a pod.
const tenantUID = "65534"

// asTenant runs script with sh in dir (a published volume) as an
// unprivileged user and returns what it printed. The working directory is
// entered as root before the user changes, so the test's private parent
// directories need not be open to the tenant; the script uses paths
// relative to the volume, as a pod does (and cd -P: a logical cd would
// walk the path from /).
func asTenant(t *testing.T, dir, script string) string {
	t.Helper()
	for _, tool := range []string{"setpriv", "btrfs", "dd"} {
		testutil.RequireCommand(t, tool)
	}
	cmd := exec.Command("setpriv", "--reuid="+tenantUID, "--regid="+tenantUID, "--clear-groups", "--inh-caps=-all", "--", "sh", "-c", script)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tenant script failed: %v\n%s\n%s", err, script, out)
	}
	return string(out)
}

var ddCopied = regexp.MustCompile(`(?m)^(\d+) bytes`)

// tenantFillThroughSubvolume is what a hostile pod does to outgrow its
// volume on btrfs: make a subvolume inside it (any user who can write a
// directory may) and write into that, and failing that write in place.
// It returns the bytes written, whether a subvolume was made, and whether
// the kernel refused the write for want of room (EDQUOT or ENOSPC).
func tenantFillThroughSubvolume(t *testing.T, dir string, bytes int64) (written int64, subvolume, refused bool) {
	t.Helper()
	return tenantDD(t, dir, bytes, `
		if btrfs subvolume create inner >/dev/null 2>&1; then cd -P inner && echo made-subvolume || exit 1; fi`)
}

// tenantWrite writes bytes into a new file in dir as the tenant; it returns
// the bytes written and whether the kernel refused more for want of room.
func tenantWrite(t *testing.T, dir string, bytes int64) (written int64, refused bool) {
	t.Helper()
	written, _, refused = tenantDD(t, dir, bytes, "")
	return written, refused
}

func tenantDD(t *testing.T, dir string, bytes int64, before string) (written int64, subvolume, refused bool) {
	t.Helper()
	out := asTenant(t, dir, before+`
		dd if=/dev/zero of=fill.$$ bs=1M count=`+strconv.FormatInt(bytes>>20, 10)+` conv=fsync 2>&1 || true`)
	refused = strings.Contains(out, "Disk quota exceeded") || strings.Contains(out, "No space left on device")
	m := ddCopied.FindAllStringSubmatch(out, -1)
	switch {
	case len(m) > 0:
		written, _ = strconv.ParseInt(m[len(m)-1][1], 10, 64)
	case !refused: // refused at the open: nothing written
		t.Fatalf("no dd summary in the tenant's output:\n%s", out)
	}
	return written, strings.Contains(out, "made-subvolume"), refused
}

// On a btrfs data directory, a volume that says it is held to its size (its
// size-limit in the volume context; an inline volume is always held) is held
// against an unprivileged pod that makes a subvolume inside it and writes
// there: the write is refused at about the size. A btrfs qgroup limit cannot
// promise that (a nested subvolume's data is outside the volume's qgroup),
// so a directory volume on btrfs says size-limit: none, and an inline volume
// there is an image.
func TestBtrfsVolumeSaidHeldHoldsAgainstNestedSubvolumes(t *testing.T) {
	const size = 32 << 20
	tests := []struct {
		name   string
		params map[string]string // nil: the default class
		inline bool
		limit  string // what the volume context must say
	}{
		{"default layout (directory)", nil, false, hostpath.EnforceNone},
		{"layout directory", map[string]string{ParamLayout: LayoutDirectory}, false, hostpath.EnforceNone},
		{"layout image", map[string]string{ParamLayout: LayoutImage}, false, hostpath.EnforceImage},
		{"inline volume", nil, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, "btrfs", 1024)
			cleanupUnder(t, mnt)
			// A small filesystem: a namespace's inline share would be short of 32 MiB.
			e := newEnvWith(t, mnt, func(c *Config) { nodeBoundsOnly(&c.Ephemeral) })
			var target, limit string
			var unpublish func()
			if tc.inline {
				const handle = "csi-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c"
				target = filepath.Join(mnt, "kubelet", "pods", "web", "volumes", "scratch", "mount")
				if _, err := e.d.NodePublishVolume(ctx, inlineReq(handle, target, map[string]string{AttrSize: "32Mi", ParamMountPermissions: "0777"})); err != nil {
					t.Fatal(err)
				}
				limit = "inline: always held"
				unpublish = func() {
					if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target}); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				req := createReq("v", size)
				req.Parameters = tc.params
				r, err := e.d.CreateVolume(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				id := r.GetVolume().GetVolumeId()
				limit = r.GetVolume().GetVolumeContext()[ContextLimit]
				_, target = e.stageAndPublish(t, id, rwo)
				unpublish = func() {
					e.unpublishAndUnstage(t, id)
					if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
						t.Fatal(err)
					}
				}
			}

			written, sub, refused := tenantFillThroughSubvolume(t, target, 3*size)
			t.Logf("size-limit %q: the pod made a subvolume: %v; wrote %d MiB into a %d MiB volume (refused: %v)", limit, sub, written>>20, size>>20, refused)
			if limit != hostpath.EnforceNone {
				if !refused || written > size+size/8 {
					t.Fatalf("the volume says %q, but a pod that made a subvolume inside it (%v) wrote %d bytes into %d (refused: %v)", limit, sub, written, size, refused)
				}
				if written < size/2 {
					t.Fatalf("the volume says %q, and the pod's write was refused at %d bytes of %d: far below its size", limit, written, size)
				}
			}
			if !tc.inline && limit != tc.limit {
				t.Fatalf("volume context size-limit %q, want %q", limit, tc.limit)
			}
			unpublish()
			e.d.hostpath.vols.WaitIdle()
			if left := subvolumesUnder(t, mnt); len(left) != 0 {
				t.Fatalf("subvolumes left after the volume was removed: %v", left)
			}
		})
	}
}

// subvolumesUnder lists the subvolumes of the btrfs filesystem mounted at mnt
// (their paths from its top level).
func subvolumesUnder(t *testing.T, mnt string) []string {
	t.Helper()
	out, err := exec.Command("btrfs", "subvolume", "list", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs subvolume list: %v\n%s", err, out)
	}
	var paths []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if i := strings.Index(line, " path "); i >= 0 {
			paths = append(paths, line[i+len(" path "):])
		}
	}
	return paths
}

// A pod that made subvolumes inside its volume (nested ones, and a snapshot
// of one, which the kernel lets the owner of a subvolume take) does not keep
// its volume from being deleted: DeleteVolume succeeds and nothing of it is
// left, neither a subvolume nor a file.
func TestDeleteRemovesSubvolumesAPodMadeInside(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	id := e.create(t, "v")
	_, target := e.stageAndPublish(t, id, rwo)
	asTenant(t, target, `set -e
		btrfs subvolume create a >/dev/null
		mkdir -p a/dir
		btrfs subvolume create a/dir/b >/dev/null
		btrfs subvolume create a/dir/b/c >/dev/null
		echo data > a/dir/b/c/f
		dd if=/dev/zero of=a/dir/b/big bs=1M count=8 2>/dev/null
		btrfs subvolume snapshot a/dir/b snap-of-b >/dev/null
		btrfs subvolume snapshot -r a snap-of-a >/dev/null`)
	if n := len(subvolumesUnder(t, mnt)); n < 6 {
		t.Fatalf("%d subvolumes after the pod made five in its volume, want at least 6", n)
	}
	e.unpublishAndUnstage(t, id)
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume of a volume holding subvolumes a pod made: %v", err)
	}
	e.d.hostpath.vols.WaitIdle()
	if left := subvolumesUnder(t, mnt); len(left) != 0 {
		t.Fatalf("subvolumes left after DeleteVolume: %v", left)
	}
	for _, dir := range []string{"volumes", "trash", "partial"} {
		if names, err := os.ReadDir(filepath.Join(mnt, "data", dir)); err != nil || len(names) != 0 {
			t.Fatalf("data/%s after DeleteVolume: %v %v, want empty", dir, names, err)
		}
	}
}

// Volumes an earlier version made on btrfs, with a qgroup limit on record
// and on disk, keep working after the upgrade: they say size-limit none
// (their limit does not hold against a pod that makes a subvolume), their
// limit still stops ordinary writes and grows with NodeExpandVolume, and a
// volume restored from a snapshot of one is not capped at the old volume's
// size by the limit a btrfs snapshot inherits. With quotas turned off they
// still grow and report their usage. Deleting them leaves nothing.
func TestQgroupVolumesOfAnEarlierVersionKeepWorking(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	const size = 32 << 20
	r, err := e.d.CreateVolume(ctx, createReq("old", size))
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	// What an earlier version left: quotas on, a qgroup limit of the
	// volume's size, and the record naming it.
	if err := quota.EnableQgroups(e.d.hostpath.vols.Root()); err != nil {
		testutil.Missing(t, fmt.Sprintf("btrfs quotas cannot be turned on here: %v", err),
			"a kernel with btrfs qgroups (Debian 12's has them)")
	}
	if err := quota.SetQgroupLimit(e.d.hostpath.vols.Path(id), size); err != nil {
		t.Fatal(err)
	}
	v, err := e.d.store.GetVolume(id)
	if err != nil {
		t.Fatal(err)
	}
	v.Limit = hostpath.EnforceQgroup
	if err := e.d.store.PutVolume(v); err != nil {
		t.Fatal(err)
	}
	e.restart(t)

	if g, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	} else if got := g.GetVolume().GetVolumeContext()[ContextLimit]; got != hostpath.EnforceNone {
		t.Fatalf("a volume with a qgroup limit says size-limit %q, want %q: a pod escapes the limit", got, hostpath.EnforceNone)
	}
	_, target := e.stageAndPublish(t, id, rwo)
	if n, refused := tenantWrite(t, target, size+8<<20); !refused || n > size {
		t.Fatalf("an ordinary write of %d bytes into the %d-byte volume: wrote %d (refused: %v), want its qgroup limit to stop it", size+8<<20, size, n, refused)
	}
	if _, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * size}}); err != nil {
		t.Fatalf("NodeExpandVolume: %v", err)
	}
	if n, refused := tenantWrite(t, target, size); refused {
		t.Fatalf("after growing to %d bytes, a write of %d more stopped at %d", 2*size, size, n)
	}
	e.unpublishAndUnstage(t, id)

	s, err := e.d.CreateSnapshot(ctx, snapReq("snap", id))
	if err != nil {
		t.Fatal(err)
	}
	restored, err := e.d.CreateVolume(ctx, fromSnapshot("restored", 4*size, s.GetSnapshot().GetSnapshotId()))
	if err != nil {
		t.Fatal(err)
	}
	rid := restored.GetVolume().GetVolumeId()
	if got := restored.GetVolume().GetVolumeContext()[ContextLimit]; got != hostpath.EnforceNone {
		t.Fatalf("restored volume says size-limit %q, want %q", got, hostpath.EnforceNone)
	}
	_, rtarget := e.stageAndPublish(t, rid, rwo)
	if n, refused := tenantWrite(t, rtarget, 3*size/2); refused {
		t.Fatalf("a %d-byte volume restored from a snapshot of one with a qgroup limit of %d refused a write of %d at %d: the limit its snapshot inherited caps it", 4*size, 2*size, 3*size/2, n)
	}
	e.unpublishAndUnstage(t, rid)

	// An administrator who turns btrfs quotas off, now that nothing new
	// needs them, leaves the old volume without a limit, but working.
	if out, err := exec.Command("btrfs", "quota", "disable", mnt).CombinedOutput(); err != nil {
		t.Fatalf("btrfs quota disable: %v\n%s", err, out)
	}
	_, target = e.stageAndPublish(t, id, rwo)
	if n, refused := tenantWrite(t, target, size); refused {
		t.Fatalf("with quotas off, a write of %d bytes stopped at %d", size, n)
	}
	if st, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); err != nil {
		t.Fatalf("NodeGetVolumeStats with quotas off: %v", err)
	} else if used := st.GetUsage()[0].GetUsed(); used < 2*size {
		t.Fatalf("NodeGetVolumeStats with quotas off: %d bytes used, want at least the %d written", used, 2*size)
	}
	if _, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 3 * size}}); err != nil {
		t.Fatalf("NodeExpandVolume with quotas off: %v", err)
	}
	e.unpublishAndUnstage(t, id)

	for _, vid := range []string{id, rid} {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vid}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	e.d.hostpath.vols.WaitIdle()
	if left := subvolumesUnder(t, mnt); len(left) != 0 {
		t.Fatalf("subvolumes left after every volume and snapshot was deleted: %v", left)
	}
}

// tenantChildEnv names what the test binary does when started as a tenant's
// process (see tenantChild).
const tenantChildEnv = "HOSTPATH_TEST_TENANT_CHILD"

// tenantChild is the test binary started by runTenantChild: it drops to the
// tenant's user (no groups, and with the uid change no capabilities), then
// in its working directory makes a chain of subvolumes, each inside the
// last, as many as the environment says, with the ioctl btrfs subvolume
// create uses (thousands of btrfs processes would take minutes). It reports
// whether it ran as the child.
func tenantChild() bool {
	n, err := strconv.Atoi(os.Getenv(tenantChildEnv))
	if err != nil {
		return false
	}
	fail := func(err error) bool {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
		return true
	}
	if err := unix.Setgroups(nil); err != nil {
		return fail(err)
	}
	if err := unix.Setresgid(65534, 65534, 65534); err != nil {
		return fail(err)
	}
	if err := unix.Setresuid(65534, 65534, 65534); err != nil {
		return fail(err)
	}
	fd, err := unix.Open(".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fail(err)
	}
	for i := 0; i < n; i++ {
		var args [4096]byte // struct btrfs_ioctl_vol_args: fd, then the name
		copy(args[8:], "s")
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), 0x5000940e, uintptr(unsafe.Pointer(&args))); errno != 0 {
			return fail(fmt.Errorf("subvolume %d: %w", i, errno))
		}
		next, err := unix.Openat(fd, "s", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fail(err)
		}
		unix.Close(fd)
		fd = next
	}
	os.Exit(0)
	return true
}

// tenantSubvolumeChain makes, as the tenant, a chain of n subvolumes each
// inside the last, starting in dir.
func tenantSubvolumeChain(t *testing.T, dir string, n int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), tenantChildEnv+"="+strconv.Itoa(n))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the tenant's chain of %d subvolumes: %v\n%s", n, err, out)
	}
}

// asRootWithoutCaps runs script as uid 0 with no capabilities at all (a
// pod that runs as root in a default, unprivileged container keeps a few;
// this one has none): it owns what root owns, and nothing more.
func asRootWithoutCaps(t *testing.T, dir, script string) string {
	t.Helper()
	for _, tool := range []string{"setpriv", "btrfs"} {
		testutil.RequireCommand(t, tool)
	}
	cmd := exec.Command("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--", "sh", "-c", script)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script as root without capabilities failed: %v\n%s\n%s", err, script, out)
	}
	return string(out)
}

// deleteLeavesNothing deletes volume id and checks that nothing of it is
// left on the btrfs data filesystem at mnt: no subvolume, no entry in
// volumes/, trash/ or partial/.
func deleteLeavesNothing(t *testing.T, e *testEnv, mnt, id string) {
	t.Helper()
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume: %v", err)
	}
	e.d.hostpath.vols.WaitIdle()
	if left := subvolumesUnder(t, mnt); len(left) != 0 {
		t.Fatalf("%d subvolumes left after DeleteVolume, first %q", len(left), left[0])
	}
	for _, dir := range []string{"volumes", "trash", "partial"} {
		if names, err := os.ReadDir(filepath.Join(mnt, "data", dir)); err != nil || len(names) != 0 {
			t.Fatalf("data/%s after DeleteVolume: %v %v, want empty", dir, names, err)
		}
	}
}

// A pod that runs as root, even with no capability at all, owns its
// volume's subvolume and may make it read-only (btrfs property set ro
// true), and a subvolume it made inside too. Before the delete cleared
// the flag, DeleteVolume failed for ever: "move to trash: ... read-only file
// system".
func TestDeleteOfAVolumeItsPodMadeReadOnly(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	id := e.create(t, "v")
	_, target := e.stageAndPublish(t, id, rwo)
	asRootWithoutCaps(t, target, `set -e
		btrfs subvolume create inner >/dev/null
		dd if=/dev/zero of=inner/data bs=1M count=8 2>/dev/null
		btrfs property set -ts inner ro true
		dd if=/dev/zero of=data bs=1M count=8 2>/dev/null
		btrfs property set -ts . ro true`)
	if err := os.WriteFile(filepath.Join(target, "after"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("a write into the volume its pod made read-only: %v, want EROFS", err)
	}
	e.unpublishAndUnstage(t, id)
	deleteLeavesNothing(t, e, mnt, id)
}

// A pod cannot make a delete leave its data behind with a chain of
// subvolumes deeper than any bound (4100 here, each inside the last, made
// with the ioctl in a few seconds) next to a read-only snapshot that holds
// data. Before, the delete gave up on a chain deeper than 4096, and the
// file-by-file fallback stopped with EROFS in the read-only snapshot:
// DeleteVolume said OK, and the data stayed in the trash for ever.
func TestDeleteLeavesNothingOfDeepSubvolumeChains(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	id := e.create(t, "v")
	_, target := e.stageAndPublish(t, id, rwo)
	asTenant(t, target, `set -e
		btrfs subvolume create held >/dev/null
		dd if=/dev/zero of=held/data bs=1M count=64 2>/dev/null
		btrfs subvolume snapshot -r held ro-snap >/dev/null
		mkdir chain`)
	tenantSubvolumeChain(t, filepath.Join(target, "chain"), 4100)
	if n := len(subvolumesUnder(t, mnt)); n < 4103 {
		t.Fatalf("%d subvolumes after the pod made 4102 inside its volume", n)
	}
	e.unpublishAndUnstage(t, id)
	deleteLeavesNothing(t, e, mnt, id)
}
