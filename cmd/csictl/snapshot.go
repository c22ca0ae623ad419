package main

import (
	"flag"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func cmdSnapshot(c *client, args []string) error {
	fs := flag.NewFlagSet("snapshot", flag.ExitOnError)
	vol := fs.String("volume", "", "ID of the volume to snapshot (required)")
	name, err := oneArg(fs, args, "NAME")
	if err != nil {
		return err
	}
	if *vol == "" {
		return fmt.Errorf("snapshot: -volume is required")
	}
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: *vol})
	if err != nil {
		return err
	}
	printSnapshot(r.GetSnapshot())
	return nil
}

func printSnapshot(s *csi.Snapshot) {
	fmt.Printf("%s  source %s  %d bytes  ready=%v  %s\n", s.GetSnapshotId(), s.GetSourceVolumeId(), s.GetSizeBytes(),
		s.GetReadyToUse(), s.GetCreationTime().AsTime().Format("2006-01-02T15:04:05Z"))
}

func cmdSnapshots(c *client, args []string) error {
	fs := flag.NewFlagSet("snapshots", flag.ExitOnError)
	vol := fs.String("volume", "", "only snapshots of this volume")
	fs.Parse(args)
	token := ""
	for {
		ctx, cancel := c.ctx()
		r, err := c.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: *vol, MaxEntries: 500, StartingToken: token})
		cancel()
		if err != nil {
			return err
		}
		for _, e := range r.GetEntries() {
			printSnapshot(e.GetSnapshot())
		}
		if token = r.GetNextToken(); token == "" {
			return nil
		}
	}
}

func cmdDeleteSnapshot(c *client, args []string) error {
	id, err := oneArg(flag.NewFlagSet("delete-snapshot", flag.ExitOnError), args, "ID")
	if err != nil {
		return err
	}
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
		return err
	}
	fmt.Println("deleted", id)
	return nil
}
