package driver

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/loop"
	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// fill asks for n bytes in the volume published at target: allocated in a
// file for a filesystem, written at offset n-4096 of a block device. It
// returns the kernel's answer.
func fill(target string, n int64, block bool) error {
	if block {
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		w, err := f.WriteAt(make([]byte, 4096), n-4096)
		if err == nil && w < 4096 {
			err = unix.ENOSPC
		}
		if err == nil {
			err = f.Sync()
		}
		return err
	}
	p := filepath.Join(target, "fill")
	defer os.Remove(p)
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
		return err
	}
	return f.Sync()
}

func refused(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG)
}

// A volume holds its capacity and not a byte more where anything can hold
// it (a filesystem image, a block device's file), says so in its volume
// context, and grows online through NodeExpandVolume: the write refused
// before the expansion succeeds after it. Where nothing can hold a
// directory (ext4 here has no project quotas; on btrfs a pod escapes any
// qgroup limit), the volume says so instead of pretending. ext4 cannot grow
// online here (no CAP_SYS_RESOURCE): the expansion answers
// FAILED_PRECONDITION and the next stage grows it.
func TestSizesHold(t *testing.T) {
	image := map[string]string{ParamLayout: LayoutImage}
	xfsCap := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	xfsCap.GetMount().FsType = "xfs"
	tests := []struct {
		name      string
		dataFS    string
		params    map[string]string
		cap       *csi.VolumeCapability
		size      int64
		limit     string
		grows     bool // online, here
		usedStats bool // NodeGetVolumeStats reports what the limit counts
	}{
		{"directory on ext4: nothing holds it", "ext4", nil, rwo, 16 << 20, hostpath.EnforceNone, true, true},
		// A qgroup cannot hold a directory on btrfs against its pod
		// (TestBtrfsVolumeSaidHeldHoldsAgainstNestedSubvolumes); an
		// image there does.
		{"directory on btrfs: nothing holds it", "btrfs", nil, rwo, 16 << 20, hostpath.EnforceNone, true, true},
		{"xfs image on btrfs", "btrfs", image, xfsCap, 320 << 20, hostpath.EnforceImage, true, true},
		{"ext4 image", "ext4", image, rwo, 32 << 20, hostpath.EnforceImage, false, true},
		{"xfs image", "ext4", image, xfsCap, 320 << 20, hostpath.EnforceImage, true, true},
		{"block", "ext4", nil, blockCap, 16 << 20, hostpath.EnforceImage, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, tc.dataFS, 1024)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)
			block := tc.cap.GetBlock() != nil
			req := createReq("v", tc.size)
			req.Parameters, req.VolumeCapabilities = tc.params, []*csi.VolumeCapability{tc.cap}
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			id := r.GetVolume().GetVolumeId()
			if got := r.GetVolume().GetVolumeContext()[ContextLimit]; got != tc.limit {
				t.Fatalf("volume context says the size is held by %q, want %q", got, tc.limit)
			}
			_, target := e.stageAndPublish(t, id, tc.cap)

			over := tc.size + 8<<20
			err = fill(target, over, block)
			if tc.limit == hostpath.EnforceNone {
				if err != nil {
					t.Fatalf("a write past an unheld directory's capacity: %v", err)
				}
			} else if !refused(err) {
				t.Fatalf("%d bytes in a volume of %d: %v, want ENOSPC or EDQUOT", over, tc.size, err)
			}
			if st, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); err != nil {
				t.Fatal(err)
			} else if total := st.GetUsage()[0].GetTotal(); total > tc.size || total < tc.size*7/10 {
				t.Fatalf("stats total %d for a volume of %d", total, tc.size)
			}

			grown := 2 * tc.size
			_, err = e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
				CapacityRange: &csi.CapacityRange{RequiredBytes: grown}})
			if !tc.grows {
				wantCode(t, err, codes.FailedPrecondition)
				e.unpublishAndUnstage(t, id)
				e.stageAndPublish(t, id, tc.cap) // the stage grows it offline
				_, err = e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
					CapacityRange: &csi.CapacityRange{RequiredBytes: grown}})
			}
			if err != nil {
				t.Fatalf("NodeExpandVolume: %v", err)
			}
			if err := fill(target, over, block); err != nil {
				t.Fatalf("the same write after growing to %d bytes: %v", grown, err)
			}
			// A smaller size is already there (the spec's OK): it never shrinks.
			if r, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
				CapacityRange: &csi.CapacityRange{RequiredBytes: tc.size}}); err != nil || r.GetCapacityBytes() != grown {
				t.Fatalf("a smaller size: %v %v, want OK with %d bytes", r, err, grown)
			}
			e.restart(t)
			if v, _ := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); v.GetVolume().GetCapacityBytes() != grown {
				t.Fatalf("capacity after a restart: %d, want %d", v.GetVolume().GetCapacityBytes(), grown)
			}
			e.unpublishAndUnstage(t, id)
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
			e.d.hostpath.vols.WaitIdle()
			if left := testutil.LoopDevicesUnder(t, mnt); len(left) != 0 {
				t.Fatalf("loop devices left after delete: %v", left)
			}
		})
	}
}

