package driver

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/loop"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// deviceOf is the block device behind what a pod sees at target: the device
// node bound there for a block volume, the device its filesystem is on
// otherwise.
func deviceOf(t *testing.T, target string, block bool) (sysDir, node string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil {
		t.Fatal(err)
	}
	dev := st.Dev
	if block {
		dev = st.Rdev
	}
	sysDir = fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(dev), unix.Minor(dev))
	name, err := os.Readlink(sysDir)
	if err != nil {
		t.Fatal(err)
	}
	return sysDir, "/dev/" + filepath.Base(name)
}

// readIOs is the count of reads the device has completed (the first field
// of its stat in sysfs).
func readIOs(t *testing.T, sysDir string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sysDir, "stat"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.Fields(string(b))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// readsToScan drops what the page cache holds of path, opens it afresh (a
// file takes its device's read-ahead when opened) and reads its first
// scanBytes in order, 4 KiB at a time, as a plain reader does: it returns
// how many reads the device under it served meanwhile.
func readsToScan(t *testing.T, path, sysDir string) uint64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !strings.Contains(err.Error(), "invalid argument") {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	// POSIX_FADV_NORMAL: the file's window is the device's read-ahead.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_NORMAL); err != nil {
		t.Fatal(err)
	}
	before := readIOs(t, sysDir)
	buf := make([]byte, 4096)
	for off := int64(0); off < scanBytes; off += int64(len(buf)) {
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	return readIOs(t, sysDir) - before
}

const scanBytes = 8 << 20

// A VolumeAttributesClass's readAheadKiB changes what reads fetch from an
// image or block volume's device, at once on the live volume: with none, an
// 8 MiB scan in 4 KiB reads is one device read per page (2048); with 1 MiB
// ahead, a few dozen. The value given at CreateVolume is applied at the
// first stage, a modify reaches the device while the pod uses it, and the
// recorded value is applied again when the volume's device is attached
// afresh (after an unstage and a driver restart).
func TestReadAheadReachesTheVolumesDevice(t *testing.T) {
	testutil.RequireRoot(t)
	xfsCap := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	xfsCap.GetMount().FsType = "xfs"
	tests := []struct {
		name string
		cap  *csi.VolumeCapability
		size int64
	}{
		{"ext4 image", rwo, 64 << 20},
		{"xfs image", xfsCap, 320 << 20},
		{"block", blockCap, 64 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, "ext4", 1024)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)
			block := tc.cap.GetBlock() != nil
			req := createReq("v", tc.size)
			req.VolumeCapabilities = []*csi.VolumeCapability{tc.cap}
			if !block {
				req.Parameters = map[string]string{ParamLayout: LayoutImage}
			}
			req.MutableParameters = map[string]string{ParamReadAheadKiB: "0"}
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			id := r.GetVolume().GetVolumeId()
			_, target := e.stageAndPublish(t, id, tc.cap)
			file := target
			if !block {
				file = filepath.Join(target, "data")
			}
			f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(bytes.Repeat([]byte("r"), scanBytes)); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			sysDir, dev := deviceOf(t, target, block)
			if ra, err := loop.ReadAhead(dev); err != nil || ra != 0 {
				t.Fatalf("read-ahead of %s after a create with readAheadKiB 0: %d %v", dev, ra, err)
			}
			if n := readsToScan(t, file, sysDir); n < scanBytes/4096 {
				t.Fatalf("with no read-ahead, an 8 MiB scan took %d device reads, want at least %d (one per page)", n, scanBytes/4096)
			}

			if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id,
				MutableParameters: map[string]string{ParamReadAheadKiB: "1024"}}); err != nil {
				t.Fatalf("ControllerModifyVolume: %v", err)
			}
			if ra, err := loop.ReadAhead(dev); err != nil || ra != 1024 {
				t.Fatalf("read-ahead of %s in use after the modify: %d %v, want 1024", dev, ra, err)
			}
			n := readsToScan(t, file, sysDir)
			t.Logf("an 8 MiB scan in 4 KiB reads: %d device reads with 1 MiB of read-ahead", n)
			if n > scanBytes/4096/8 {
				t.Fatalf("with 1 MiB of read-ahead, an 8 MiB scan took %d device reads, want at most %d", n, scanBytes/4096/8)
			}
			// The same call again (a retry) changes nothing and succeeds;
			// a call naming no key changes nothing either.
			for _, m := range []map[string]string{{ParamReadAheadKiB: "1024"}, nil} {
				if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: m}); err != nil {
					t.Fatalf("ControllerModifyVolume(%v) again: %v", m, err)
				}
			}

			// Detached, restarted, attached again: the record is what the
			// new device gets.
			e.unpublishAndUnstage(t, id)
			e.restart(t)
			_, target = e.stageAndPublish(t, id, tc.cap)
			if _, dev := deviceOf(t, target, block); true {
				if ra, err := loop.ReadAhead(dev); err != nil || ra != 1024 {
					t.Fatalf("read-ahead of %s attached after a restart: %d %v, want 1024", dev, ra, err)
				}
			}
			e.unpublishAndUnstage(t, id)
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
			e.d.hostpath.vols.WaitIdle()
		})
	}
}

