package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// benchSnapshot times CreateSnapshot, a restore and a clone of a volume
// holding one file of -big-mib MiB and -files files of 4 KiB, and
// CreateVolume latency of other volumes while a snapshot runs. It writes
// the data through a real NodeStage + NodePublish (needs root).
func benchSnapshot(c *client, args []string) error {
	fs := flag.NewFlagSet("bench snapshot", flag.ExitOnError)
	bigMiB := fs.Int("big-mib", 1024, "size of the big file, MiB")
	files := fs.Int("files", 10000, "number of 4 KiB files")
	dir := fs.String("dir", filepath.Join(filepath.Dir(c.socketPath), "bench-snapshot"), "where the staging and target paths go")
	fs.Parse(args)
	prefix := runPrefix("snap")
	ctx, cancel := c.ctx()
	defer cancel()

	src, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: prefix + "-src", VolumeCapabilities: []*csi.VolumeCapability{rwoCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: int64(*bigMiB+*files/200+64) << 20}})
	if err != nil {
		return err
	}
	srcID := src.GetVolume().GetVolumeId()
	var toDelete []string
	var snapsToDelete []string
	defer func() {
		for _, id := range snapsToDelete {
			c.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		}
		for _, id := range append(toDelete, srcID) {
			c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		}
	}()
	if err := c.fill(srcID, *dir, *bigMiB, *files); err != nil {
		return err
	}

	// Each timed step starts from a synced disk, so it does not pay for
	// writing back the data written (or copied) just before it.
	timed := func(what string, f func() error) (time.Duration, error) {
		unix.Sync()
		t0 := time.Now()
		err := f()
		d := time.Since(t0)
		if err == nil {
			fmt.Printf("  %-10s %10v\n", what, d.Round(time.Millisecond))
		}
		return d, err
	}
	fmt.Printf("volume with a %d MiB file and %d x 4 KiB files:\n", *bigMiB, *files)
	var snapID string
	if _, err := timed("snapshot", func() error {
		r, err := c.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "-snap", SourceVolumeId: srcID})
		snapID = r.GetSnapshot().GetSnapshotId()
		return err
	}); err != nil {
		return err
	}
	snapsToDelete = append(snapsToDelete, snapID)
	for _, k := range []struct {
		what string
		cs   *csi.VolumeContentSource
	}{
		{"restore", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}}},
		{"clone", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcID}}}},
	} {
		if _, err := timed(k.what, func() error {
			r, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: prefix + "-" + k.what,
				VolumeCapabilities: []*csi.VolumeCapability{rwoCap}, VolumeContentSource: k.cs})
			if err == nil {
				toDelete = append(toDelete, r.GetVolume().GetVolumeId())
			}
			return err
		}); err != nil {
			return err
		}
	}

	// CreateVolume of other volumes, idle and while snapshots run.
	unix.Sync()
	idleIDs, idle, _, err := c.createN(prefix+"-idle", 300, 1)
	toDelete = append(toDelete, idleIDs...)
	if err != nil {
		return err
	}
	var during []time.Duration
	var running atomic.Bool
	running.Store(true)
	snapErr := make(chan error, 1)
	go func() {
		defer running.Store(false)
		for i := 0; i < 3; i++ { // three snapshots back to back, so short ones still overlap
			r, err := c.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: prefix + "-busy-" + strconv.Itoa(i), SourceVolumeId: srcID})
			if err != nil {
				snapErr <- err
				return
			}
			snapsToDelete = append(snapsToDelete, r.GetSnapshot().GetSnapshotId())
		}
		snapErr <- nil
	}()
	for i := 0; running.Load(); i++ {
		t0 := time.Now()
		r, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("%s-during-%d", prefix, i),
			VolumeCapabilities: []*csi.VolumeCapability{rwoCap}, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
		if err != nil {
			return err
		}
		if running.Load() {
			during = append(during, time.Since(t0))
		}
		toDelete = append(toDelete, r.GetVolume().GetVolumeId())
	}
	if err := <-snapErr; err != nil {
		return err
	}
	fmt.Printf("  CreateVolume idle:            %s (%d calls)\n", latLine(idle), len(idle))
	if len(during) == 0 {
		fmt.Println("  CreateVolume during snapshot: none finished while the snapshots ran")
		return nil
	}
	fmt.Printf("  CreateVolume during snapshot: %s (%d calls)\n", latLine(during), len(during))
	fmt.Printf("  p99 during / idle: %.2f\n", float64(pct(during, 99))/float64(pct(idle, 99)))
	return nil
}

// fill writes the benchmark data into a volume through stage and publish.
func (c *client) fill(id, dir string, bigMiB, files int) error {
	ctx, cancel := c.ctx()
	defer cancel()
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	if _, err := c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwoCap}); err != nil {
		return err
	}
	if _, err := c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwoCap}); err != nil {
		return err
	}
	werr := writeData(target, bigMiB, files)
	_, uerr := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	if uerr == nil {
		_, uerr = c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	}
	os.Remove(staging)
	os.Remove(dir)
	if werr != nil {
		return werr
	}
	return uerr
}

func writeData(dir string, bigMiB, files int) error {
	r := rand.NewChaCha8([32]byte{7})
	block := make([]byte, 4<<20)
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		return err
	}
	for written := 0; written < bigMiB<<20; written += len(block) {
		r.Read(block)
		if _, err := f.Write(block[:min(len(block), bigMiB<<20-written)]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, "small"), 0o755); err != nil {
		return err
	}
	for i := 0; i < files; i++ {
		r.Read(block[:4096])
		if err := os.WriteFile(filepath.Join(dir, "small", strconv.Itoa(i)), block[:4096], 0o644); err != nil {
			return err
		}
	}
	return nil
}