// A block volume: the pod gets a device at its target; what it wrote is
// there after a driver restart (the device stays attached), and after a
// reboot (devices and mounts gone: start-up attaches the staged volume
// again, and the kubelet's publish finds it). Nothing leaks a loop device.
func TestBlockVolumeAcrossRestartAndReboot(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 256)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	req := createReq("db", 8<<20)
	req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	staging, target := e.stageAndPublish(t, id, blockCap)
	if fi, err := os.Stat(target); err != nil || fi.Mode()&os.ModeDevice == 0 {
		t.Fatalf("target %v %v, want a block device", fi, err)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	writeAt := func(off int64) {
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	readBack := func(when string) {
		t.Helper()
		got := make([]byte, len(data))
		f, err := os.Open(target)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		defer f.Close()
		if _, err := f.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: the block volume does not hold what was written (%v)", when, err)
		}
	}
	writeAt(3 << 20)
	e.restart(t)
	readBack("after a driver restart")

	// A reboot: every mount and loop device of the volume is gone.
	e.d.Close()
	if err := mountutil.Unmount(target, false); err != nil {
		t.Fatal(err)
	}
	if err := e.d.hostpath.vols.DetachBlock(id); err != nil {
		t.Fatal(err)
	}
	if left := testutil.LoopDevicesUnder(t, mnt); len(left) != 0 {
		t.Fatalf("devices still attached in the simulated reboot: %v", left)
	}
	e.start(t)
	if devs, _ := e.d.hostpath.vols.BlockDevices(id); len(devs) != 1 {
		t.Fatalf("start-up attached the staged block volume %d times, want once", len(devs))
	}
	if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, blockCap)); err != nil {
		t.Fatalf("the kubelet's publish after a reboot: %v", err)
	}
	readBack("after a reboot")
	e.unpublishAndUnstage(t, id)
	if left := testutil.LoopDevicesUnder(t, mnt); len(left) != 0 {
		t.Fatalf("devices left after unstage: %v", left)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

// A snapshot of a mounted image volume is one point in time while a pod
// writes (its filesystem is frozen for the copy): the restored volume mounts
// cleanly and holds a prefix of what was written, record for record. So
// does a group snapshot of two image volumes being written, which is allowed
// where directories being written are refused.
func TestImageSnapshotsWhileWritten(t *testing.T) {
	for _, dataFS := range []string{"ext4", "xfs"} {
		t.Run(dataFS, func(t *testing.T) {
			var mkfs []string
			if dataFS == "xfs" {
				mkfs = []string{"-m", "reflink=1"}
			}
			mnt := testutil.LoopFS(t, dataFS, 1024, mkfs...)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)
			var vols, targets []string
			for _, name := range []string{"a", "b"} {
				req := createReq(name, 32<<20)
				req.Parameters = map[string]string{ParamLayout: LayoutImage}
				r, err := e.d.CreateVolume(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				vols = append(vols, r.GetVolume().GetVolumeId())
				_, target := e.stageAndPublish(t, vols[len(vols)-1], rwo)
				targets = append(targets, target)
			}
			stop := make(chan struct{})
			done := make(chan error, 2)
			for _, target := range targets {
				go func(target string) { done <- appendRecords(target, stop) }(target)
			}
			snap, err := e.d.CreateSnapshot(ctx, snapReq("one", vols[0]))
			if err != nil {
				t.Fatal(err)
			}
			group, err := e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: vols})
			if err != nil {
				t.Fatalf("a group snapshot of image volumes being written: %v", err)
			}
			close(stop)
			for range targets {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			ids := []string{snap.GetSnapshot().GetSnapshotId()}
			for _, m := range group.GetGroupSnapshot().GetSnapshots() {
				ids = append(ids, m.GetSnapshotId())
			}
			for i, sid := range ids {
				// A restore is a volume of its source's kind; asked as a
				// directory, the source is incompatible.
				_, err := e.d.CreateVolume(ctx, fromSnapshot(fmt.Sprint("dir-", i), 0, sid))
				wantCode(t, err, codes.InvalidArgument)
				r, err := e.d.CreateVolume(ctx, withParams(fromSnapshot(fmt.Sprint("image-", i), 0, sid), map[string]string{ParamLayout: LayoutImage}))
				if err != nil {
					t.Fatal(err)
				}
				rid := r.GetVolume().GetVolumeId()
				_, target := e.stageAndPublish(t, rid, rwo)
				n, err := checkRecords(target)
				if err != nil {
					t.Fatalf("snapshot %s: %v", sid, err)
				}
				t.Logf("snapshot %d holds %d whole records", i, n)
				e.unpublishAndUnstage(t, rid)
			}
			for _, id := range vols {
				e.unpublishAndUnstage(t, id)
			}
		})
	}
}

