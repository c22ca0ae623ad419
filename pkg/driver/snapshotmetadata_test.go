package driver

import (
	"bytes"
	"errors"
	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// metadataClient serves e's driver on a socket of its own, as the driver's
// binary does, and returns a SnapshotMetadata client of it.
func metadataClient(t *testing.T, e *testEnv) csi.SnapshotMetadataClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	l, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := e.d.NewGRPCServer()
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return csi.NewSnapshotMetadataClient(conn)
}

// answer is what a stream carried: its ranges, and what each message said.
type answer struct {
	ranges   []*csi.BlockMetadata
	messages int
	capacity int64
	err      error
}

type metadataStream[T interface {
	GetBlockMetadataType() csi.BlockMetadataType
	GetVolumeCapacityBytes() int64
	GetBlockMetadata() []*csi.BlockMetadata
}] interface {
	Recv() (T, error)
}

// receive reads a stream to its end and checks what the spec asks of each
// message: one style, one capacity, at most maxResults tuples, tuples in
// increasing order without overlap, none ending before from.
func receive[T interface {
	GetBlockMetadataType() csi.BlockMetadataType
	GetVolumeCapacityBytes() int64
	GetBlockMetadata() []*csi.BlockMetadata
}](t *testing.T, s metadataStream[T], from int64, maxResults int32) answer {
	t.Helper()
	var a answer
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return a
		}
		if err != nil {
			a.err = err
			return a
		}
		a.messages++
		if m.GetBlockMetadataType() != csi.BlockMetadataType_VARIABLE_LENGTH {
			t.Fatalf("message %d: block_metadata_type %v", a.messages, m.GetBlockMetadataType())
		}
		if a.messages > 1 && m.GetVolumeCapacityBytes() != a.capacity {
			t.Fatalf("message %d: capacity %d, before %d", a.messages, m.GetVolumeCapacityBytes(), a.capacity)
		}
		a.capacity = m.GetVolumeCapacityBytes()
		if maxResults > 0 && len(m.GetBlockMetadata()) > int(maxResults) {
			t.Fatalf("message %d: %d tuples, max_results %d", a.messages, len(m.GetBlockMetadata()), maxResults)
		}
		for _, b := range m.GetBlockMetadata() {
			if b.GetSizeBytes() <= 0 || b.GetByteOffset()+b.GetSizeBytes() <= from {
				t.Fatalf("tuple %v (starting_offset %d)", b, from)
			}
			if n := len(a.ranges); n > 0 && a.ranges[n-1].GetByteOffset()+a.ranges[n-1].GetSizeBytes() > b.GetByteOffset() {
				t.Fatalf("tuple %v overlaps or precedes %v", b, a.ranges[n-1])
			}
			a.ranges = append(a.ranges, b)
		}
	}
}

func allocated(t *testing.T, c csi.SnapshotMetadataClient, id string, from int64, maxResults int32) answer {
	t.Helper()
	s, err := c.GetMetadataAllocated(ctx, &csi.GetMetadataAllocatedRequest{SnapshotId: id, StartingOffset: from, MaxResults: maxResults})
	if err != nil {
		return answer{err: err}
	}
	return receive(t, s, from, maxResults)
}

func delta(t *testing.T, c csi.SnapshotMetadataClient, base, target string, from int64, maxResults int32) answer {
	t.Helper()
	s, err := c.GetMetadataDelta(ctx, &csi.GetMetadataDeltaRequest{BaseSnapshotId: base, TargetSnapshotId: target, StartingOffset: from, MaxResults: maxResults})
	if err != nil {
		return answer{err: err}
	}
	return receive(t, s, from, maxResults)
}

// blocksOf are the 4 KiB blocks the tuples cover.
func blocksOf(rs []*csi.BlockMetadata) []int64 {
	var out []int64
	for _, r := range rs {
		for b := r.GetByteOffset() / 4096; b*4096 < r.GetByteOffset()+r.GetSizeBytes(); b++ {
			out = append(out, b)
		}
	}
	return out
}

