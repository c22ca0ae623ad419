package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// cmdDemo walks a volume through its whole life the way a kubelet and the
// provisioner would, printing each step, and checks that data written through
// the published path is really there.
func cmdDemo(c *client, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ExitOnError)
	dir := fs.String("dir", filepath.Join(filepath.Dir(c.socketPath), "demo"), "where to put the staging and target paths")
	keep := fs.Bool("keep", false, "stop after writing, leaving the volume published")
	fs.Parse(args)
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	staging, target := filepath.Join(abs, "staging"), filepath.Join(abs, "target")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	ctx, cancel := c.ctx()
	defer cancel()
	step := func(what string, f func() error) error {
		start := time.Now()
		err := f()
		mark := "ok"
		if err != nil {
			mark = "FAILED: " + err.Error()
		}
		fmt.Printf("%-44s %8s  %s\n", what, time.Since(start).Round(10*time.Microsecond), mark)
		return err
	}
	name := fmt.Sprintf("demo-%d", time.Now().UnixNano())
	var id string
	if err := step("CreateVolume "+name+" (64 MiB)", func() error {
		r, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwoCap},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
		id = r.GetVolume().GetVolumeId()
		return err
	}); err != nil {
		return err
	}
	fmt.Println("  volume ID:", id)
	steps := []struct {
		what string
		f    func() error
	}{
		{"NodeStageVolume -> " + staging, func() error {
			_, err := c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwoCap})
			return err
		}},
		{"NodePublishVolume -> " + target, func() error {
			_, err := c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwoCap})
			return err
		}},
		{"write " + filepath.Join(target, "hello.txt"), func() error {
			return os.WriteFile(filepath.Join(target, "hello.txt"), []byte("hello from "+id+"\n"), 0o644)
		}},
		{"read it back", func() error {
			data, err := os.ReadFile(filepath.Join(target, "hello.txt"))
			if err == nil && string(data) != "hello from "+id+"\n" {
				err = fmt.Errorf("read %q", data)
			}
			return err
		}},
		{"NodeGetVolumeStats", func() error {
			r, err := c.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			for _, u := range r.GetUsage() {
				defer fmt.Printf("  %-6s total %d used %d available %d\n", u.GetUnit(), u.GetTotal(), u.GetUsed(), u.GetAvailable())
			}
			return err
		}},
	}
	if !*keep {
		steps = append(steps, []struct {
			what string
			f    func() error
		}{
			{"NodeUnpublishVolume", func() error {
				_, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
				return err
			}},
			{"NodeUnstageVolume", func() error {
				_, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
				return err
			}},
			{"DeleteVolume", func() error {
				_, err := c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
				return err
			}},
		}...)
	}
	for _, s := range steps {
		if err := step(s.what, s.f); err != nil {
			return err
		}
	}
	fmt.Println("demo passed")
	return nil
}
