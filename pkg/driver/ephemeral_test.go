package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// An inline volume: made at the pod's publish with the size and mode its
// attributes ask for, published again idempotently, measured by the
// kubelet's handle, never listed by the controller, and gone (data and
// record) at the unpublish.
func TestInlineEphemeralVolume(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnvWith(t, t.TempDir(), func(c *Config) {
		c.Ephemeral.AllowedAttributes = []string{AttrSize, ParamMountPermissions}
	})
	testutil.CleanupMounts(t, e.dir)
	const handle = "csi-8f1c0e0a7d3e2b1f6a5c4d3e2b1f0a9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"
	target := e.dir + "/pods/web/volumes/scratch/mount"
	attrs := map[string]string{AttrSize: "64Mi", ParamMountPermissions: "0750"}

	for i := 0; i < 2; i++ {
		if _, err := e.d.NodePublishVolume(ctx, inlineReq(handle, target, attrs)); err != nil {
			t.Fatalf("publish #%d: %v", i, err)
		}
	}
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("scratch"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("inline volume root: %v %v, want mode 0750", fi, err)
	}
	st, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: handle, VolumePath: target})
	if err != nil {
		t.Fatalf("stats by the kubelet's handle: %v", err)
	}
	// An image reports its filesystem, which keeps a little of the 64 MiB
	// for itself.
	total := st.GetUsage()[0].GetTotal()
	if total > 64<<20 || total < 64<<20*8/10 {
		t.Fatalf("stats by the kubelet's handle: %v, want a total of at most 64 MiB and at least 80%% of it", st)
	}
	vols, _ := e.d.hostpath.vols.List()
	if len(vols) != 1 {
		t.Fatalf("%d volume directories, want 1", len(vols))
	}
	// Always an image: nothing else holds against the pod inside it.
	if v, _ := e.d.hostpath.ephemeralVolume(handle); v == nil || v.Layout != LayoutImage || v.Limit != hostpath.EnforceImage {
		t.Fatalf("inline volume: %+v, want an image", v)
	}
	if l, _ := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{}); len(l.GetEntries()) != 0 {
		t.Fatalf("the controller lists an inline volume: %v", l)
	}

	for _, bad := range []map[string]string{{"fsType": "ext4"}, {AttrSize: "lots"}, {AttrSize: "0"}, {AttrSize: "2Ti"}, {ParamMountPermissions: "rwx"}, {ParamLayout: "subvolume"}} {
		_, err := e.d.NodePublishVolume(ctx, inlineReq("csi-other", e.dir+"/pods/x/mount", bad))
		if c := status.Code(err); c != codes.InvalidArgument {
			t.Errorf("attributes %v: %v, want InvalidArgument", bad, err)
		}
		if bad[AttrSize] == "0" && !strings.Contains(err.Error(), "must be positive") {
			t.Errorf("size 0: %v; want it to say the size must be positive", err)
		}
	}
	_, err = e.d.CreateVolume(ctx, createReq(ephemeralNamePrefix+"x", 1<<20))
	wantCode(t, err, codes.InvalidArgument)

	for i := 0; i < 2; i++ {
		if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target}); err != nil {
			t.Fatalf("unpublish #%d: %v", i, err)
		}
	}
	e.d.hostpath.vols.WaitIdle()
	if vols, _ := e.d.hostpath.vols.List(); len(vols) != 0 {
		t.Fatalf("inline volume data left after unpublish: %v", vols)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Fatalf("target left: %v", err)
	}
	if v, _ := e.d.hostpath.ephemeralVolume(handle); v != nil {
		t.Fatalf("record left: %+v", v)
	}
}