func withParams(r *csi.CreateVolumeRequest, p map[string]string) *csi.CreateVolumeRequest {
	r.Parameters = p
	return r
}

// appendRecords appends numbered 4 KiB records to a file in target, each
// fsync'd, until stop.
func appendRecords(target string, stop <-chan struct{}) error {
	f, err := os.OpenFile(filepath.Join(target, "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		if _, err := f.Write(record(i)); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
	}
}

func record(i int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("%08d", i)), 512)
}

// checkRecords says how many whole records the log in target holds, or
// what is wrong with it.
func checkRecords(target string) (int, error) {
	data, err := os.ReadFile(filepath.Join(target, "log"))
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := len(data) / 4096
	for i := 0; i < n; i++ {
		if !bytes.Equal(data[i*4096:(i+1)*4096], record(i)) {
			return i, fmt.Errorf("record %d is torn or out of order", i)
		}
	}
	return n, nil
}

// GetCapacity and CreateVolume set aside what volumes held to their size may
// still fill: a sparse image takes nearly nothing on disk, but its capacity
// is promised.
func TestCapacityCountsWhatIsPromised(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 1024)
	e := newEnvOn(t, mnt)
	before, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	req := createReq("big", 512<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	if _, err := e.d.CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	after, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if drop := before.GetAvailableCapacity() - after.GetAvailableCapacity(); drop < 500<<20 {
		t.Fatalf("GetCapacity dropped by %d bytes after a 512 MiB image volume", drop)
	}
	req = createReq("second", 512<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	_, err = e.d.CreateVolume(ctx, req)
	wantCode(t, err, codes.ResourceExhausted)
	// A delete gives the room back at once.
	big, _ := e.d.store.GetVolumeByName("big")
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: big.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.CreateVolume(ctx, req); err != nil {
		t.Fatalf("a create right after a delete freed its room: %v", err)
	}
}

// A snapshot of an image volume that waits for a copy slot while its
// volume is unstaged freezes nothing when it runs: the staging path is then
// a plain directory of the node's own filesystem, which must never be
// frozen (a review found the data filesystem frozen for good).
func TestSnapshotNeverFreezesAStaleStagingPath(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := &testEnv{dir: mnt, stateDir: filepath.Join(mnt, "state"), dataDir: filepath.Join(mnt, "data")}
	cfg := e.config()
	cfg.MaxConcurrentCopies = 1
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	t.Cleanup(func() { e.d.Close() })
	req := createReq("img", 32<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	img := r.GetVolume().GetVolumeId()
	busy := e.create(t, "busy")
	e.stageAndPublish(t, img, rwo)

	g := newGate(e)
	go e.d.CreateSnapshot(ctx, snapReq("holds-the-slot", busy))
	g.wait(t)
	done := make(chan error, 1)
	go func() { _, err := e.d.CreateSnapshot(ctx, snapReq("of-image", img)); done <- err }()
	for e.d.jobs.running() < 2 {
		time.Sleep(time.Millisecond)
	}
	e.unpublishAndUnstage(t, img) // while the snapshot waits for its slot
	close(g.open)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the snapshot never finished: is the data filesystem frozen?")
	}
	written := make(chan error, 1)
	go func() { written <- os.WriteFile(filepath.Join(mnt, "after"), []byte("x"), 0o644) }()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		exec.Command("fsfreeze", "-u", mnt).Run()
		t.Fatal("the data filesystem was left frozen")
	}
}