// What cannot change, or is not there, is refused with the spec's codes,
// naming the key; nothing is recorded from a refused call.
func TestModifyVolumeRefusals(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	dirID := e.create(t, "dir")
	req := createReq("img", 32<<20)
	req.Parameters = map[string]string{ParamLayout: LayoutImage}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	imgID := r.GetVolume().GetVolumeId()

	tests := []struct {
		name    string
		id      string
		mutable map[string]string
		code    codes.Code
		says    string
	}{
		{"no volume ID", "", map[string]string{ParamReadAheadKiB: "64"}, codes.InvalidArgument, "volume ID"},
		{"an ID this driver never made", "not-a-volume", map[string]string{ParamReadAheadKiB: "64"}, codes.NotFound, ""},
		{"a volume that does not exist", "hpv1-00000000000000000000000000000000", map[string]string{ParamReadAheadKiB: "64"}, codes.NotFound, ""},
		{"an unknown key", imgID, map[string]string{"iops": "100"}, codes.InvalidArgument, `"iops"`},
		{"a class parameter, which cannot change", imgID, map[string]string{ParamLayout: LayoutDirectory}, codes.InvalidArgument, `"layout"`},
		{"read-ahead on a directory volume", dirID, map[string]string{ParamReadAheadKiB: "64"}, codes.InvalidArgument, "image and block"},
		{"read-ahead not a number", imgID, map[string]string{ParamReadAheadKiB: "lots"}, codes.InvalidArgument, ParamReadAheadKiB},
		{"read-ahead not whole pages", imgID, map[string]string{ParamReadAheadKiB: "6"}, codes.InvalidArgument, "multiple of"},
		{"read-ahead past the bound", imgID, map[string]string{ParamReadAheadKiB: "32768"}, codes.InvalidArgument, "16384"},
		{"read-ahead negative", imgID, map[string]string{ParamReadAheadKiB: "-4"}, codes.InvalidArgument, ParamReadAheadKiB},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: tc.id, MutableParameters: tc.mutable})
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
				t.Fatalf("got %v, want %s saying %q", err, tc.code, tc.says)
			}
			// The same at CreateVolume, for a new volume of that kind.
			if tc.id == imgID || tc.id == dirID {
				req := createReq("new-"+strings.ReplaceAll(tc.name, " ", "-"), 32<<20)
				if tc.id == imgID {
					req.Parameters = map[string]string{ParamLayout: LayoutImage}
				}
				req.MutableParameters = tc.mutable
				_, err := e.d.CreateVolume(ctx, req)
				if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
					t.Fatalf("CreateVolume: got %v, want %s saying %q", err, tc.code, tc.says)
				}
			}
		})
	}
	if v, err := e.d.store.GetVolume(imgID); err != nil || len(v.Mutable) != 0 {
		t.Fatalf("after refused modifies, the volume records %v (%v), want nothing", v.Mutable, err)
	}
	// Keys of csi-resizer's --extra-modify-metadata are taken and not kept.
	if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: dirID,
		MutableParameters: map[string]string{"csi.storage.k8s.io/pvc/name": "db", "csi.storage.k8s.io/pv/name": "pv-1"}}); err != nil {
		t.Fatalf("the resizer's metadata keys: %v", err)
	}
	if v, _ := e.d.store.GetVolume(dirID); len(v.Mutable) != 0 {
		t.Fatalf("the resizer's metadata keys were recorded: %v", v.Mutable)
	}
}

