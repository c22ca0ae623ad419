package driver

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// What a tenant puts in its volume takes no effect on the node: every mount
// a pod's filesystem goes through (the stage and the publish of a directory,
// an image or an NFS volume, an inline volume's mount) is nosuid and nodev
// in the mount table, whatever the capability's flags say (here "suid" and
// "dev"), and through the pod's target a device node does not open, even
// for root, and a setuid-root binary runs with its caller's uid.
func TestNoSetuidBinaryOrDeviceNodeTakesEffectInAVolume(t *testing.T) {
	testutil.RequireRoot(t)
	flags := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "suid", "dev")

	for _, layout := range []string{LayoutDirectory, LayoutImage} {
		t.Run(layout, func(t *testing.T) {
			e := newEnv(t)
			cleanupUnder(t, e.dir)
			req := createReq("v-"+layout, 32<<20)
			req.Parameters = map[string]string{ParamLayout: layout}
			resp, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			id := resp.GetVolume().GetVolumeId()
			staging, target := e.stageAndPublish(t, id, flags)
			defer e.unpublishAndUnstage(t, id)
			wantTenantSafe(t, target, staging, target)
		})
	}
	t.Run("inline", func(t *testing.T) {
		e := newEnv(t)
		testutil.CleanupMounts(t, e.dir)
		target := filepath.Join(e.dir, "pods", "web", "mount")
		req := inlineReq("csi-flags", target, map[string]string{AttrSize: "32Mi"})
		req.VolumeCapability = flags
		if _, err := e.d.NodePublishVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
		defer e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-flags", TargetPath: target})
		wantTenantSafe(t, target, target)
	})
	t.Run("nfs", func(t *testing.T) {
		e := newNFSEnv(t, 10*time.Second)
		id := e.createNFS(t, "pv-flags", nfsParamsFor()).GetVolumeId()
		c := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "nfsvers=4.1", "suid", "dev")
		staging, target := filepath.Join(e.dir, "staging"), filepath.Join(e.dir, "pods", "a", "mount")
		before := len(e.standin.Calls())
		if _, err := e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: c}); err != nil {
			t.Fatal(err)
		}
		defer e.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		if calls := e.standin.Calls()[before:]; len(calls) != 1 || !lastWins(calls[0].Options, "nosuid", "suid") || !lastWins(calls[0].Options, "nodev", "dev") {
			t.Errorf("the NFS stage asked mount.nfs for %+v; want nosuid and nodev after the class's options", calls)
		}
		if _, err := e.d.NodePublishVolume(ctx, publishReq(id, staging, target, false, c)); err != nil {
			t.Fatal(err)
		}
		defer e.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		wantTenantSafe(t, target, staging, target)
	})
}

// lastWins reports whether want comes after every other in opts (mount(8)
// keeps the last of an option and its opposite).
func lastWins(opts []string, want, other string) bool {
	var all []string
	for _, o := range opts {
		all = append(all, strings.Split(o, ",")...)
	}
	i, j := -1, -1
	for k, o := range all {
		if o == want {
			i = k
		}
		if o == other {
			j = k
		}
	}
	return i >= 0 && i > j
}

// wantTenantSafe checks that each of mounts is nosuid,nodev in
// /proc/self/mountinfo and that, through target, a device node and a
// setuid-root binary planted in the volume take no effect.
func wantTenantSafe(t *testing.T, target string, mounts ...string) {
	t.Helper()
	for _, m := range mounts {
		infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(m))
		if err != nil || len(infos) == 0 {
			t.Fatalf("%s is not in the mount table: %v", m, err)
		}
		opts := strings.Split(infos[len(infos)-1].Options, ",")
		if !slices.Contains(opts, "nosuid") || !slices.Contains(opts, "nodev") {
			t.Errorf("%s is mounted %s; want nosuid and nodev", m, infos[len(infos)-1].Options)
		}
	}

	// A device node (the null device's numbers) opens nowhere through
	// the pod's mount, not even for root.
	node := filepath.Join(target, "null")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod in the volume: %v", err)
	}
	if f, err := os.OpenFile(node, os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Errorf("a device node in the volume opened through %s", target)
	} else if !errors.Is(err, unix.EACCES) {
		t.Errorf("open a device node in the volume: %v, want EACCES (nodev)", err)
	}

	// A setuid-root copy of id(1), run by nobody through the pod's mount,
	// reports nobody's uid. The child reaches the binary through a
	// directory fd, as the test's own directories are closed to nobody.
	idPath := testutil.RequireCommand(t, "id")
	bin := filepath.Join(target, "id")
	if err := copyFile(idPath, bin, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command("/proc/self/fd/3/id", "-u")
	cmd.ExtraFiles = []*os.File{dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run the setuid binary as nobody: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "65534" {
		t.Errorf("a setuid-root binary in the volume ran with uid %s through %s; want 65534 (nosuid)", got, target)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o700)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode) // after the write, which would clear setuid
}
