package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const benchUsage = `usage: csictl bench <kind> [flags]

kinds:
  create   CreateVolume then DeleteVolume throughput at a given concurrency
  scale    CreateVolume latency as the number of existing volumes grows
  publish  NodeStageVolume + NodePublishVolume latency (needs root)
  snapshot snapshot, restore and clone times, and CreateVolume during a snapshot (needs root)
`

func cmdBench(c *client, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", benchUsage)
	}
	kinds := map[string]func(*client, []string) error{"create": benchCreate, "scale": benchScale, "publish": benchPublish, "snapshot": benchSnapshot, "layouts": benchLayouts}
	run, ok := kinds[args[0]]
	if !ok {
		return fmt.Errorf("unknown bench kind %q\n%s", args[0], benchUsage)
	}
	return run(c, args[1:])
}

// runParallel calls op(i) for i in [0,n) from `workers` goroutines and
// returns each call's latency and the wall time of the whole run.
func runParallel(n, workers int, op func(i int) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := op(i); err != nil {
					once.Do(func() { firstErr = fmt.Errorf("call %d: %w", i, err) })
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	return lat, time.Since(start), firstErr
}

func pct(lat []time.Duration, p float64) time.Duration {
	s := slices.Clone(lat)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(float64(len(s))*p/100))]
}

func latLine(lat []time.Duration) string {
	return fmt.Sprintf("p50 %v  p90 %v  p99 %v", pct(lat, 50).Round(time.Microsecond), pct(lat, 90).Round(time.Microsecond), pct(lat, 99).Round(time.Microsecond))
}

func (c *client) createN(prefix string, n, workers int) ([]string, []time.Duration, time.Duration, error) {
	ids := make([]string, n)
	lat, wall, err := runParallel(n, workers, func(i int) error {
		ctx, cancel := c.ctx()
		defer cancel()
		r, err := c.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("%s-%d", prefix, i),
			VolumeCapabilities: []*csi.VolumeCapability{rwoCap}, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
		ids[i] = r.GetVolume().GetVolumeId()
		return err
	})
	return ids, lat, wall, err
}

func (c *client) deleteAll(ids []string, workers int) ([]time.Duration, time.Duration, error) {
	return runParallel(len(ids), workers, func(i int) error {
		if ids[i] == "" {
			return nil
		}
		ctx, cancel := c.ctx()
		defer cancel()
		_, err := c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]})
		return err
	})
}

func runPrefix(kind string) string { return fmt.Sprintf("bench-%s-%d", kind, time.Now().UnixNano()) }

func benchCreate(c *client, args []string) error {
	fs := flag.NewFlagSet("bench create", flag.ExitOnError)
	count := fs.Int("count", 2000, "volumes to create")
	workers := fs.Int("concurrency", 16, "concurrent clients")
	fs.Parse(args)
	ids, lat, wall, err := c.createN(runPrefix("create"), *count, *workers)
	if err != nil {
		c.deleteAll(ids, *workers)
		return err
	}
	fmt.Printf("CreateVolume: %d volumes, %d clients: %.0f/s  (%s)\n", *count, *workers, float64(*count)/wall.Seconds(), latLine(lat))
	dlat, dwall, err := c.deleteAll(ids, *workers)
	if err != nil {
		return err
	}
	fmt.Printf("DeleteVolume: %d volumes, %d clients: %.0f/s  (%s)\n", *count, *workers, float64(*count)/dwall.Seconds(), latLine(dlat))
	return nil
}

func benchScale(c *client, args []string) error {
	fs := flag.NewFlagSet("bench scale", flag.ExitOnError)
	levels := fs.String("existing", "1000,5000", "numbers of existing volumes to measure at, ascending")
	samples := fs.Int("samples", 300, "sequential creates timed at each level")
	fs.Parse(args)
	prefix := runPrefix("scale")
	var filler []string
	defer func() { c.deleteAll(filler, 16) }()
	var p50s []time.Duration
	var counts []int
	for _, l := range strings.Split(*levels, ",") {
		level, err := strconv.Atoi(strings.TrimSpace(l))
		if err != nil || level < len(filler) {
			return fmt.Errorf("bad level %q (levels must ascend)", l)
		}
		more, _, _, err := c.createN(fmt.Sprintf("%s-fill%d", prefix, level), level-len(filler), 16)
		filler = append(filler, more...)
		if err != nil {
			return err
		}
		ids, lat, _, err := c.createN(fmt.Sprintf("%s-at%d", prefix, level), *samples, 1)
		if _, _, derr := c.deleteAll(ids, 16); err == nil {
			err = derr
		}
		if err != nil {
			return err
		}
		fmt.Printf("CreateVolume with %5d existing volumes: %s\n", level, latLine(lat))
		p50s = append(p50s, pct(lat, 50))
		counts = append(counts, level)
	}
	if len(p50s) > 1 {
		fmt.Printf("p50 ratio %d/%d existing: %.2f\n", counts[len(counts)-1], counts[0], float64(p50s[len(p50s)-1])/float64(p50s[0]))
	}
	return nil
}

func benchPublish(c *client, args []string) error {
	fs := flag.NewFlagSet("bench publish", flag.ExitOnError)
	count := fs.Int("count", 200, "volumes to stage and publish, one at a time")
	dir := fs.String("dir", filepath.Join(filepath.Dir(c.socketPath), "bench-mounts"), "where staging and target paths go")
	fs.Parse(args)
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	ids, _, _, err := c.createN(runPrefix("publish"), *count, 16)
	defer c.deleteAll(ids, 16)
	if err != nil {
		return err
	}
	paths := func(i int) (string, string) {
		return filepath.Join(abs, "staging", strconv.Itoa(i)), filepath.Join(abs, "target", strconv.Itoa(i))
	}
	lat := make([]time.Duration, 0, *count)
	var firstErr error
	for i, id := range ids {
		staging, target := paths(i)
		if err := os.MkdirAll(staging, 0o750); err != nil {
			return err
		}
		ctx, cancel := c.ctx()
		t0 := time.Now()
		_, err := c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: rwoCap})
		if err == nil {
			_, err = c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: rwoCap})
		}
		lat = append(lat, time.Since(t0))
		cancel()
		if err != nil {
			firstErr = err
			break
		}
	}
	if firstErr == nil {
		fmt.Printf("NodeStage+NodePublish: %d volumes, one at a time: %s\n", len(lat), latLine(lat))
	}
	ulat, _, err := runParallel(len(ids), 1, func(i int) error {
		staging, target := paths(i)
		ctx, cancel := c.ctx()
		defer cancel()
		if _, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: ids[i], TargetPath: target}); err != nil {
			return err
		}
		_, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: ids[i], StagingTargetPath: staging})
		return err
	})
	// Only empty directories are removed: never RemoveAll over paths that
	// might still be mount points of volumes.
	for i := range ids {
		staging, _ := paths(i)
		os.Remove(staging)
	}
	for _, d := range []string{filepath.Join(abs, "staging"), filepath.Join(abs, "target"), abs} {
		os.Remove(d)
	}
	if firstErr != nil {
		return firstErr
	}
	if err != nil {
		return err
	}
	fmt.Printf("NodeUnpublish+NodeUnstage: %s\n", latLine(ulat))
	return nil
}