// Crash safety: an inline volume made but not mounted when the driver died
// is removed at start-up; one a pod still mounts survives the restart and
// goes at its unpublish.
func TestInlineEphemeralAcrossRestart(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	iv, err := e.d.hostpath.ephemeralAttributes(map[string]string{AttrSize: "1Mi"}, "")
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := e.d.hostpath.makeEphemeral(ephemeralName("csi-crashed"), iv) // made, never published
	if err != nil {
		t.Fatal(err)
	}
	target := e.dir + "/pods/live/mount"
	if _, err := e.d.NodePublishVolume(ctx, inlineReq("csi-live", target, nil)); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(target, "kept"), []byte("x"), 0o644)
	e.restart(t)
	if ok, _ := e.d.store.VolumeExists(orphan.ID); ok {
		t.Fatal("an inline volume no pod mounts survived the restart")
	}
	if _, err := os.ReadFile(filepath.Join(target, "kept")); err != nil {
		t.Fatalf("a mounted inline volume lost its data in a restart: %v", err)
	}
	if m, _ := mountutil.IsMountPoint(target); !m {
		t.Fatal("a mounted inline volume was unmounted by a restart")
	}
	if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-live", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	e.d.hostpath.vols.WaitIdle()
	if vols, _ := e.d.hostpath.vols.List(); len(vols) != 0 {
		t.Fatalf("volume directories left: %v", vols)
	}
}

