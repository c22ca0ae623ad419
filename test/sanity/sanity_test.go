// Package sanity runs the CSI community's conformance suite (csi-test's
// pkg/sanity) against the driver, served in-process on a temporary socket.
package sanity

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/driver"
)

// kinds of volume the suite runs against: a directory, a filesystem image
// (layout: image) and a raw block volume.
// The image run uses xfs: an ext4 image cannot grow online on the
// development machine (no CAP_SYS_RESOURCE), and the suite expands a
// published volume. Its volumes are 320 MiB: xfs needs 300.
//
// The nfs run serves an NFS StorageClass whose export, 127.0.0.1:/export,
// is a local directory behind the bind-mounting stand-in for the kernel's
// NFS client (this machine has none), injected in-process through the
// driver's Mounter seam.
//
// mutable is what the suite's ModifyVolume specs set (a
// VolumeAttributesClass's parameters): a directory volume has none to
// change, so its specs modify with none.
var kinds = map[string]struct {
	accessType, imageFSType string
	size                    int64
	params, mutable         map[string]string
}{
	"nfs": {"mount", "", 64 << 20, map[string]string{driver.ParamServer: "127.0.0.1", driver.ParamShare: "/export",
		driver.ParamMountPermissions: "0777", driver.ParamOnDelete: driver.OnDeleteDelete},
		map[string]string{driver.ParamOnDelete: driver.OnDeleteArchive}},
	"directory": {"mount", "", 64 << 20, map[string]string{driver.ParamMountPermissions: "0750"}, nil},
	"image": {"mount", "xfs", 320 << 20, map[string]string{driver.ParamMountPermissions: "0750", driver.ParamLayout: driver.LayoutImage},
		map[string]string{driver.ParamReadAheadKiB: "512"}},
	"block": {"block", "", 64 << 20, nil, map[string]string{driver.ParamReadAheadKiB: "64"}},
}

// TestSanity runs the suite once per kind of volume. Ginkgo runs a suite
// once per process, so each run is this test binary again, with the kind in
// its environment.
func TestSanity(t *testing.T) {
	testutil.RequireRoot(t) // NodeStage/NodePublish make real mounts
	for _, name := range []string{"directory", "image", "block", "nfs"} {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestSanityOfKind$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "HOSTPATH_SANITY_KIND="+name)
			out, err := cmd.CombinedOutput()
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "Passed") || strings.Contains(line, "[FAIL]") {
					t.Log(strings.TrimSpace(line))
				}
			}
			if err != nil {
				t.Fatalf("csi-sanity with %s volumes: %v\n%s", name, err, out)
			}
		})
	}
}

// TestSanityOfKind is one run of the suite, for the kind TestSanity names.
func TestSanityOfKind(t *testing.T) {
	kind, ok := kinds[os.Getenv("HOSTPATH_SANITY_KIND")]
	if !ok {
		// Not a failure in CI: TestSanity runs this test in a child
		// process once per kind of volume, with HOSTPATH_SANITY_KIND set.
		t.Skip("run by TestSanity, once per kind of volume")
	}
	testutil.RequireRoot(t)
	runSanity(t, kind.accessType, kind.imageFSType, kind.size, kind.params, kind.mutable)
}

func runSanity(t *testing.T, accessType, imageFSType string, size int64, params, mutable map[string]string) {
	dir := t.TempDir()
	testutil.CleanupLoopDevices(t, dir) // runs after the mounts are gone
	testutil.CleanupMounts(t, dir)

	dcfg := driver.Config{
		DriverName:        driver.DefaultDriverName,
		NodeID:            "sanity-node",
		StateDir:          filepath.Join(dir, "state"),
		DataDir:           filepath.Join(dir, "data"),
		Controller:        true,
		Node:              true,
		MaxVolumesPerNode: 100,
		MaxVolumeSize:     driver.DefaultMaxVolumeSize,
		ImageFSType:       imageFSType,
	}
	if _, ok := params[driver.ParamServer]; ok {
		standin := testutil.NewNFSStandIn()
		standin.AddExport(t, params[driver.ParamServer], params[driver.ParamShare], filepath.Join(dir, "export"))
		dcfg.NFS = nfs.Options{Mounter: standin}
	}
	d, err := driver.New(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "csi.sock")
	l, err := driver.Listen("unix://" + socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := d.NewGRPCServer()
	go srv.Serve(l)
	defer func() {
		srv.Stop()
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	}()

	cfg := sanity.NewTestConfig()
	cfg.Address = socket
	cfg.TargetPath = filepath.Join(dir, "target")
	cfg.StagingPath = filepath.Join(dir, "staging")
	cfg.TestVolumeSize = size
	cfg.TestVolumeExpandSize = 2 * size
	cfg.TestVolumeParameters = params
	cfg.TestVolumeMutableParameters = mutable
	cfg.TestVolumeAccessType = accessType
	cfg.IdempotentCount = 3
	cfg.TestNodeVolumeAttachLimit = true
	// sanity's own check of what it left: the target must be gone after
	// NodeUnpublishVolume, the staging directory stays (the CO owns it).
	cfg.CheckPath = func(p string) (sanity.PathKind, error) {
		fi, err := os.Stat(p)
		switch {
		case os.IsNotExist(err):
			return sanity.PathIsNotFound, nil
		case err != nil:
			return sanity.PathIsOther, err
		case fi.IsDir():
			return sanity.PathIsDir, nil
		}
		return sanity.PathIsFile, nil
	}
	sanity.Test(t, cfg)
}