// Concurrent creates of different names never promise together more room
// than the node has.
func TestConcurrentCreatesDoNotOvercommit(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 1024)
	e := newEnvOn(t, mnt)
	c, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatal(err)
	}
	const size = 200 << 20
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		go func(i int) {
			req := createReq(fmt.Sprint("v", i), size)
			req.Parameters = map[string]string{ParamLayout: LayoutImage}
			_, err := e.d.CreateVolume(ctx, req)
			errs <- err
		}(i)
	}
	made := 0
	for i := 0; i < 10; i++ {
		if err := <-errs; err == nil {
			made++
		} else if status.Code(err) != codes.ResourceExhausted {
			t.Fatal(err)
		}
	}
	if int64(made)*size > c.GetAvailableCapacity() {
		t.Fatalf("%d volumes of %d bytes promised on %d bytes available", made, size, c.GetAvailableCapacity())
	}
	if made == 0 {
		t.Fatal("no volume made at all")
	}
}

// A reflinked clone of a full block volume takes no space yet, but it will
// when rewritten: its capacity is set aside all the same.
func TestCloneSetsAsideItsRoom(t *testing.T) {
	mnt := testutil.LoopFS(t, "xfs", 1024, "-m", "reflink=1")
	e := newEnvOn(t, mnt)
	req := createReq("src", 128<<20)
	req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	src := r.GetVolume().GetVolumeId()
	f, err := os.OpenFile(e.d.hostpath.vols.ImagePath(src), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(make([]byte, 128<<20), 0)
	f.Sync()
	f.Close()
	time.Sleep(reserveTTL) // a fresh sum
	before, _ := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	clone := fromVolume("clone", 0, src)
	clone.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	if _, err := e.d.CreateVolume(ctx, clone); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reserveTTL) // the sum sees the clone as it is on disk
	after, _ := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if drop := before.GetAvailableCapacity() - after.GetAvailableCapacity(); drop < 120<<20 {
		t.Fatalf("a reflinked clone of 128 MiB set aside %d bytes", drop)
	}
}

// A clone of an xfs image volume is staged on the node beside its source
// (a copy has the same filesystem UUID, which xfs refuses by default).
func TestXFSCloneBesideItsSource(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 1024)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	c.GetMount().FsType = "xfs"
	req := createReq("src", 320<<20)
	req.Parameters, req.VolumeCapabilities = map[string]string{ParamLayout: LayoutImage}, []*csi.VolumeCapability{c}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	src := r.GetVolume().GetVolumeId()
	_, target := e.stageAndPublish(t, src, c)
	os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o644)
	clone := fromVolume("clone", 0, src)
	clone.Parameters, clone.VolumeCapabilities = req.Parameters, req.VolumeCapabilities
	r, err = e.d.CreateVolume(ctx, clone)
	if err != nil {
		t.Fatal(err)
	}
	cid := r.GetVolume().GetVolumeId()
	_, ctarget := e.stageAndPublish(t, cid, c)
	if got, err := os.ReadFile(filepath.Join(ctarget, "f")); err != nil || string(got) != "x" {
		t.Fatalf("the clone beside its source: %q %v", got, err)
	}
	e.unpublishAndUnstage(t, cid)
	e.unpublishAndUnstage(t, src)
}

// Start-up detaches loop devices that no stage holds: one a kill left
// between an attach and its record, and one whose volume file was deleted.
func TestLeakedLoopDevicesDetachedAtStart(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 256)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	var volIDs []string
	for _, name := range []string{"kept", "deleted"} {
		req := createReq(name, 8<<20)
		req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
		r, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		volIDs = append(volIDs, r.GetVolume().GetVolumeId())
		if _, err := e.d.hostpath.vols.AttachBlock(volIDs[len(volIDs)-1], false); err != nil {
			t.Fatal(err)
		}
	}
	e.d.Close()
	if err := os.Remove(e.d.hostpath.vols.ImagePath(volIDs[1])); err != nil {
		t.Fatal(err)
	}
	if n := len(testutil.LoopDevicesUnder(t, filepath.Join(mnt, "data"))); n != 2 {
		t.Fatalf("%d devices attached before the restart, want 2", n)
	}
	e.start(t)
	if left := testutil.LoopDevicesUnder(t, filepath.Join(mnt, "data")); len(left) != 0 {
		t.Fatalf("devices left attached after start-up: %v", left)
	}
}

