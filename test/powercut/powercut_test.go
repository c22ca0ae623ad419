// Package powercut cuts the power of a VM running the real driver on its
// own disk, at random moments under a create/snapshot/restore/clone/delete
// load, and checks after each boot that every acknowledged volume and
// snapshot is there with its data, that acknowledged deletes stay deleted,
// and that nothing half made is listed or left on the disk. Some of the
// volumes are restores across nodes: a second driver in the guest, the
// "sender" (never judged), holds a snapshot that the judged driver fetches
// from it over the transfer channel, so cuts land mid-transfer too.
// Killing qemu
// loses the guest's page cache exactly as a power cut would; what the guest
// had written to its disk survives (see test/vm).
//
// The guest program (./guest) reports each call on a serial port before it
// makes it and again when it is answered; the host keeps the record from
// what reached it before the power went, and judges every boot's check
// against that record.
package powercut

import (
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
	"github.com/hostpath-csi/hostpath-csi/test/powercut/proto"
	"github.com/hostpath-csi/hostpath-csi/test/vm"
)

const (
	workers = 4
	// maxCutDelay bounds how long after the load starts the power goes;
	// the moment is uniform below it.
	maxCutDelay = 8 * time.Second
	// bootTimeout bounds one boot's check phase (software emulation on a
	// shared machine is slow, but not this slow).
	bootTimeout = 5 * time.Minute
)

// TestPowerCut runs HOSTPATH_POWERCUT_CUTS power cuts (default 2) with the
// driver's state and data on ext4, then on xfs with reflinks; `make
// powercut` runs many more. HOSTPATH_POWERCUT_FS=ext4 (or xfs) runs one.
func TestPowerCut(t *testing.T) {
	cuts := 2
	if s := os.Getenv("HOSTPATH_POWERCUT_CUTS"); s != "" {
		var err error
		if cuts, err = strconv.Atoi(s); err != nil || cuts < 0 {
			t.Fatalf("HOSTPATH_POWERCUT_CUTS=%q: want a number of cuts", s)
		}
	}
	k := vm.Require(t)
	bin := buildGuest(t, k)
	for _, fs := range []string{"ext4", "xfs"} {
		if want := os.Getenv("HOSTPATH_POWERCUT_FS"); want != "" && want != fs {
			continue
		}
		t.Run(fs, func(t *testing.T) { runCuts(t, k, bin, fs, cuts) })
	}
}

// buildGuest builds the driver and the guest program, static, and the
// initramfs that carries them.
func buildGuest(t *testing.T, k *vm.Kernel) (initrd string) {
	dir := t.TempDir()
	for out, pkg := range map[string]string{
		"hostpath-plugin": "github.com/hostpath-csi/hostpath-csi/cmd/hostpath-plugin",
		"powercut-guest":  "github.com/hostpath-csi/hostpath-csi/test/powercut/guest",
	} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, out), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	r := &vm.Initramfs{
		Kernel: k,
		// crc32c: ext4's metadata checksums and xfs ask the crypto API for
		// it by name, which needs the module loaded first.
		Modules: []string{"virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "xfs"},
		Files: map[string]string{
			"/bin/hostpath-plugin": filepath.Join(dir, "hostpath-plugin"),
			"/bin/powercut-guest":  filepath.Join(dir, "powercut-guest"),
		},
		Script: "/bin/powercut-guest -plan /dev/vdb -port /dev/ttyS1 -disk /dev/vda -plugin /bin/hostpath-plugin\n",
	}
	initrd = filepath.Join(dir, "initrd")
	if err := r.Write(initrd); err != nil {
		t.Fatal(err)
	}
	return initrd
}

// makeDisk makes the guest's data disk: a filesystem in an image file,
// made on the host (nothing is mounted here).
func makeDisk(t *testing.T, fs string) string {
	img := filepath.Join(t.TempDir(), fs+".img")
	// Room for the sender's seed and the restores of it the load makes
	// (ext4 copies every clone and snapshot of one whole); the image is
	// sparse.
	size, args := int64(1<<30), []string{"-q", "-F"}
	if fs == "xfs" {
		args = []string{"-q", "-f", "-m", "reflink=1"}
	}
	mkfs := testutil.RequireMkfs(t, fs)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v\n%s", fs, err, out)
	}
	return img
}