// A driver restart while a pod mounts an inline image volume: start-up must
// not count (or log) the image's loop device as one "no stage holds", and
// detach it: an inline image is held by its publication.
func TestRestartLeavesAnInlineImageDeviceAlone(t *testing.T) {
	e := inlineImageEnv(t)
	target := filepath.Join(e.dir, "pods", "web", "mount")
	if _, err := e.d.NodePublishVolume(ctx, inlineReq("csi-web", target, map[string]string{AttrSize: "32Mi"})); err != nil {
		t.Fatal(err)
	}
	defer func() { // on the driver running then
		e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-web", TargetPath: target})
	}()
	e.restart(t)
	if body := scrape(t, e.d); strings.Contains(body, `action="detached_loop_device"`) {
		t.Errorf("start-up detached the loop device of a mounted inline image volume:\n%s", grepLines(body, "reconcile_actions"))
	}
	if err := os.WriteFile(filepath.Join(target, "after-restart"), []byte("x"), 0o644); err != nil {
		t.Fatalf("write to the inline volume after the restart: %v", err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// inlineImageEnv is a driver on a filesystem of its own, whose inline
// volumes (images, as everywhere) leave nothing behind.
func inlineImageEnv(t *testing.T) *testEnv {
	t.Helper()
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	testutil.CleanupMounts(t, filepath.Join(mnt, "pods"))
	return newEnvWith(t, mnt, func(c *Config) { nodeBoundsOnly(&c.Ephemeral) }) // a small filesystem
}

// A pod may mount its inline volume read-only (`readOnly: true` on the
// csi volume). A directory inline volume publishes read-only; an image one
// must too, rather than failing with INTERNAL at every kubelet retry
// (a blank image cannot be formatted through a read-only device, and the
// root's mode cannot be set on a read-only mount).
func TestReadOnlyInlineImagePublishesReadOnly(t *testing.T) {
	e := inlineImageEnv(t)
	target := filepath.Join(e.dir, "pods", "ro", "mount")
	req := inlineReq("csi-ro", target, map[string]string{AttrSize: "32Mi"})
	req.Readonly = true
	if _, err := e.d.NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("read-only inline image volume: %v", err)
	}
	defer e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-ro", TargetPath: target})
	if err := os.WriteFile(filepath.Join(target, "f"), nil, 0o644); err == nil {
		t.Fatal("a read-only inline volume took a write")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&unix.ST_RDONLY == 0 {
		t.Error("the inline volume's mount is not read-only")
	}
	// The root has the mode a read-write one gets (mountPermissions).
	if fi, err := os.Stat(target); err != nil {
		t.Fatal(err)
	} else if want := DefaultMountPermissions; fi.Mode().Perm() != want {
		t.Errorf("the read-only volume's root has mode %v, want %v", fi.Mode().Perm(), want)
	}
}

// inlineTotal is the size the inline volume at target reports.
func inlineTotal(t *testing.T, e *testEnv, handle, target string) int64 {
	t.Helper()
	st, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: handle, VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	return st.GetUsage()[0].GetTotal()
}

// An inline volume whose pod names no size is 256 MiB by default
// (--ephemeral-default-size), so a small node admits more than a few.
func TestInlineVolumeWithoutASizeIs256MiBByDefault(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	target := filepath.Join(e.dir, "pods", "nosize", "mount")
	if _, err := e.d.NodePublishVolume(ctx, inlineReq("csi-nosize", target, nil)); err != nil {
		t.Fatal(err)
	}
	defer e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-nosize", TargetPath: target})
	if total := inlineTotal(t, e, "csi-nosize", target); total > 256<<20 || total < 256<<20*8/10 {
		t.Fatalf("an inline volume without a size has %d bytes; want 256 MiB", total)
	}
}

// Pod templates written for earlier releases still start: layout:
// directory gets an image (the same to the pod, and held to its size), and
// a mountPermissions pods may no longer set gets the node's mode when that
// grants all it asks. A mode it does not grant is refused, naming the flag.
func TestInlinePodTemplatesOfEarlierReleasesStillStart(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnvWith(t, t.TempDir(), func(c *Config) { c.Ephemeral.DefaultSize = 32 << 20 }) // node's mode 0777
	testutil.CleanupMounts(t, e.dir)
	target := filepath.Join(e.dir, "pods", "old", "mount")
	old := map[string]string{ParamLayout: LayoutDirectory, ParamMountPermissions: "0750"}
	if _, err := e.d.NodePublishVolume(ctx, inlineReq("csi-old", target, old)); err != nil {
		t.Fatalf("a pod template of an earlier release (%v): %v", old, err)
	}
	defer func() { // on the driver running then
		e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-old", TargetPath: target})
	}()
	if v, _ := e.d.hostpath.ephemeralVolume("csi-old"); v == nil || v.Layout != LayoutImage {
		t.Fatalf("layout: directory made %+v; want an image", v)
	}
	if total := inlineTotal(t, e, "csi-old", target); total > 32<<20 {
		t.Fatalf("layout: directory reports %d bytes; want its own 32 MiB image", total)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o777 {
		t.Fatalf("root of an inline volume asking 0750 on a node giving 0777: %v %v; want 0777", fi, err)
	}

	e.tweak = func(c *Config) { c.Ephemeral.DefaultSize, c.Ephemeral.MountPermissions = 32<<20, "0750" }
	e.restart(t)
	_, err := e.d.NodePublishVolume(ctx, inlineReq("csi-wide", filepath.Join(e.dir, "pods", "wide", "mount"), map[string]string{ParamMountPermissions: "0777"}))
	wantRefused(t, err, codes.InvalidArgument, "--ephemeral-allowed-attributes")
}

// An inline volume has the filesystem its pod asks for (the csi volume's
// fsType), ext4 or xfs; without one, --image-fstype. Another is refused.
func TestInlineVolumeHasTheFilesystemItsPodAsks(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	for _, tc := range []struct {
		fsType string
		magic  int64
	}{{"", unix.EXT4_SUPER_MAGIC}, {"ext4", unix.EXT4_SUPER_MAGIC}, {"xfs", unix.XFS_SUPER_MAGIC}} {
		handle := "csi-fs-" + tc.fsType
		target := filepath.Join(e.dir, "pods", handle, "mount")
		req := inlineReq(handle, target, map[string]string{AttrSize: "32Mi"})
		req.VolumeCapability = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
		req.VolumeCapability.GetMount().FsType = tc.fsType
		if _, err := e.d.NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("fsType %q: %v", tc.fsType, err)
		}
		defer e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target})
		var st unix.Statfs_t
		if err := unix.Statfs(target, &st); err != nil {
			t.Fatal(err)
		}
		if int64(st.Type) != tc.magic {
			t.Errorf("fsType %q: the inline volume's filesystem has magic %#x; want %#x", tc.fsType, st.Type, tc.magic)
		}
	}
	req := inlineReq("csi-fs-btrfs", filepath.Join(e.dir, "pods", "btrfs", "mount"), nil)
	req.VolumeCapability = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	req.VolumeCapability.GetMount().FsType = "btrfs"
	_, err := e.d.NodePublishVolume(ctx, req)
	if err == nil {
		e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
	}
	wantRefused(t, err, codes.InvalidArgument, "ext4 or xfs")
}
