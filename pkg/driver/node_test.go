package driver

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

func TestNodeStagePublishFlow(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "pod-vol")
	staging, target, target2 := e.dir+"/staging", e.dir+"/pods/a/mount", e.dir+"/pods/b/mount"

	_, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, rwo))
	wantCode(t, err, codes.FailedPrecondition) // not staged yet

	e.stage(t, id, staging)
	e.stage(t, id, staging) // idempotent
	for i := 0; i < 2; i++ {
		if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, rwo)); err != nil {
			t.Fatalf("publish #%d: %v", i, err)
		}
	}
	if err := os.WriteFile(target+"/hello", []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(e.d.hostpath.vols.Path(id), "hello")); err != nil || string(data) != "data" {
		t.Fatalf("write through the target did not land in the volume: %q %v", data, err)
	}
	// Same target, other options: AlreadyExists.
	_, err = e.d.NodePublishVolume(ctx, publishReq(id, staging, target, true, rwo))
	wantCode(t, err, codes.AlreadyExists)

	// A second, read-only target.
	if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target2, true, rwo)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target2+"/x", nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to a read-only publication: %v, want EROFS", err)
	}

	stats, err := e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	bytes := stats.GetUsage()[0]
	if bytes.GetTotal() != 1<<20 || bytes.GetUsed() <= 0 || bytes.GetAvailable() != bytes.GetTotal()-bytes.GetUsed() {
		t.Fatalf("byte usage %+v", bytes)
	}
	if inodes := stats.GetUsage()[1]; inodes.GetUsed() != 2 {
		t.Fatalf("inode usage %+v, want 2 used (the root and hello)", inodes)
	}
	_, err = e.d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: e.dir})
	wantCode(t, err, codes.NotFound)

	// In use: no delete, no unstage.
	_, err = e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition)

	// A restart keeps knowing what is mounted where.
	e.restart(t)
	got, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil || len(got.GetStatus().GetPublishedNodeIds()) != 1 {
		t.Fatalf("after restart: %v %v, want published on node-1", got, err)
	}

	for _, tp := range []string{target, target2, target} {
		if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: tp}); err != nil {
			t.Fatalf("unpublish %s: %v", tp, err)
		}
		if _, err := os.Stat(tp); !os.IsNotExist(err) {
			t.Fatalf("target %s not removed: %v", tp, err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
			t.Fatalf("unstage #%d: %v", i, err)
		}
	}
	if m, _ := mountutil.IsMountPoint(staging); m {
		t.Fatal("staging path still mounted")
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

func TestSingleWriterPublishedOnce(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "rwop")
	staging := e.dir + "/staging"
	e.stage(t, id, staging)
	rwop := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, e.dir+"/t1", false, rwop)); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, e.dir+"/t2", false, rwop))
	wantCode(t, err, codes.FailedPrecondition)
	e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: e.dir + "/t1"})
	e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
}

// A mount this driver did not make is never taken over or removed.
func TestForeignMountsUntouched(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "foreign")
	foreign := e.dir + "/foreign"
	src := t.TempDir()
	os.MkdirAll(foreign, 0o755)
	if err := unix.Mount(src, foreign, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(foreign, 0)
	_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: foreign, VolumeCapability: rwo})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: foreign})
	wantCode(t, err, codes.FailedPrecondition)
	if m, _ := mountutil.IsMountPoint(foreign); !m {
		t.Fatal("the foreign mount was removed")
	}
}

// A symlink planted where the volume's data should be is never mounted.
func TestStageRefusesSymlinkedData(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "link")
	p := e.d.hostpath.vols.Path(id)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", p); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: e.dir + "/s", VolumeCapability: rwo})
	wantCode(t, err, codes.FailedPrecondition)
	h, err := e.d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 1 || h.GetVolumeHealth().GetHealthStatuses()[0].GetReason() != ReasonDataInvalid {
		t.Fatalf("health %v %v, want %s", h, err, ReasonDataInvalid)
	}
}

func TestNodePathValidation(t *testing.T) {
	e := newEnv(t)
	id := e.create(t, "paths")
	for _, p := range []string{"", "relative/path", "/a/../b", "/a//b", "/a/\x00b", "/trailing/"} {
		_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: p, VolumeCapability: rwo})
		wantCode(t, err, codes.InvalidArgument)
		_, err = e.d.NodePublishVolume(ctx, publishReq(id, "/s", p, false, rwo))
		wantCode(t, err, codes.InvalidArgument)
	}
	_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: "/s"})
	wantCode(t, err, codes.InvalidArgument)
}

func TestNodeGetInfo(t *testing.T) {
	e := newEnv(t)
	info, err := e.d.NodeGetInfo(ctx, nil)
	if err != nil || info.GetNodeId() != "node-1" || info.GetAccessibleTopology().GetSegments()[TopologyKeyNode] != "node-1" {
		t.Fatalf("NodeGetInfo = %v, %v", info, err)
	}
}

// The node calls' codes from csi.proto's error tables where they differ
// from the general ones: a capability the volume cannot serve is
// FAILED_PRECONDITION ("exceeds capabilities"), a missing one
// INVALID_ARGUMENT; staging again at the same path with another capability
// is ALREADY_EXISTS; publishing without a staging path when the driver
// stages is FAILED_PRECONDITION.
func TestNodeErrorCodesFromTheSpec(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	testutil.CleanupMounts(t, e.dir)
	id := e.create(t, "vol")
	staging, target := e.dir+"/staging", e.dir+"/pods/a/mount"
	block := &csi.VolumeCapability{AccessMode: rwo.AccessMode, AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
	multi := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	single := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	stage := func(c *csi.VolumeCapability) error {
		_, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c})
		return err
	}
	publish := func(staging string, c *csi.VolumeCapability) error {
		_, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, c))
		return err
	}
	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"stage without capability", func() error { return stage(nil) }, codes.InvalidArgument},
		{"stage with block access", func() error { return stage(block) }, codes.FailedPrecondition},
		{"stage multi-node", func() error { return stage(multi) }, codes.FailedPrecondition},
		{"stage", func() error { return stage(rwo) }, codes.OK},
		{"stage again, same capability", func() error { return stage(rwo) }, codes.OK},
		{"stage again, other access mode", func() error { return stage(single) }, codes.AlreadyExists},
		{"stage again, other mount flags", func() error { return stage(mountCap(rwo.AccessMode.Mode, "noatime")) }, codes.AlreadyExists},
		{"publish without capability", func() error { return publish(staging, nil) }, codes.InvalidArgument},
		{"publish with block access", func() error { return publish(staging, block) }, codes.FailedPrecondition},
		{"publish without staging path", func() error { return publish("", rwo) }, codes.FailedPrecondition},
		{"publish", func() error { return publish(staging, rwo) }, codes.OK},
	}
	for _, tc := range tests {
		if err := tc.call(); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	if _, err := e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}
