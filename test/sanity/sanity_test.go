// Package sanity runs the CSI community's conformance suite (csi-test's
// pkg/sanity) against the driver, served in-process on a temporary socket.
package sanity

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/driver"
)

func TestSanity(t *testing.T) {
	testutil.RequireRoot(t) // NodeStage/NodePublish make real bind mounts
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)

	d, err := driver.New(driver.Config{
		DriverName:        driver.DefaultDriverName,
		NodeID:            "sanity-node",
		StateDir:          filepath.Join(dir, "state"),
		DataDir:           filepath.Join(dir, "data"),
		Controller:        true,
		Node:              true,
		MaxVolumesPerNode: 100,
		MaxVolumeSize:     driver.DefaultMaxVolumeSize,
	})
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
	cfg.TestVolumeSize = 64 << 20
	cfg.TestVolumeExpandSize = 128 << 20
	cfg.TestVolumeParameters = map[string]string{driver.ParamMountPermissions: "0750"}
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