// A staged image volume whose data went missing (volume health says
// DATA_LOSS) can still be unpublished and unstaged: the pod must be able to
// go, and its mount and loop device with it.
func TestUnstageOfAnImageWhoseDataIsGone(t *testing.T) {
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	req := createReq("img", 32<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	e.stageAndPublish(t, id, rwo)
	if err := os.RemoveAll(e.d.hostpath.vols.Path(id)); err != nil {
		t.Fatal(err)
	}
	e.unpublishAndUnstage(t, id)
	if devs, err := loop.List(); err != nil {
		t.Fatal(err)
	} else {
		for _, d := range devs {
			if strings.HasPrefix(d.BackingFile, mnt+"/") {
				t.Errorf("loop device %s still holds %s after the unstage", d.Path, d.BackingFile)
			}
		}
	}
}

// A claim smaller than an image's filesystem minimum gets a volume of that
// minimum; its snapshots and clones are accepted at the claim's own size
// (csi-provisioner refuses a restore asking less than the snapshot's
// size_bytes, and tools restore at the source claim's size), into a volume
// never smaller than the source. Below the claim's size it is OUT_OF_RANGE.
func TestImageRaisedToItsMinimumRestoresAtTheClaimsSize(t *testing.T) {
	testutil.RequireMkfs(t, "ext4")
	dir := t.TempDir()
	cleanupUnder(t, dir)
	e := newEnvWith(t, dir, nil)
	minimum, err := hostpath.ImageMinSize("ext4")
	if err != nil {
		t.Fatal(err)
	}
	image := func(r *csi.CreateVolumeRequest) *csi.CreateVolumeRequest {
		r.Parameters = map[string]string{ParamLayout: LayoutImage}
		return r
	}
	const asked = 1 << 20
	made, err := e.d.CreateVolume(ctx, image(createReq("src", asked)))
	if err != nil {
		t.Fatal(err)
	}
	src := made.GetVolume().GetVolumeId()
	if n := made.GetVolume().GetCapacityBytes(); n != minimum {
		t.Fatalf("capacity %d, want the ext4 image minimum %d", n, minimum)
	}
	snap, err := e.d.CreateSnapshot(ctx, snapReq("snap", src))
	if err != nil {
		t.Fatal(err)
	}
	snapID := snap.GetSnapshot().GetSnapshotId()
	if n := snap.GetSnapshot().GetSizeBytes(); n != asked {
		t.Fatalf("snapshot size_bytes %d, want the claim's %d", n, asked)
	}
	listed, err := e.d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snapID})
	if err != nil || len(listed.GetEntries()) != 1 || listed.GetEntries()[0].GetSnapshot().GetSizeBytes() != asked {
		t.Fatalf("ListSnapshots: %v %v, want size_bytes %d", listed, err, asked)
	}

	for _, tc := range []struct {
		name     string
		req      *csi.CreateVolumeRequest
		wantCode codes.Code
	}{
		{"restore at the claim's size", fromSnapshot("r-claim", asked, snapID), codes.OK},
		{"restore with nothing asked", fromSnapshot("r-none", 0, snapID), codes.OK},
		{"restore below the claim's size", fromSnapshot("r-less", asked/2, snapID), codes.OutOfRange},
		{"restore with a limit under the minimum", func() *csi.CreateVolumeRequest {
			r := fromSnapshot("r-limit", asked, snapID)
			r.CapacityRange.LimitBytes = minimum / 2
			return r
		}(), codes.OutOfRange},
		{"clone at the claim's size", fromVolume("c-claim", asked, src), codes.OK},
		{"clone below the claim's size", fromVolume("c-less", asked/2, src), codes.OutOfRange},
		{"restore larger than the minimum", fromSnapshot("r-more", 2*minimum, snapID), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.d.CreateVolume(ctx, image(tc.req))
			if tc.wantCode != codes.OK {
				wantCode(t, err, tc.wantCode)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := max(minimum, tc.req.GetCapacityRange().GetRequiredBytes())
			if n := got.GetVolume().GetCapacityBytes(); n != want {
				t.Fatalf("capacity %d, want %d", n, want)
			}
			if n, _ := e.d.hostpath.vols.ImageSize(got.GetVolume().GetVolumeId()); n != want {
				t.Fatalf("image file of %d bytes, want %d", n, want)
			}
			// A retry of the same call is the same volume.
			again, err := e.d.CreateVolume(ctx, image(tc.req))
			if err != nil || again.GetVolume().GetVolumeId() != got.GetVolume().GetVolumeId() {
				t.Fatalf("retry: %v %v", again, err)
			}
			// And a snapshot of it restores at its own claim's size too.
			s, err := e.d.CreateSnapshot(ctx, snapReq("of-"+tc.req.GetName(), got.GetVolume().GetVolumeId()))
			if err != nil {
				t.Fatal(err)
			}
			wantSize := want
			if r := tc.req.GetCapacityRange().GetRequiredBytes(); r > 0 && r < want {
				wantSize = r
			}
			if n := s.GetSnapshot().GetSizeBytes(); n != wantSize {
				t.Fatalf("snapshot of the restore: size_bytes %d, want %d", n, wantSize)
			}
		})
	}

	// Grown, the volume's claim asks its new size: a snapshot now restores
	// at that size, no less.
	_, target := e.stageAndPublish(t, src, rwo)
	grown := minimum + 4<<20
	_, err = e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: src, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: grown}})
	if err != nil && status.Code(err) != codes.FailedPrecondition { // ext4 grows at the next stage without CAP_SYS_RESOURCE
		t.Fatal(err)
	}
	e.unpublishAndUnstage(t, src)
	after, err := e.d.CreateSnapshot(ctx, snapReq("after-growth", src))
	if err != nil {
		t.Fatal(err)
	}
	if n := after.GetSnapshot().GetSizeBytes(); n != grown {
		t.Fatalf("snapshot after growth: size_bytes %d, want %d", n, grown)
	}
	_, err = e.d.CreateVolume(ctx, image(fromSnapshot("after-small", asked, after.GetSnapshot().GetSnapshotId())))
	wantCode(t, err, codes.OutOfRange)
}

