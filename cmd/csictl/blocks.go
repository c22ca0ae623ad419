package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// cmdBlocks calls the SnapshotMetadata service: the allocated ranges of a
// snapshot (GetMetadataAllocated), or with -base the ranges that changed
// since an earlier snapshot of the same volume (GetMetadataDelta), and
// prints them one a line as the stream brings them.
func cmdBlocks(c *client, args []string) error {
	fs := flag.NewFlagSet("blocks", flag.ExitOnError)
	base := fs.String("base", "", "an earlier snapshot of the same volume: print what changed since it (GetMetadataDelta)")
	from := fs.Int64("from", 0, "starting_offset: the byte to start from (to resume after the last range received)")
	maxResults := fs.Uint("max", 0, "max_results: ranges per message (0: the driver chooses)")
	id, err := oneArg(fs, args, "SNAPSHOT")
	if err != nil {
		return err
	}
	if *maxResults > math.MaxInt32 {
		return fmt.Errorf("blocks: -max %d is more than max_results holds (%d)", *maxResults, math.MaxInt32)
	}
	ctx, cancel := c.ctx()
	defer cancel()
	meta := csi.NewSnapshotMetadataClient(c.conn)
	type message interface {
		GetBlockMetadataType() csi.BlockMetadataType
		GetVolumeCapacityBytes() int64
		GetBlockMetadata() []*csi.BlockMetadata
	}
	var recv func() (message, error)
	if *base == "" {
		s, err := meta.GetMetadataAllocated(ctx, &csi.GetMetadataAllocatedRequest{SnapshotId: id, StartingOffset: *from, MaxResults: int32(*maxResults)})
		if err != nil {
			return err
		}
		recv = func() (message, error) { return s.Recv() }
	} else {
		s, err := meta.GetMetadataDelta(ctx, &csi.GetMetadataDeltaRequest{BaseSnapshotId: *base, TargetSnapshotId: id, StartingOffset: *from, MaxResults: int32(*maxResults)})
		if err != nil {
			return err
		}
		recv = func() (message, error) { return s.Recv() }
	}
	var ranges, bytes, messages int64
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if messages == 0 {
			fmt.Printf("capacity %d bytes, %s ranges\n", m.GetVolumeCapacityBytes(), m.GetBlockMetadataType())
		}
		messages++
		for _, b := range m.GetBlockMetadata() {
			fmt.Printf("%12d  %12d\n", b.GetByteOffset(), b.GetSizeBytes())
			ranges++
			bytes += b.GetSizeBytes()
		}
	}
	what := "allocated"
	if *base != "" {
		what = "changed"
	}
	plural := func(n int64, word string) string {
		if n == 1 {
			return fmt.Sprintf("%d %s", n, word)
		}
		return fmt.Sprintf("%d %ss", n, word)
	}
	fmt.Printf("%s, %d bytes %s, in %s\n", plural(ranges, "range"), bytes, what, plural(messages, "message"))
	return nil
}