// events collects the guest's event lines as they arrive.
type events struct {
	mu      sync.Mutex
	list    []proto.Event
	garbled []string
	more    chan struct{}
}

func (ev *events) add(line string) {
	e, ok := proto.Decode(line)
	ev.mu.Lock()
	if ok {
		ev.list = append(ev.list, e)
	} else {
		ev.garbled = append(ev.garbled, line)
	}
	ev.mu.Unlock()
	select {
	case ev.more <- struct{}{}:
	default:
	}
}

// next returns the event after the first i, waiting until one arrives, the
// machine is gone (ok false), or the deadline passes (ok false).
func (ev *events) next(i int, done <-chan struct{}, deadline <-chan time.Time) (proto.Event, bool) {
	for {
		ev.mu.Lock()
		if i < len(ev.list) {
			e := ev.list[i]
			ev.mu.Unlock()
			return e, true
		}
		ev.mu.Unlock()
		select {
		case <-ev.more:
		case <-done:
			// Done is closed only once every line was delivered.
			ev.mu.Lock()
			n := len(ev.list)
			ev.mu.Unlock()
			if i < n {
				continue
			}
			return proto.Event{}, false
		case <-deadline:
			return proto.Event{}, false
		}
	}
}

// console keeps one boot's console lines.
type console struct {
	mu    sync.Mutex
	lines []string
}

func (c *console) add(l string) {
	c.mu.Lock()
	c.lines = append(c.lines, l)
	c.mu.Unlock()
}

// tail is what a failure report shows: the guest's own lines, the driver's
// warnings and errors from start-up, and the last lines.
func (c *console) tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var keep []string
	for i, l := range c.lines {
		if strings.HasPrefix(l, "guest:") || strings.HasPrefix(l, "plugin: E") || strings.HasPrefix(l, "plugin: W") ||
			strings.HasPrefix(l, "sender: E") || strings.HasPrefix(l, "sender: W") ||
			strings.Contains(l, "crash interrupted") || strings.Contains(l, "quarantine") || i >= len(c.lines)-15 {
			keep = append(keep, l)
		}
	}
	if len(keep) > 80 {
		keep = keep[len(keep)-80:]
	}
	return strings.Join(keep, "\n")
}

// stats are the figures the summary line reports.
type stats struct {
	boots, checks, failures int
	bootToReady             time.Duration
	loadAcks                int
	byCat                   map[string]int
	firstFailedCut          int // 0: none yet
	// Restores across nodes: acknowledged, and what the cuts did to those
	// in flight (summed over the boots after a cut).
	remote remoteCut
	seed   *proto.Event // the sender's seed, as the first boot made it
	// atCut is what the judged driver's partial/ held at the last cut
	// (entry -> bytes), from the load's last progress report.
	atCut map[string]int64
	// remoteTime sums how long the acknowledged restores across nodes of
	// the load took, from intent to ack as the host saw them.
	remoteTime, remoteMax time.Duration
	remoteTimed           int
}

func (st *stats) failed(t *testing.T, cut int, cat, format string, args ...any) {
	t.Helper()
	st.failures++
	st.byCat[cat]++
	if st.firstFailedCut == 0 {
		st.firstFailedCut = cut
	}
	t.Errorf(format, args...)
}

// summary lists the failures by kind.
func (st *stats) summary() string {
	if st.failures == 0 {
		return "no failures"
	}
	var parts []string
	for _, cat := range slices.Sorted(maps.Keys(st.byCat)) {
		parts = append(parts, fmt.Sprintf("%d %s", st.byCat[cat], cat))
	}
	return fmt.Sprintf("%d failures, the first after cut %d: %s", st.failures, st.firstFailedCut, strings.Join(parts, ", "))
}

// progress reads a progress report: partial/'s entries and their bytes.
func progress(e proto.Event) map[string]int64 {
	m := map[string]int64{}
	for _, s := range e.Entries {
		name, n, _ := strings.Cut(s, " ")
		m[name], _ = strconv.ParseInt(n, 10, 64)
	}
	return m
}

// String says what a check saw of the restores across nodes the last cut
// left unanswered ("" when there were none).
func (rc remoteCut) String() string {
	if rc.unanswered == 0 {
		return ""
	}
	return fmt.Sprintf(" (of %d restores across nodes the cut left unanswered, %d rolled back, %d cut mid-transfer with %.1f MiB received, %.1f MiB of it on disk)",
		rc.unanswered, rc.rolledBack, rc.received, float64(rc.bytes)/(1<<20), float64(rc.onDisk)/(1<<20))
}