// A modify is on record before the driver acts on it, and survives a
// restart; keys a call leaves out keep their value.
func TestModifyIsRecorded(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testutil.LoopFS(t, "ext4", 512)
	cleanupUnder(t, mnt)
	e := newEnvOn(t, mnt)
	req := createReq("blk", 16<<20)
	req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	req.MutableParameters = map[string]string{ParamReadAheadKiB: "256"}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetVolume().GetVolumeId()
	if v, _ := e.d.store.GetVolume(id); v.Mutable[ParamReadAheadKiB] != "256" {
		t.Fatalf("after CreateVolume with readAheadKiB 256 the record has %v", v.Mutable)
	}
	if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{ParamReadAheadKiB: "4096"}}); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	if v, _ := e.d.store.GetVolume(id); v.Mutable[ParamReadAheadKiB] != "4096" {
		t.Fatalf("after a modify to 4096, a restart and a modify naming nothing, the record has %v", v.Mutable)
	}
}

// With --modify-volume=false the capability is gone and the call is
// UNIMPLEMENTED, as for a driver without it.
func TestModifyVolumeOff(t *testing.T) {
	e := newEnvWith(t, t.TempDir(), func(c *Config) { c.NoModifyVolume = true })
	caps, err := e.d.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range caps.GetCapabilities() {
		if c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_MODIFY_VOLUME {
			t.Fatal("MODIFY_VOLUME advertised with NoModifyVolume")
		}
	}
	_, err = e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: "hpv1-00000000000000000000000000000000"})
	wantCode(t, err, codes.Unimplemented)
	req := createReq("with-class", 1<<20)
	req.MutableParameters = map[string]string{ParamReadAheadKiB: "64"}
	_, err = e.d.CreateVolume(ctx, req)
	wantCode(t, err, codes.InvalidArgument)

	on := newEnv(t)
	caps, _ = on.d.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	found := false
	for _, c := range caps.GetCapabilities() {
		found = found || c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_MODIFY_VOLUME
	}
	if !found {
		t.Fatal("MODIFY_VOLUME not advertised by default")
	}
}

// An NFS volume's onDelete changes on its record on the export: a volume
// made with onDelete: delete and modified to retain keeps its data when it
// is deleted; a VolumeAttributesClass at CreateVolume wins over the class.
func TestModifyNFSOnDelete(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	deleted := func(t *testing.T, v *csi.Volume) bool {
		t.Helper()
		dir := e.subDirOf(t, v.GetVolumeId())
		writeFile(t, filepath.Join(dir, "keep"), "data")
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
		e.d.nfs.exports.WaitIdle()
		_, err := os.Stat(filepath.Join(dir, "keep"))
		return os.IsNotExist(err)
	}

	v := e.createNFS(t, "pv-modified", nfsParamsFor(ParamOnDelete, OnDeleteDelete))
	if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: v.GetVolumeId(),
		MutableParameters: map[string]string{ParamOnDelete: OnDeleteRetain}}); err != nil {
		t.Fatal(err)
	}
	// A second driver (the controller moved) reads the same record.
	other := e.another(t)
	if _, err := other.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: v.GetVolumeId(),
		MutableParameters: map[string]string{ParamOnDelete: OnDeleteRetain}}); err != nil {
		t.Fatalf("the same modify from another controller: %v", err)
	}
	if deleted(t, v) {
		t.Fatal("a volume modified to onDelete: retain lost its data at delete")
	}

	req := nfsReq("pv-vac", nfsParamsFor(ParamOnDelete, OnDeleteDelete))
	req.MutableParameters = map[string]string{ParamOnDelete: OnDeleteRetain}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if deleted(t, r.GetVolume()) {
		t.Fatal("a volume created with a VolumeAttributesClass saying onDelete: retain lost its data at delete")
	}

	v = e.createNFS(t, "pv-plain", nfsParamsFor(ParamOnDelete, OnDeleteRetain))
	for _, tc := range []struct {
		mutable map[string]string
		code    codes.Code
	}{
		{map[string]string{ParamOnDelete: "shred"}, codes.InvalidArgument},
		{map[string]string{ParamReadAheadKiB: "64"}, codes.InvalidArgument},
		{map[string]string{ParamSubDir: "elsewhere"}, codes.InvalidArgument},
	} {
		_, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: v.GetVolumeId(), MutableParameters: tc.mutable})
		wantCode(t, err, tc.code)
	}
	if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: v.GetVolumeId(),
		MutableParameters: map[string]string{ParamOnDelete: OnDeleteDelete}}); err != nil {
		t.Fatal(err)
	}
	if !deleted(t, v) {
		t.Fatal("a volume modified to onDelete: delete kept its data at delete")
	}
}

