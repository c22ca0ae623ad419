package driver

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// inlineBoundsEnv is a driver on a 512 MiB ext4 filesystem of its own whose
// inline volumes tweak bounds.
func inlineBoundsEnv(t *testing.T, tweak func(*EphemeralConfig)) *testEnv {
	t.Helper()
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	testutil.CleanupMounts(t, filepath.Join(mnt, "pods"))
	return newEnvWith(t, mnt, func(c *Config) { tweak(&c.Ephemeral) })
}

func (e *testEnv) inlineTarget(handle string) string {
	return filepath.Join(e.dir, "pods", handle, "mount")
}

// publishInline publishes the inline volume handle with attrs and, when it
// is made, unpublishes it at the end of the test.
func (e *testEnv) publishInline(t *testing.T, handle string, attrs map[string]string) error {
	t.Helper()
	target := e.inlineTarget(handle)
	_, err := e.d.NodePublishVolume(ctx, inlineReq(handle, target, attrs))
	if err == nil {
		t.Cleanup(func() {
			e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target})
		})
	}
	return err
}

func (e *testEnv) unpublishInline(t *testing.T, handle string) {
	t.Helper()
	if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: e.inlineTarget(handle)}); err != nil {
		t.Fatal(err)
	}
}

func (e *testEnv) capacity(t *testing.T) int64 {
	t.Helper()
	r, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetAvailableCapacity()
}

// One pod cannot take the node's room with inline volumes: a size past
// --ephemeral-max-size (here, all the node has) is refused, and however
// many it asks for, inline volumes together hold at most --ephemeral-max-share
// of the node's room for volumes. The capacity the scheduler reads stays
// above what the share leaves, a claim of all of it is still made, and
// after it no inline volume is.
func TestOnePodCannotTakeTheNodesRoomWithInlineVolumes(t *testing.T) {
	e := inlineBoundsEnv(t, func(c *EphemeralConfig) { c.MaxSize = 32 << 20; nodeBoundsOnly(c) })
	before := e.capacity(t)
	share := before / 100 * DefaultEphemeralMaxShare

	err := e.publishInline(t, "csi-all", map[string]string{AttrSize: fmt.Sprint(before)})
	wantRefused(t, err, codes.InvalidArgument, "--ephemeral-max-size")

	made := 0
	for ; made < 20; made++ {
		err = e.publishInline(t, fmt.Sprintf("csi-%d", made), map[string]string{AttrSize: "16Mi"})
		if err != nil {
			break
		}
	}
	wantRefused(t, err, codes.ResourceExhausted, "--ephemeral-max-share")
	if held := int64(made) * 16 << 20; made == 0 || held > share || held+16<<20 <= share {
		t.Fatalf("%d inline volumes of 16 MiB made; want as many as fit in the share of %d bytes", made, share)
	}
	// Read by a fresh process: the running one reuses its sum of what
	// volumes may still fill for a moment (reserveTTL), which is then
	// short of what the new images' own filesystems took meanwhile.
	e.restart(t)
	after := e.capacity(t)
	// The state database shares the filesystem and may grow a little.
	if after < before-share-(1<<20) {
		t.Fatalf("capacity fell from %d to %d with inline volumes; the share allows them %d bytes", before, after, share)
	}
	if after < before/100*(100-DefaultEphemeralMaxShare)-(1<<20) {
		t.Fatalf("capacity fell from %d to %d: below %d%% of the room", before, after, 100-DefaultEphemeralMaxShare)
	}
	// A claim held to its size (an image, which sets its room aside) of
	// all the capacity reported is made; then the node's room is what
	// inline volumes hold, already past the share: no new one.
	claim := createReq("claim", after)
	claim.Parameters = map[string]string{ParamLayout: LayoutImage}
	if _, err := e.d.CreateVolume(ctx, claim); err != nil {
		t.Fatalf("a claim of the %d bytes capacity reports: %v", after, err)
	}
	wantRefused(t, e.publishInline(t, "csi-full", map[string]string{AttrSize: "8Mi"}), codes.ResourceExhausted, "--ephemeral-max-share")
	t.Logf("capacity %d -> %d bytes with %d inline volumes of 16 MiB (share %d bytes)", before, after, made, share)
}

