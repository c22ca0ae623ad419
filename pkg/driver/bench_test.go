package driver

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

func benchDriver(b *testing.B) *Driver {
	dir := b.TempDir()
	d, err := New(Config{DriverName: DefaultDriverName, NodeID: "n", StateDir: dir + "/state", DataDir: dir + "/data",
		Controller: true, Node: true, MaxVolumeSize: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	return d
}

// BenchmarkCreateVolume measures the driver without gRPC, with 16 callers
// as in the load goal (2 cores x parallelism 8).
func BenchmarkCreateVolume(b *testing.B) {
	d := benchDriver(b)
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := d.CreateVolume(ctx, createReq(fmt.Sprint("b-", n.Add(1)), 1<<20)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDeleteVolume deletes volumes made before the timer starts.
func BenchmarkDeleteVolume(b *testing.B) {
	d := benchDriver(b)
	ids := make([]string, b.N)
	for i := range ids {
		resp, err := d.CreateVolume(ctx, createReq(fmt.Sprint("b-", i), 1<<20))
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = resp.GetVolume().GetVolumeId()
	}
	var n atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := ids[n.Add(1)-1]
			if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkInlineBoundsCheck is what a new inline volume's publish reads,
// under the lock that makes it one step with the volume's record, to check
// --ephemeral-max-count and --ephemeral-max-share: every volume record,
// beside 16 inline images among 0 and 2000 other volumes.
func BenchmarkInlineBoundsCheck(b *testing.B) {
	for _, others := range []int{0, 2000} {
		b.Run(fmt.Sprintf("records=%d", others), func(b *testing.B) {
			d := benchDriver(b)
			for i := 0; i < others; i++ {
				if _, err := d.CreateVolume(ctx, createReq(fmt.Sprint("b-", i), 1<<20)); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < 16; i++ {
				iv, err := d.ephemeralAttributes(map[string]string{AttrSize: "8Mi"}, "")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := d.makeEphemeral(ephemeralName(fmt.Sprint("csi-", i)), iv); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if use, err := d.ephemeralInUse("default"); err != nil || use.count != 16 {
					b.Fatal(use, err)
				}
			}
		})
	}
}