func runCuts(t *testing.T, k *vm.Kernel, initrd, fs string, cuts int) {
	disk := makeDisk(t, fs)
	planImg := filepath.Join(t.TempDir(), "plan.img")
	rec := newRecord()
	st := stats{byCat: map[string]int{}}
	start := time.Now()
	for boot := 1; boot <= cuts+1; boot++ {
		final := boot == cuts+1
		bootOnce(t, k, initrd, disk, planImg, fs, rec, boot, final, &st)
	}
	t.Logf("%s: %d cuts, %d boots, %d acknowledged operations (%d in load phases), %d checks made, %s; "+
		"per boot: %.1f s from qemu start to driver ready; per cut: %.1f s (%.1f s in all)",
		fs, cuts, st.boots, rec.acks, st.loadAcks, st.checks, st.summary(),
		st.bootToReady.Seconds()/float64(st.boots), time.Since(start).Seconds()/float64(max(cuts, 1)), time.Since(start).Seconds())
	if st.seed == nil {
		return
	}
	var took string
	if st.remoteTimed > 0 {
		took = fmt.Sprintf(" (those of the load took %.1f s on average, %.1f s at most)", st.remoteTime.Seconds()/float64(st.remoteTimed), st.remoteMax.Seconds())
	}
	t.Logf("%s: restores across nodes (%d MiB each): %d acknowledged%s; %d unanswered at a cut, of which %d had begun "+
		"(rolled back at the next start) and %d were cut mid-transfer (%.1f MiB received at the cuts, %.1f MiB of it on disk after)",
		fs, st.seed.Size>>20, rec.remoteAcks, took, st.remote.unanswered, st.remote.rolledBack, st.remote.received,
		float64(st.remote.bytes)/(1<<20), float64(st.remote.onDisk)/(1<<20))
}