// The number of inline volumes on a node is bounded (--ephemeral-max-count),
// counted from the records (a restart counts the same), and a slot is
// given back when its pod's mount goes.
func TestInlineVolumesPerNodeAreBoundedAndReleasedAtUnpublish(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnvWith(t, t.TempDir(), func(c *Config) {
		c.Ephemeral.MaxCount, c.Ephemeral.DefaultSize = 3, 8<<20
		nodeBoundsOnly(&c.Ephemeral)
	})
	testutil.CleanupMounts(t, e.dir)
	for i := 0; i < 3; i++ {
		if err := e.publishInline(t, fmt.Sprintf("csi-%d", i), nil); err != nil {
			t.Fatalf("inline volume %d of 3: %v", i, err)
		}
	}
	wantRefused(t, e.publishInline(t, "csi-3", nil), codes.ResourceExhausted, "--ephemeral-max-count")
	// A publish again of one the node has is not a new volume.
	if err := e.publishInline(t, "csi-0", nil); err != nil {
		t.Fatalf("publish again: %v", err)
	}
	e.restart(t)
	wantRefused(t, e.publishInline(t, "csi-3", nil), codes.ResourceExhausted, "--ephemeral-max-count")
	e.unpublishInline(t, "csi-1")
	if err := e.publishInline(t, "csi-3", nil); err != nil {
		t.Fatalf("an inline volume after another pod's went: %v", err)
	}
}

// Concurrent publishes of new inline volumes cannot together pass a bound:
// the check and the record are one step.
func TestConcurrentInlinePublishesCannotOvershootTheBounds(t *testing.T) {
	run := func(t *testing.T, e *testEnv, n int, attrs map[string]string) (made int, refused []error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				handle := fmt.Sprintf("csi-%d", i)
				target := e.inlineTarget(handle)
				_, err := e.d.NodePublishVolume(ctx, inlineReq(handle, target, attrs))
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					refused = append(refused, err)
					return
				}
				made++
				t.Cleanup(func() {
					e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: handle, TargetPath: target})
				})
			}()
		}
		wg.Wait()
		for _, err := range refused {
			if status.Code(err) != codes.ResourceExhausted {
				t.Errorf("refused with %v; want ResourceExhausted", err)
			}
		}
		return made, refused
	}
	t.Run("share", func(t *testing.T) {
		e := inlineBoundsEnv(t, func(c *EphemeralConfig) { c.MaxSize = 32 << 20; nodeBoundsOnly(c) })
		want := int(e.capacity(t) / 100 * DefaultEphemeralMaxShare / (16 << 20))
		if made, _ := run(t, e, 8, map[string]string{AttrSize: "16Mi"}); made != want {
			t.Fatalf("%d of 8 concurrent inline volumes of 16 MiB made; the share holds %d", made, want)
		}
	})
	t.Run("count", func(t *testing.T) {
		testutil.RequireRoot(t)
		e := newEnvWith(t, t.TempDir(), func(c *Config) {
			c.Ephemeral.MaxCount, c.Ephemeral.DefaultSize = 2, 8<<20
			nodeBoundsOnly(&c.Ephemeral)
		})
		testutil.CleanupMounts(t, e.dir)
		if made, _ := run(t, e, 6, nil); made != 2 {
			t.Fatalf("%d of 6 concurrent inline volumes made; --ephemeral-max-count is 2", made)
		}
	})
	t.Run("count-per-namespace", func(t *testing.T) {
		testutil.RequireRoot(t)
		e := newEnvWith(t, t.TempDir(), func(c *Config) { c.Ephemeral.MaxCount, c.Ephemeral.DefaultSize = 8, 8<<20 })
		testutil.CleanupMounts(t, e.dir)
		if made, _ := run(t, e, 6, nil); made != 2 {
			t.Fatalf("%d of 6 concurrent inline volumes of one namespace made; --ephemeral-max-count-per-namespace is 2 (a quarter of 8)", made)
		}
	})
}