// A tenant's readAheadKiB does not outlive its use of the loop device: the
// unstage puts back what the device read ahead before the driver changed
// it (some kernels keep a detached device's value for its next user). The
// test holds the device open, so that it stays attached past the unstage
// and its value can be read.
func TestReadAheadPutBackAtUnstage(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		cap  *csi.VolumeCapability
	}{
		{"block", blockCap},
		{"ext4 image", rwo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, "ext4", 512)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)
			block := tc.cap.GetBlock() != nil
			req := createReq("v", 64<<20)
			req.VolumeCapabilities = []*csi.VolumeCapability{tc.cap}
			if !block {
				req.Parameters = map[string]string{ParamLayout: LayoutImage}
			}
			r, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			id := r.GetVolume().GetVolumeId()
			_, target := e.stageAndPublish(t, id, tc.cap)
			_, dev := deviceOf(t, target, block)
			before, err := loop.ReadAhead(dev)
			if err != nil {
				t.Fatal(err)
			}
			tenant := "0"
			if before == 0 {
				tenant = "16384"
			}
			if _, err := e.d.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id,
				MutableParameters: map[string]string{ParamReadAheadKiB: tenant}}); err != nil {
				t.Fatal(err)
			}
			if got, _ := loop.ReadAhead(dev); fmt.Sprint(got) != tenant {
				t.Fatalf("read-ahead %d after the modify, want %s", got, tenant)
			}
			f, err := os.Open(dev)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			e.unpublishAndUnstage(t, id)
			if got, err := loop.ReadAhead(dev); err != nil || got != before {
				t.Fatalf("%s after the unstage reads ahead %d KiB (%v), want the %d it had before the tenant's %s", dev, got, err, before, tenant)
			}
			f.Close()
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Fatal(err)
			}
			e.d.hostpath.vols.WaitIdle()
		})
	}
}

// A CreateVolume retried with another VolumeAttributesClass (the claim's
// class changed before it was bound) gets a volume of the new values, not
// an OK for the old ones.
func TestCreateRetryTakesNewMutableParameters(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("hostpath", func(t *testing.T) {
		mnt := testutil.LoopFS(t, "ext4", 512)
		cleanupUnder(t, mnt)
		e := newEnvOn(t, mnt)
		req := createReq("blk", 16<<20)
		req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
		req.MutableParameters = map[string]string{ParamReadAheadKiB: "16"}
		first, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		req.MutableParameters = map[string]string{ParamReadAheadKiB: "4096"}
		again, err := e.d.CreateVolume(ctx, req)
		if err != nil || again.GetVolume().GetVolumeId() != first.GetVolume().GetVolumeId() {
			t.Fatalf("the retry: %v %v", again, err)
		}
		if v, _ := e.d.store.GetVolume(first.GetVolume().GetVolumeId()); v.Mutable[ParamReadAheadKiB] != "4096" {
			t.Fatalf("after a retry with readAheadKiB 4096 the volume records %v", v.Mutable)
		}
	})
	t.Run("nfs", func(t *testing.T) {
		e := newNFSEnv(t, 10*time.Second)
		req := nfsReq("pv-again", nfsParamsFor(ParamOnDelete, OnDeleteDelete))
		req.MutableParameters = map[string]string{ParamOnDelete: OnDeleteRetain}
		first, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		req.MutableParameters = map[string]string{ParamOnDelete: OnDeleteDelete}
		if _, err := e.d.CreateVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
		dir := e.subDirOf(t, first.GetVolume().GetVolumeId())
		writeFile(t, filepath.Join(dir, "data"), "x")
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: first.GetVolume().GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
		e.d.nfs.exports.WaitIdle()
		if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
			t.Fatal("a volume whose create was retried with onDelete: delete kept its data at delete")
		}
	})
}