// A block volume grows in whole sectors: grown to a claim of 2M (2000000
// bytes, not a multiple of 4096), its snapshots and clones are still
// accepted at the claim's size (what csi-provisioner checks against
// restoreSize), into a volume of the rounded size.
func TestBlockGrownToAnUnalignedClaimRestoresAtTheClaimsSize(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	cleanupUnder(t, dir)
	e := newEnvWith(t, dir, nil)
	block := func(r *csi.CreateVolumeRequest) *csi.CreateVolumeRequest {
		r.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
		return r
	}
	made, err := e.d.CreateVolume(ctx, block(createReq("src", 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	src := made.GetVolume().GetVolumeId()
	_, target := e.stageAndPublish(t, src, blockCap)
	const claim = 2000000
	rounded := int64((claim/blockSector + 1) * blockSector)
	grown, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: src, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: claim}})
	if err != nil || grown.GetCapacityBytes() != rounded {
		t.Fatalf("NodeExpandVolume to %d: %v %v, want %d bytes", claim, grown, err, rounded)
	}
	e.unpublishAndUnstage(t, src)
	snap, err := e.d.CreateSnapshot(ctx, snapReq("snap", src))
	if err != nil {
		t.Fatal(err)
	}
	if n := snap.GetSnapshot().GetSizeBytes(); n != claim {
		t.Fatalf("snapshot size_bytes %d, want the claim's %d", n, claim)
	}
	for _, req := range []*csi.CreateVolumeRequest{
		fromSnapshot("restore", claim, snap.GetSnapshot().GetSnapshotId()),
		fromVolume("clone", claim, src),
	} {
		got, err := e.d.CreateVolume(ctx, block(req))
		if err != nil {
			t.Fatalf("%s at the claim's size: %v", req.GetName(), err)
		}
		if n := got.GetVolume().GetCapacityBytes(); n != rounded {
			t.Fatalf("%s: capacity %d, want the source's %d", req.GetName(), n, rounded)
		}
	}
	_, err = e.d.CreateVolume(ctx, block(fromSnapshot("less", claim-1, snap.GetSnapshot().GetSnapshotId())))
	wantCode(t, err, codes.OutOfRange)
	// Larger and unaligned: whole sectors, as an empty block volume, so
	// the device has the capacity reported.
	const larger = 3000000
	for _, req := range []*csi.CreateVolumeRequest{
		fromSnapshot("restore-larger", larger, snap.GetSnapshot().GetSnapshotId()),
		fromVolume("clone-larger", larger, src),
	} {
		got, err := e.d.CreateVolume(ctx, block(req))
		if err != nil {
			t.Fatal(err)
		}
		want := int64((larger/blockSector + 1) * blockSector)
		if n := got.GetVolume().GetCapacityBytes(); n != want {
			t.Fatalf("%s: capacity %d, want %d in whole sectors", req.GetName(), n, want)
		}
		if n, _ := e.d.hostpath.vols.ImageSize(got.GetVolume().GetVolumeId()); n != want {
			t.Fatalf("%s: file of %d bytes, want %d", req.GetName(), n, want)
		}
	}
}