// What a pod may set on an inline volume is what the administrator allows
// (--ephemeral-allowed-attributes, size alone by default); the rest comes
// from the administrator's flags: a missing size is --ephemeral-default-size,
// the root's mode --ephemeral-mount-permissions. An attribute asking what
// the pod gets anyway is not refused. --ephemeral=false refuses new inline
// volumes and still removes those pods have.
func TestInlineVolumeAttributesAPodMayNotSetAreRefused(t *testing.T) {
	e := inlineBoundsEnv(t, func(c *EphemeralConfig) { c.DefaultSize, c.MountPermissions = 32<<20, "0750"; nodeBoundsOnly(c) })
	// A mode the node's does not grant all of.
	for _, attrs := range []map[string]string{{ParamMountPermissions: "0777"}, {ParamMountPermissions: "0770", AttrSize: "8Mi"}} {
		wantRefused(t, e.publishInline(t, "csi-mode", attrs), codes.InvalidArgument, "--ephemeral-allowed-attributes=size")
	}
	wantRefused(t, e.publishInline(t, "csi-layout", map[string]string{ParamLayout: "subvolume"}), codes.InvalidArgument, "always an image")
	// What the node gives anyway, and no size at all.
	if err := e.publishInline(t, "csi-default", map[string]string{ParamMountPermissions: "750", ParamLayout: LayoutImage}); err != nil {
		t.Fatalf("attributes that ask what the node gives: %v", err)
	}
	target := e.inlineTarget("csi-default")
	st, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "csi-default", VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	// An image's filesystem keeps a little of it for itself.
	if total := st.GetUsage()[0].GetTotal(); total > 32<<20 || total < 32<<20*8/10 {
		t.Errorf("an inline volume without a size has %d bytes; want --ephemeral-default-size, 32 MiB", total)
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("inline volume root: %v %v; want --ephemeral-mount-permissions 0750", fi, err)
	}

	// Nothing allowed: a size other than the default is refused too.
	e.tweak = func(c *Config) { c.Ephemeral.AllowedAttributes = []string{} }
	e.restart(t)
	wantRefused(t, e.publishInline(t, "csi-size", map[string]string{AttrSize: "8Mi"}), codes.InvalidArgument, "--ephemeral-allowed-attributes=")

	// Turned off: no new inline volume; the one a pod has still goes.
	e.tweak = func(c *Config) { c.Ephemeral.Disabled = true }
	e.restart(t)
	wantRefused(t, e.publishInline(t, "csi-off", nil), codes.FailedPrecondition, "--ephemeral=false")
	e.unpublishInline(t, "csi-default")
	e.d.hostpath.vols.WaitIdle()
	if vols, _ := e.d.hostpath.vols.List(); len(vols) != 0 {
		t.Fatalf("inline volume data left after its unpublish: %v", vols)
	}
}

// On btrfs an inline volume is held to its size against an unprivileged
// user inside it, whatever it does: it cannot create a nested subvolume
// (which a qgroup would not count) and write past the size through it.
func TestInlineVolumeOnBtrfsHoldsAgainstNestedSubvolumes(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 512)
	cleanupUnder(t, mnt)
	testutil.CleanupMounts(t, filepath.Join(mnt, "pods"))
	e := newEnvWith(t, mnt, func(c *Config) { nodeBoundsOnly(&c.Ephemeral) }) // a small filesystem
	btrfsTool := testutil.RequireCommand(t, "btrfs")
	if err := e.publishInline(t, "csi-escape", map[string]string{AttrSize: "16Mi"}); err != nil {
		t.Fatal(err)
	}
	target := e.inlineTarget("csi-escape")

	// As nobody, in the volume's root (reached through a directory fd:
	// the test's directories are closed to nobody): a nested subvolume,
	// then 200 MiB into it, or into the volume if there is none.
	dir, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	script := `cd /proc/self/fd/3 || exit 1
"$1" subvolume create nested
if [ -d nested ]; then dd if=/dev/zero of=nested/fill bs=1M count=200; else dd if=/dev/zero of=fill bs=1M count=200; fi
sync`
	cmd := exec.Command("/bin/sh", "-c", script, "sh", btrfsTool)
	cmd.ExtraFiles = []*os.File{dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, _ := cmd.CombinedOutput() // the write is to fail
	var used int64
	err = filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if fi, err := d.Info(); err == nil {
			used += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if used > 16<<20 {
		t.Fatalf("an unprivileged user wrote %d bytes into a 16 MiB inline volume:\n%s", used, out)
	}
	t.Logf("%d bytes in the 16 MiB inline volume after the attempt:\n%s", used, out)
	if _, err := os.Stat(filepath.Join(target, "nested")); err == nil {
		t.Errorf("a nested subvolume was made in an inline volume:\n%s", out)
	}
}

// Bounds that make no sense stop the driver at start, naming the flag.
func TestInlineBoundsThatMakeNoSenseStopTheDriver(t *testing.T) {
	for _, tc := range []struct {
		e    EphemeralConfig
		flag string
	}{
		{EphemeralConfig{MaxSize: 4 << 20}, "--ephemeral-max-size"}, // below the least ext4 image
		{EphemeralConfig{MaxSize: 2 << 40}, "--max-volume-size"},
		{EphemeralConfig{MaxSize: 64 << 20, DefaultSize: 128 << 20}, "--ephemeral-default-size"},
		{EphemeralConfig{MaxSharePercent: 101}, "--ephemeral-max-share"},
		{EphemeralConfig{MaxCount: -1}, "--ephemeral-max-count"},
		{EphemeralConfig{MaxSharePerNamespacePercent: 101}, "--ephemeral-max-share-per-namespace"},
		{EphemeralConfig{MaxCount: 8, MaxCountPerNamespace: 9}, "--ephemeral-max-count-per-namespace"},
		{EphemeralConfig{AllowedAttributes: []string{"fsType"}}, "--ephemeral-allowed-attributes"},
		{EphemeralConfig{AllowedAttributes: []string{ParamLayout}}, "always an image"},
		{EphemeralConfig{MountPermissions: "rwx"}, "--ephemeral-mount-permissions"},
	} {
		dir := t.TempDir()
		cfg := Config{DriverName: DefaultDriverName, NodeID: "n", StateDir: dir + "/state", DataDir: dir + "/data",
			Controller: true, Node: true, MaxVolumeSize: 1 << 40, Ephemeral: tc.e}
		d, err := New(cfg)
		if err == nil {
			d.Close()
			t.Errorf("%+v: the driver started; want an error naming %s", tc.e, tc.flag)
		} else if !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%+v: %v; want it to name %s", tc.e, err, tc.flag)
		}
	}
}

