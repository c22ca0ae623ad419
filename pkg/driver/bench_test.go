package driver

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
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

// BenchmarkInlineAdmit is what a new inline volume's publish does under the
// lock that makes its bounds check one step with its record
// (admitEphemeral): read every inline record (--ephemeral-max-count, the
// counts and shares per namespace), read the node's room (a statfs, and the
// sum of what held volumes may still fill: every record and a stat of each
// image, reused for reserveTTL) and write the record. Beside 16 inline
// images, among 0 or 2000 other volumes of which 200 are images; "cold"
// sums the reservation at every call (its worst case, once per reserveTTL),
// "cached" as a steady stream of publishes finds it.
func BenchmarkInlineAdmit(b *testing.B) {
	for _, others := range []int{0, 2000} {
		for _, cold := range []bool{false, true} {
			b.Run(fmt.Sprintf("records=%d/cold=%v", others, cold), func(b *testing.B) {
				d := benchDriver(b)
				for i := 0; i < others; i++ {
					req := createReq(fmt.Sprint("b-", i), 1<<20)
					if i%10 == 0 {
						req = createReq(fmt.Sprint("b-", i), 8<<20)
						req.Parameters = map[string]string{ParamLayout: LayoutImage}
					}
					if _, err := d.CreateVolume(ctx, req); err != nil {
						b.Fatal(err)
					}
				}
				for i := 0; i < 16; i++ {
					iv, err := d.hostpath.ephemeralAttributes(map[string]string{AttrSize: "8Mi"}, "")
					if err != nil {
						b.Fatal(err)
					}
					iv.namespace = fmt.Sprint("ns-", i%4)
					if _, err := d.hostpath.makeEphemeral(ephemeralName(fmt.Sprint("csi-", i)), iv); err != nil {
						b.Fatal(err)
					}
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					v := &state.Volume{Name: ephemeralName(fmt.Sprint("csi-new-", i)), PodNamespace: "ns-new", Ephemeral: true,
						Layout: LayoutImage, FSType: d.cfg.ImageFSType, Limit: hostpath.EnforceImage}
					v, err := d.hostpath.admitEphemeral(v, 8<<20)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if err := d.store.DeleteVolume(v.ID); err != nil {
						b.Fatal(err)
					}
					if cold {
						d.hostpath.reserved.invalidate()
					} else {
						d.hostpath.reserved.add(-v.CapacityBytes)
					}
					b.StartTimer()
				}
			})
		}
	}
}