// scribble writes count random runs (whole blocks, parts of one block,
// unaligned runs across blocks) into a volume's file, as a pod writing to
// its device does, and returns the blocks it reached.
func scribble(t *testing.T, r *rand.Rand, path string, size int64, count int, at ...int64) map[int64]bool {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reached := map[int64]bool{}
	put := func(off, n int64) {
		n = min(n, size-off)
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(1 + r.UintN(255))
		}
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
		for b := off / 4096; b*4096 < off+n; b++ {
			reached[b] = true
		}
	}
	for _, off := range at { // exactly where the caller says (over earlier writes)
		put(off, 4096)
	}
	for range count {
		switch r.IntN(3) {
		case 0:
			put(r.Int64N(size/4096)*4096, (1+r.Int64N(8))*4096)
		case 1:
			put(r.Int64N(size/4096)*4096+r.Int64N(3000), 1+r.Int64N(500))
		default:
			put(r.Int64N(size-1), 1+r.Int64N(3*4096))
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return reached
}

// bruteForceDelta compares two files block by block.
func bruteForceDelta(t *testing.T, a, b string) []int64 {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for off := 0; off < len(y); off += 4096 {
		if !bytes.Equal(x[off:min(off+4096, len(x))], y[off:min(off+4096, len(y))]) {
			out = append(out, int64(off/4096))
		}
	}
	return out
}

func sortedKeys(m ...map[int64]bool) []int64 {
	all := map[int64]bool{}
	for _, x := range m {
		for k := range x {
			all[k] = true
		}
	}
	var out []int64
	for k := range all {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// A block volume on each data filesystem (xfs and btrfs reflink its
// snapshots, ext4 copies them): random writes, a snapshot, random writes
// over and beside the first, another snapshot. Over the socket,
// GetMetadataDelta reports exactly the blocks a byte comparison of the two
// snapshots' files finds changed; GetMetadataAllocated reports exactly the
// blocks written (the rest of the preallocated file was never written);
// and pages of any size, resumed by starting_offset after each one, add up
// to the unpaged answer.
func TestSnapshotMetadataOfABlockVolume(t *testing.T) {
	for _, fs := range []struct {
		name string
		mkfs []string
	}{{"xfs", []string{"-m", "reflink=1"}}, {"btrfs", nil}, {"ext4", nil}} {
		t.Run(fs.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, fs.name, 512, fs.mkfs...)
			cleanupUnder(t, mnt)
			e := newEnvOn(t, mnt)
			c := metadataClient(t, e)
			const size = 32 << 20
			req := createReq("vol", size)
			req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
			made, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			vol := made.GetVolume().GetVolumeId()
			img := e.d.hostpath.vols.ImagePath(vol)
			r := rand.New(rand.NewPCG(3, uint64(len(fs.name))))
			first := scribble(t, r, img, size, 40)
			s1, err := e.d.CreateSnapshot(ctx, snapReq("s1", vol))
			if err != nil {
				t.Fatal(err)
			}
			var over []int64
			for b := range first {
				if len(over) < 5 {
					over = append(over, b*4096)
				}
			}
			second := scribble(t, r, img, size, 40, over...)
			s2, err := e.d.CreateSnapshot(ctx, snapReq("s2", vol))
			if err != nil {
				t.Fatal(err)
			}
			id1, id2 := s1.GetSnapshot().GetSnapshotId(), s2.GetSnapshot().GetSnapshotId()
			file := func(id string) string { return filepath.Join(e.d.hostpath.vols.SnapshotPath(id), "disk.img") }

			d := delta(t, c, id1, id2, 0, 0)
			if d.err != nil {
				t.Fatal(d.err)
			}
			if d.capacity != size {
				t.Fatalf("volume_capacity_bytes %d, want %d", d.capacity, size)
			}
			if got, want := blocksOf(d.ranges), bruteForceDelta(t, file(id1), file(id2)); !slices.Equal(got, want) {
				t.Fatalf("GetMetadataDelta reports blocks %v\na byte comparison finds %v", got, want)
			}
			a := allocated(t, c, id2, 0, 0)
			if a.err != nil {
				t.Fatal(a.err)
			}
			if got, want := blocksOf(a.ranges), sortedKeys(first, second); !slices.Equal(got, want) {
				t.Fatalf("GetMetadataAllocated reports blocks %v\nthe writes reached %v", got, want)
			}
			if a1 := allocated(t, c, id1, 0, 0); !slices.Equal(blocksOf(a1.ranges), sortedKeys(first)) {
				t.Fatalf("GetMetadataAllocated of the first snapshot reports blocks %v\nits writes reached %v", blocksOf(a1.ranges), sortedKeys(first))
			}
			if same := delta(t, c, id2, id2, 0, 0); same.err != nil || len(same.ranges) != 0 || same.messages != 1 {
				t.Fatalf("a snapshot against itself: %d ranges in %d messages, %v", len(same.ranges), same.messages, same.err)
			}

			for _, page := range []int32{1, 3, 7} {
				for name, call := range map[string]func(from int64) answer{
					"delta":     func(from int64) answer { return delta(t, c, id1, id2, from, page) },
					"allocated": func(from int64) answer { return allocated(t, c, id2, from, page) },
				} {
					whole := map[string]answer{"delta": d, "allocated": a}[name]
					var got []*csi.BlockMetadata
					from := int64(0)
					for calls := 0; ; calls++ {
						p := call(from)
						if p.err != nil {
							t.Fatalf("%s page from %d: %v", name, from, p.err)
						}
						if len(p.ranges) == 0 {
							break
						}
						// Take the first message's worth only, as a caller
						// cut off after it would, and resume after it.
						p.ranges = p.ranges[:min(len(p.ranges), int(page))]
						got = append(got, p.ranges...)
						last := p.ranges[len(p.ranges)-1]
						from = last.GetByteOffset() + last.GetSizeBytes()
						if calls > len(whole.ranges) {
							t.Fatalf("%s: more calls than ranges", name)
						}
					}
					if !slices.EqualFunc(got, whole.ranges, func(x, y *csi.BlockMetadata) bool {
						return x.GetByteOffset() == y.GetByteOffset() && x.GetSizeBytes() == y.GetSizeBytes()
					}) {
						t.Fatalf("%s in pages of %d resumed by starting_offset: %v\nunpaged: %v", name, page, got, whole.ranges)
					}
					if whole := call(0); whole.messages != (len(whole.ranges)+int(page)-1)/int(page) {
						t.Fatalf("%s with max_results %d: %d ranges in %d messages", name, page, len(whole.ranges), whole.messages)
					}
				}
			}
		})
	}
}

// What the spec's error tables name, each with its code.
func TestSnapshotMetadataErrors(t *testing.T) {
	e := newEnv(t)
	c := metadataClient(t, e)
	block := func(name string) string {
		req := createReq(name, 1<<20)
		req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
		r, err := e.d.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return r.GetVolume().GetVolumeId()
	}
	snap := func(name, vol string) string {
		r, err := e.d.CreateSnapshot(ctx, snapReq(name, vol))
		if err != nil {
			t.Fatal(err)
		}
		return r.GetSnapshot().GetSnapshotId()
	}
	vol, other := block("vol"), block("other")
	s1, s2, o1 := snap("s1", vol), snap("s2", vol), snap("o1", other)
	dir := snap("d1", e.create(t, "dir"))
	imgReq := createReq("img", 1<<20)
	imgReq.Parameters = map[string]string{ParamLayout: LayoutImage}
	made, err := e.d.CreateVolume(ctx, imgReq)
	if err != nil {
		t.Fatal(err)
	}
	imgSnap, imgSize := snap("i1", made.GetVolume().GetVolumeId()), made.GetVolume().GetCapacityBytes()
	unknown := "hps1-00000000000000000000000000000000"

	for _, tc := range []struct {
		name string
		call func() answer
		code codes.Code
	}{
		{"allocated: no snapshot ID", func() answer { return allocated(t, c, "", 0, 0) }, codes.InvalidArgument},
		{"allocated: unknown snapshot", func() answer { return allocated(t, c, unknown, 0, 0) }, codes.NotFound},
		{"allocated: an ID no snapshot can have", func() answer { return allocated(t, c, "../etc", 0, 0) }, codes.NotFound},
		{"allocated: negative starting_offset", func() answer { return allocated(t, c, s1, -1, 0) }, codes.OutOfRange},
		{"allocated: starting_offset past the capacity", func() answer { return allocated(t, c, s1, 1<<20+1, 0) }, codes.OutOfRange},
		{"allocated: starting_offset at the capacity", func() answer { return allocated(t, c, s1, 1<<20, 0) }, codes.OK},
		{"allocated: negative max_results", func() answer { return allocated(t, c, s1, 0, -1) }, codes.InvalidArgument},
		{"allocated: snapshot of a directory volume", func() answer { return allocated(t, c, dir, 0, 0) }, codes.InvalidArgument},
		{"allocated: snapshot of an NFS volume", func() answer { return allocated(t, c, "nfss1:nfs.example:/export:0123456789abcdef", 0, 0) }, codes.InvalidArgument},
		{"delta: no base", func() answer { return delta(t, c, "", s2, 0, 0) }, codes.InvalidArgument},
		{"delta: no target", func() answer { return delta(t, c, s1, "", 0, 0) }, codes.InvalidArgument},
		{"delta: unknown base", func() answer { return delta(t, c, unknown, s2, 0, 0) }, codes.NotFound},
		{"delta: unknown target", func() answer { return delta(t, c, s1, unknown, 0, 0) }, codes.NotFound},
		{"delta: negative starting_offset", func() answer { return delta(t, c, s1, s2, -4096, 0) }, codes.OutOfRange},
		{"delta: starting_offset past the capacity", func() answer { return delta(t, c, s1, s2, 2<<20, 0) }, codes.OutOfRange},
		{"delta: negative max_results", func() answer { return delta(t, c, s1, s2, 0, -5) }, codes.InvalidArgument},
		{"delta: snapshots of different volumes", func() answer { return delta(t, c, s1, o1, 0, 0) }, codes.InvalidArgument},
		{"delta: target taken before base", func() answer { return delta(t, c, s2, s1, 0, 0) }, codes.InvalidArgument},
		{"delta: a directory volume's snapshot", func() answer { return delta(t, c, dir, dir, 0, 0) }, codes.InvalidArgument},
		{"delta: an NFS snapshot", func() answer { return delta(t, c, s1, "nfss1:nfs.example:/export:0123456789abcdef", 0, 0) }, codes.InvalidArgument},
		{"delta: two snapshots of one volume", func() answer { return delta(t, c, s1, s2, 0, 0) }, codes.OK},
		{"allocated: snapshot of an image volume", func() answer { return allocated(t, c, imgSnap, 0, 0) }, codes.OK},
		{"delta: an image volume's snapshot against itself", func() answer { return delta(t, c, imgSnap, imgSnap, 0, 0) }, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := tc.call()
			if got := status.Code(a.err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, a.err, tc.code)
			}
			want := int64(1 << 20)
			if strings.Contains(tc.name, "image") {
				want = imgSize
			}
			if tc.code == codes.OK && (a.messages != 1 || a.capacity != want) {
				t.Fatalf("an empty answer is one message that says the capacity: %d messages, capacity %d", a.messages, a.capacity)
			}
		})
	}
}