// bootOnce boots the VM on the disk, judges its check, and (unless final)
// cuts its power at a random moment of the load.
func bootOnce(t *testing.T, k *vm.Kernel, initrd, disk, planImg, fs string, rec *record, boot int, final bool, st *stats) {
	t.Helper()
	plan := rec.plan(boot, fs, final, workers)
	if err := proto.WritePlan(planImg, plan); err != nil {
		t.Fatal(err)
	}
	deletedVols, deletedSnaps := maps.Clone(rec.deletedVols), maps.Clone(rec.deletedSnaps)
	ev := &events{more: make(chan struct{}, 1)}
	con := &console{}
	m, err := vm.Start(vm.Config{Kernel: k, Initramfs: initrd, MemoryMiB: 1024,
		Disks:  []vm.Disk{{Path: disk}, {Path: planImg, ReadOnly: true}},
		Serial: []io.Writer{vm.NewLineWriter(con.add), vm.NewLineWriter(ev.add)}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	st.boots++
	what := fmt.Sprintf("boot %d (after cut %d)", boot, boot-1)
	if boot == 1 {
		what = "boot 1 (fresh disk)"
	}

	// The check phase.
	obs := newObservation()
	deadline := time.After(bootTimeout)
	i := 0
	for !obs.checkDone {
		e, ok := ev.next(i, m.Done(), deadline)
		if !ok {
			break
		}
		i++
		if e.Kind == proto.KindStarted {
			st.bootToReady += m.Uptime()
		}
		if e.Kind == proto.KindIntent || e.Kind == proto.KindAck {
			rec.apply(e, boot)
		}
		obs.take(e)
	}
	switch {
	case obs.seed == nil && obs.started:
		m.Kill()
		t.Fatalf("%s, %s: the guest did not report the sender's seed snapshot; console:\n%s", fs, what, con.tail())
	case obs.seed != nil && st.seed == nil:
		st.seed = obs.seed
	case obs.seed != nil && (obs.seed.ID != st.seed.ID || obs.seed.Sum != st.seed.Sum):
		t.Fatalf("%s, %s: the seed is now %s (sha256 %.12s), the first boot made %s (sha256 %.12s)",
			fs, what, obs.seed.ID, obs.seed.Sum, st.seed.ID, st.seed.Sum)
	}
	rc := remoteCuts(plan, st.atCut, obs)
	st.remote.unanswered += rc.unanswered
	st.remote.rolledBack += rc.rolledBack
	st.remote.received += rc.received
	st.remote.bytes += rc.bytes
	st.remote.onDisk += rc.onDisk
	failures, checks, broken := judge(plan, deletedVols, deletedSnaps, rec.damaged, obs)
	for _, id := range broken {
		rec.damaged[id] = true
	}
	st.checks += checks
	for _, f := range failures {
		st.failed(t, boot-1, f.cat, "%s, %s: %s", fs, what, f.msg)
	}
	if !obs.checkDone {
		m.Kill()
		t.Fatalf("%s, %s: no end of the check within %s (qemu: %v); console:\n%s", fs, what, bootTimeout, m.Err(), con.tail())
	}
	if len(failures) > 0 {
		t.Logf("%s console:\n%s", what, con.tail())
	}
	rec.adopt(obs.state, boot)

	if final {
		t.Logf("%s, %s (final): check: %d volumes and %d snapshots listed, %d checks, %d failures%s",
			fs, what, len(obs.vols), len(obs.snaps), checks, len(failures), rc)
		if err := m.WaitTimeout(bootTimeout); err != nil {
			t.Errorf("%s, final boot: %v; console:\n%s", fs, err, con.tail())
		}
		for ; ; i++ {
			e, ok := ev.next(i, m.Done(), nil)
			if !ok {
				t.Errorf("%s, final boot: the guest did not shut the driver down cleanly; console:\n%s", fs, con.tail())
				return
			}
			if e.Kind == proto.KindFail {
				t.Errorf("%s, final boot: the guest reports: %s", fs, e.Msg)
			}
			if e.Kind == proto.KindFinal {
				return
			}
		}
	}

	// The load phase: cut the power at a random moment once it has begun.
	var cut <-chan time.Time
	var cutAfter time.Duration
	acksBefore, remoteBefore := rec.acks, rec.remoteAcks
	st.atCut = map[string]int64{}
	remoteStart := map[string]time.Time{}
	for {
		e, ok := ev.next(i, m.Done(), cut)
		if !ok {
			break
		}
		i++
		switch e.Kind {
		case proto.KindLoadStart:
			cutAfter = time.Duration(mrand.Int64N(int64(maxCutDelay)))
			cut = time.After(cutAfter)
		case proto.KindProgress:
			st.atCut = progress(e)
		case proto.KindIntent, proto.KindAck:
			if e.Op == proto.OpCreateVol && e.Src == proto.RemoteSeed {
				if e.Kind == proto.KindIntent {
					remoteStart[e.Name] = time.Now()
				} else if t0, ok := remoteStart[e.Name]; ok {
					d := time.Since(t0)
					st.remoteTime += d
					st.remoteMax = max(st.remoteMax, d)
					st.remoteTimed++
				}
			}
			rec.apply(e, boot)
		case proto.KindFail:
			st.failed(t, boot, catCall, "%s, %s, load: the guest reports: %s", fs, what, e.Msg)
		}
	}
	if cut == nil {
		t.Fatalf("%s, %s: the load never started (qemu: %v); console:\n%s", fs, what, m.Err(), con.tail())
	}
	m.Kill() // the power cut
	// What the guest had sent before the cut still counts.
	for ; ; i++ {
		e, ok := ev.next(i, m.Done(), nil)
		if !ok {
			break
		}
		if e.Kind == proto.KindIntent || e.Kind == proto.KindAck {
			rec.apply(e, boot)
		}
		if e.Kind == proto.KindProgress {
			st.atCut = progress(e)
		}
		if e.Kind == proto.KindFail {
			st.failed(t, boot, catCall, "%s, %s, load: the guest reports: %s", fs, what, e.Msg)
		}
	}
	st.loadAcks += rec.acks - acksBefore
	inFlight := 0
	for _, o := range rec.vols {
		if o.State == proto.Creating && o.Src == proto.RemoteSeed && o.Boot == boot {
			inFlight++
		}
	}
	t.Logf("%s, %s: check: %d volumes and %d snapshots listed, %d checks, %d failures%s; load: %d calls acknowledged "+
		"(%d restores across nodes) before the cut at %.1f s, %d restores across nodes unanswered",
		fs, what, len(obs.vols), len(obs.snaps), checks, len(failures), rc, rec.acks-acksBefore, rec.remoteAcks-remoteBefore, cutAfter.Seconds(), inFlight)
}
