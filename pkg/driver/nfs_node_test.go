package driver

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Stage mounts server:/share/subDir with the class's mount options, exactly
// as the kernel's NFS client would be asked; publish binds it (read-only
// when asked); unpublish and unstage remove both; a restart reconciles the
// records, which are not mistaken for hostpath volumes.
func TestNFSNodeStagePublish(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-node", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "ns", ParamPVCName, "claim"))
	id := vol.GetVolumeId()
	writeFile(t, filepath.Join(e.export, "ns", "claim", "hello"), "from the server")

	staging := filepath.Join(e.dir, "staging")
	flags := []string{"nfsvers=4.1", "hard", "nosuid"}
	capab := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, flags...)
	before := len(e.standin.Calls())
	for i := 0; i < 2; i++ { // the second is an idempotent retry
		if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: capab}); err != nil {
			t.Fatalf("NodeStageVolume #%d: %v", i, err)
		}
	}
	calls := e.standin.Calls()[before:]
	if len(calls) != 1 {
		t.Fatalf("stage made %d mounts, want 1: %v", len(calls), calls)
	}
	// The class's options as written, then nosuid,nodev whatever it says.
	wantOpts := append(slices.Clone(flags), "nosuid", "nodev")
	if c := calls[0]; c.Source != "nfs.example:/export/ns/claim" || c.FSType != "nfs" || c.Target != staging || !slices.Equal(c.Options, wantOpts) {
		t.Fatalf("stage mounted %+v; want nfs.example:/export/ns/claim, nfs, %s, %v", c, staging, wantOpts)
	}
	// Staged again at the same path with other options: ALREADY_EXISTS.
	_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "nfsvers=3")})
	wantCode(t, err, codes.AlreadyExists)

	rwTarget, roTarget := filepath.Join(e.dir, "pods", "a", "mount"), filepath.Join(e.dir, "pods", "b", "mount")
	for _, p := range []struct {
		target string
		ro     bool
	}{{rwTarget, false}, {roTarget, true}} {
		if _, err := e.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: p.target,
			VolumeCapability: capab, Readonly: p.ro}); err != nil {
			t.Fatalf("NodePublishVolume(%s): %v", p.target, err)
		}
		if b, err := os.ReadFile(filepath.Join(p.target, "hello")); err != nil || string(b) != "from the server" {
			t.Fatalf("read through %s: %q, %v", p.target, b, err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(p.target, &st); err != nil {
			t.Fatal(err)
		}
		if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
			t.Errorf("publish at %s has mount flags %#x, want nosuid and nodev whatever the class says", p.target, st.Flags)
		}
	}
	writeFile(t, filepath.Join(rwTarget, "written"), "by pod a")
	if b, err := os.ReadFile(filepath.Join(e.export, "ns", "claim", "written")); err != nil || string(b) != "by pod a" {
		t.Fatalf("write through the rw target did not reach the export: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(roTarget, "nope"), nil, 0o644); !os.IsPermission(err) && !isReadOnly(err) {
		t.Fatalf("write through the read-only target: %v, want EROFS", err)
	}
	stats, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: rwTarget})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(e.export, &st); err != nil {
		t.Fatal(err)
	}
	if u := stats.GetUsage()[0]; u.GetTotal() != int64(st.Blocks)*st.Bsize || u.GetUsed() <= 0 {
		t.Fatalf("usage %v; want the export's size %d", u, int64(st.Blocks)*st.Bsize)
	}
	h, err := e.d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, VolumePublishPath: rwTarget, StagingTargetPath: staging})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health %v, %v", h, err)
	}
	exp, err := e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: rwTarget, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
	if err != nil || exp.GetCapacityBytes() != 2<<20 {
		t.Fatalf("NodeExpandVolume: %v, %v", exp, err)
	}
	_, err = e.d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: rwTarget, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 60}})
	wantCode(t, err, codes.OutOfRange)

	// A restart keeps the mounts and their records, and reconciles
	// nothing as a hostpath volume.
	e.restart(t)
	if probs := e.d.pending.list(); len(probs) != 0 {
		t.Fatalf("restart left problems: %v", probs[0].err)
	}
	// The restarted process has used no export yet: its mount records
	// name the export to list.
	lv, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(lv.GetEntries()) != 1 || lv.GetEntries()[0].GetVolume().GetVolumeId() != id {
		t.Fatalf("ListVolumes after a restart: %v, %v", lv, err)
	}
	_, err = e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition) // still published

	for _, target := range []string{rwTarget, roTarget} {
		for i := 0; i < 2; i++ {
			if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
				t.Fatalf("NodeUnpublishVolume(%s) #%d: %v", target, i, err)
			}
		}
		if _, err := os.Stat(target); !os.IsNotExist(err) {
			t.Fatalf("target %s still there: %v", target, err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatalf("NodeUnstageVolume #%d: %v", i, err)
		}
	}
	if m := testutil.MountsUnder(t, e.dir); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

func isReadOnly(err error) bool {
	var errno unix.Errno
	return err != nil && (os.IsPermission(err) || (asErrno(err, &errno) && errno == unix.EROFS))
}

func asErrno(err error, target *unix.Errno) bool {
	for err != nil {
		if e, ok := err.(unix.Errno); ok {
			*target = e
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// A stage interrupted by a kill (record says mounting) is undone at start-up;
// a mount on record that is gone (a reboot) has its record dropped.
func TestNFSNodeReconcile(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	id := e.createNFS(t, "pv-rec", nfsParamsFor()).GetVolumeId()
	staging := filepath.Join(e.dir, "staging")
	if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwx}); err != nil {
		t.Fatal(err)
	}
	pub, err := e.d.store.GetPublication(id, "stage", staging)
	if err != nil || pub.Backend != backendNFS {
		t.Fatalf("stage record %+v, %v", pub, err)
	}
	pub.Phase = "mounting" // as if killed between the mount and its record
	if err := e.d.store.PutPublication(pub); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	if m, _ := nfs.IsMounted(staging); m {
		t.Fatal("an interrupted stage is still mounted after a restart")
	}
	if _, err := e.d.store.GetPublication(id, "stage", staging); err == nil {
		t.Fatal("the record of an interrupted stage survived the restart")
	}
	if probs := e.d.pending.list(); len(probs) != 0 {
		t.Fatalf("restart left problems: %v", probs[0].err)
	}
}