// A walk holds its snapshots: a delete meanwhile waits for it, and is
// ABORTED when its own deadline comes first.
func TestSnapshotMetadataHoldsItsSnapshots(t *testing.T) {
	e := newEnv(t)
	req := createReq("vol", 1<<20)
	req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	r, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	s, err := e.d.CreateSnapshot(ctx, snapReq("s", r.GetVolume().GetVolumeId()))
	if err != nil {
		t.Fatal(err)
	}
	id := s.GetSnapshot().GetSnapshotId()
	snaps, unlock, err := e.d.hostpath.blockSnapshots(ctx, id)
	if err != nil || len(snaps) != 1 {
		t.Fatalf("blockSnapshots: %v %v", snaps, err)
	}
	_, err = e.d.DeleteSnapshot(deadline(t, 200e6), &csi.DeleteSnapshotRequest{SnapshotId: id})
	wantCode(t, err, codes.Aborted)
	unlock()
	if _, err := e.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
		t.Fatal(err)
	}
}

// The service is served, and said to be, where hostpath snapshots are made:
// by a controller that serves hostpath classes.
func TestSnapshotMetadataCapability(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
		want  bool
	}{
		{"controller and node", nil, true},
		{"node only", func(c *Config) { c.Controller = false }, false},
		{"NFS-only controller", func(c *Config) { c.Node, c.NFSOnly = false, true }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnvWith(t, t.TempDir(), tc.tweak)
			caps, err := e.d.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			said := false
			for _, c := range caps.GetCapabilities() {
				said = said || c.GetService().GetType() == csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE
			}
			if said != tc.want {
				t.Fatalf("SNAPSHOT_METADATA_SERVICE advertised: %v, want %v", said, tc.want)
			}
			a := allocated(t, metadataClient(t, e), "hps1-00000000000000000000000000000000", 0, 0)
			if want := map[bool]codes.Code{true: codes.NotFound, false: codes.Unimplemented}[tc.want]; status.Code(a.err) != want {
				t.Fatalf("GetMetadataAllocated: %v, want %v", a.err, want)
			}
		})
	}
}

// A caller's max_results larger than the bound gets messages of at most
// maxPageResults ranges: the answer is never held whole in memory.
func TestPagerBoundsAHugeMaxResults(t *testing.T) {
	const ranges = 3 * maxPageResults
	var biggest, sends int
	p := newPager(math.MaxInt32, func(b []*csi.BlockMetadata) error {
		sends++
		biggest = max(biggest, len(b))
		return nil
	})
	for i := range int64(ranges) {
		if err := p.add(hostpath.Range{Offset: 2 * i * 4096, Length: 4096}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.finish(); err != nil {
		t.Fatal(err)
	}
	if biggest > maxPageResults || sends < 3 {
		t.Fatalf("max_results %d: %d messages, the largest of %d ranges; want at most %d each", math.MaxInt32, sends, biggest, maxPageResults)
	}
}
