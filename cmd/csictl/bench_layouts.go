package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// benchLayouts times what a pod start costs for each kind of volume: a
// CreateVolume, then NodeStageVolume and NodePublishVolume (an image is
// formatted at its first stage, a block volume attached), one volume at a
// time, and then the teardown.
func benchLayouts(c *client, args []string) error {
	fs := flag.NewFlagSet("bench layouts", flag.ExitOnError)
	count := fs.Int("count", 20, "volumes of each kind")
	size := fs.Int64("size", 1<<30, "capacity of each volume in bytes")
	dir := fs.String("dir", filepath.Join(filepath.Dir(c.socketPath), "bench-layouts"), "where staging and target paths go")
	fs.Parse(args)
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	block := &csi.VolumeCapability{AccessMode: rwoCap.AccessMode, AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
	mountWith := func(fsType string) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessMode: rwoCap.AccessMode, AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}}}
	}
	kinds := []struct {
		name   string
		cap    *csi.VolumeCapability
		params map[string]string
	}{
		{"directory", rwoCap, nil},
		{"ext4 image", mountWith("ext4"), map[string]string{"layout": "image"}},
		{"xfs image", mountWith("xfs"), map[string]string{"layout": "image"}},
		{"block", block, nil},
	}
	prefix := runPrefix("layouts")
	for _, k := range kinds {
		var create, stage []time.Duration
		var made []string
		var firstErr error
		for i := 0; i < *count && firstErr == nil; i++ {
			staging, target := filepath.Join(abs, "staging", strconv.Itoa(i)), filepath.Join(abs, "target", strconv.Itoa(i))
			ctx, cancel := c.ctx()
			t0 := time.Now()
			r, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("%s-%s-%d", prefix, k.name, i), Parameters: k.params,
				VolumeCapabilities: []*csi.VolumeCapability{k.cap}, CapacityRange: &csi.CapacityRange{RequiredBytes: *size}})
			t1 := time.Now()
			if err == nil {
				made = append(made, r.GetVolume().GetVolumeId())
				_, err = c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: r.GetVolume().GetVolumeId(), StagingTargetPath: staging, VolumeCapability: k.cap})
			}
			if err == nil {
				_, err = c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: r.GetVolume().GetVolumeId(), StagingTargetPath: staging, TargetPath: target, VolumeCapability: k.cap})
			}
			cancel()
			create, stage = append(create, t1.Sub(t0)), append(stage, time.Since(t1))
			firstErr = err
		}
		for i, id := range made {
			staging, target := filepath.Join(abs, "staging", strconv.Itoa(i)), filepath.Join(abs, "target", strconv.Itoa(i))
			ctx, cancel := c.ctx()
			_, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			if err == nil {
				_, err = c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			}
			if err == nil {
				_, err = c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			}
			cancel()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			os.Remove(staging)
		}
		if firstErr != nil {
			return fmt.Errorf("%s: %w", k.name, firstErr)
		}
		fmt.Printf("%-10s %d x %d MiB: CreateVolume %s\n", k.name, *count, *size>>20, latLine(create))
		fmt.Printf("%-10s             NodeStage+NodePublish %s\n", "", latLine(stage))
	}
	for _, d := range []string{filepath.Join(abs, "staging"), filepath.Join(abs, "target"), abs} {
		os.Remove(d)
	}
	return nil
}