// A publish that fails with a code the kubelet takes as final (it then never
// calls NodeUnpublishVolume for it) leaves no inline volume behind: its
// slot, its share and its image are given back at once.
func TestFailedInlinePublishWithNoUnpublishFreesTheSlot(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnvWith(t, t.TempDir(), func(c *Config) { c.Ephemeral.MaxCount, c.Ephemeral.DefaultSize = 1, 8<<20 })
	testutil.CleanupMounts(t, e.dir)
	// A target whose parent is a regular file: no mount can be made there.
	parent := filepath.Join(e.dir, "pods", "broken")
	if err := os.MkdirAll(filepath.Dir(parent), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(parent, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.NodePublishVolume(ctx, inlineReq("csi-a", filepath.Join(parent, "mount"), nil))
	if err == nil || !isFinalForKubelet(status.Code(err)) {
		t.Fatalf("publish at a target under a regular file: %v; want a final error", err)
	}
	e.d.hostpath.vols.WaitIdle()
	if vols, _ := e.d.hostpath.vols.List(); len(vols) != 0 {
		t.Fatalf("a failed inline publish left volume data: %v", vols)
	}
	if use, _ := e.d.hostpath.ephemeralInUse(""); use.count != 0 || use.held != 0 {
		t.Fatalf("a failed inline publish holds %d volumes, %d bytes", use.count, use.held)
	}
	if err := e.publishInline(t, "csi-b", nil); err != nil {
		t.Fatalf("the next pod's inline volume after a failed one (--ephemeral-max-count=1): %v", err)
	}
}

// isFinalForKubelet is the kubelet's isFinalError (pkg/volume/csi/csi_client.go).
func isFinalForKubelet(c codes.Code) bool {
	switch c {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return false
	}
	return true
}

// An inline volume left without a mount (a publish failed with a code the
// kubelet retries, and its pod went before the retry) is removed by the
// sweep once no publish has tried it for a while, giving its slot back; a
// volume a pod mounts is never swept.
func TestUnpublishedInlineVolumeIsSweptAndAMountedOneKept(t *testing.T) {
	testutil.RequireRoot(t)
	const after = 300 * time.Millisecond
	e := newEnvWith(t, t.TempDir(), func(c *Config) {
		c.Ephemeral.MaxCount, c.Ephemeral.DefaultSize, c.Ephemeral.SweepAfter = 1, 8<<20, after
	})
	testutil.CleanupMounts(t, e.dir)
	// What such a publish leaves: made, never mounted.
	iv, err := e.d.hostpath.ephemeralAttributes(nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.hostpath.makeEphemeral(ephemeralName("csi-left"), iv); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, e.publishInline(t, "csi-b", nil), codes.ResourceExhausted, "--ephemeral-max-count")
	deadline := time.Now().Add(20 * after)
	for err = e.publishInline(t, "csi-b", nil); err != nil; err = e.publishInline(t, "csi-b", nil) {
		if time.Now().After(deadline) {
			t.Fatalf("the slot of an inline volume no mount held was not given back after %v: %v", 20*after, err)
		}
		time.Sleep(after / 3)
	}
	time.Sleep(3 * after)
	if err := os.WriteFile(filepath.Join(e.inlineTarget("csi-b"), "f"), []byte("x"), 0o644); err != nil {
		t.Fatalf("a mounted inline volume after sweeps: %v", err)
	}
	if use, _ := e.d.hostpath.ephemeralInUse(""); use.count != 1 {
		t.Fatalf("%d inline volumes after sweeps; want the mounted one", use.count)
	}
}

func inNamespace(ns string, attrs map[string]string) map[string]string {
	out := map[string]string{podNamespaceKey: ns}
	for k, v := range attrs {
		out[k] = v
	}
	return out
}

// One namespace cannot take the inline room of the others: its inline
// volumes number at most --ephemeral-max-count-per-namespace (a quarter of
// --ephemeral-max-count by default) and hold at most
// --ephemeral-max-share-per-namespace (a quarter of what inline volumes may
// hold together) -- counted from the records, across a restart -- while
// another namespace's pods still get theirs. The namespace is the one the
// kubelet names; a publish that names none is refused.
func TestOneNamespaceCannotTakeTheInlineRoomOfOthers(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		testutil.RequireRoot(t)
		e := newEnvWith(t, t.TempDir(), func(c *Config) { c.Ephemeral.MaxCount, c.Ephemeral.DefaultSize = 8, 8<<20 })
		testutil.CleanupMounts(t, e.dir)
		for i := 0; i < 2; i++ {
			if err := e.publishInline(t, fmt.Sprint("csi-a", i), inNamespace("team-a", nil)); err != nil {
				t.Fatalf("inline volume %d of 2 of namespace team-a: %v", i, err)
			}
		}
		wantRefused(t, e.publishInline(t, "csi-a2", inNamespace("team-a", nil)), codes.ResourceExhausted, "--ephemeral-max-count-per-namespace=2")
		e.restart(t)
		wantRefused(t, e.publishInline(t, "csi-a2", inNamespace("team-a", nil)), codes.ResourceExhausted, "--ephemeral-max-count-per-namespace=2")
		if err := e.publishInline(t, "csi-b0", inNamespace("team-b", nil)); err != nil {
			t.Fatalf("another namespace's inline volume while team-a has its most: %v", err)
		}
		e.unpublishInline(t, "csi-a0")
		if err := e.publishInline(t, "csi-a2", inNamespace("team-a", nil)); err != nil {
			t.Fatalf("team-a's inline volume once one of its others went: %v", err)
		}
	})
	t.Run("share", func(t *testing.T) {
		e := inlineBoundsEnv(t, func(c *EphemeralConfig) { c.MaxSize = 32 << 20 })
		nsShare := e.capacity(t) / 100 * DefaultEphemeralMaxShare / 100 * DefaultEphemeralMaxSharePerNamespace
		made := 0
		var err error
		for ; made < 20; made++ {
			if err = e.publishInline(t, fmt.Sprint("csi-a", made), inNamespace("team-a", map[string]string{AttrSize: "8Mi"})); err != nil {
				break
			}
		}
		wantRefused(t, err, codes.ResourceExhausted, "--ephemeral-max-share-per-namespace")
		if held := int64(made) * 8 << 20; made == 0 || held > nsShare || held+8<<20 <= nsShare {
			t.Fatalf("%d inline volumes of 8 MiB made in one namespace; want as many as fit in its share of %d bytes", made, nsShare)
		}
		if err := e.publishInline(t, "csi-b0", inNamespace("team-b", map[string]string{AttrSize: "8Mi"})); err != nil {
			t.Fatalf("another namespace's inline volume while team-a holds its share: %v", err)
		}
	})
	t.Run("no-namespace", func(t *testing.T) {
		testutil.RequireRoot(t)
		e := newEnvWith(t, t.TempDir(), func(c *Config) { c.Ephemeral.DefaultSize = 8 << 20 })
		testutil.CleanupMounts(t, e.dir)
		wantRefused(t, e.publishInline(t, "csi-none", inNamespace("", nil)), codes.FailedPrecondition, "podInfoOnMount")
		// Namespaces not bounded apart: nothing to count it in is needed.
		e.tweak = func(c *Config) { c.Ephemeral.DefaultSize = 8 << 20; nodeBoundsOnly(&c.Ephemeral) }
		e.restart(t)
		if err := e.publishInline(t, "csi-none", inNamespace("", nil)); err != nil {
			t.Fatalf("a publish naming no namespace with bounds per node alone: %v", err)
		}
	})
}
