package driver

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/peers"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// Two nodes in one process: node-a holds the sources and serves them on
// loopback; node-b holds none and fetches them.

func writeKeys(t testing.TB, path string, ids ...string) {
	t.Helper()
	var b bytes.Buffer
	for _, id := range ids {
		k := make([]byte, 32)
		rand.Read(k)
		fmt.Fprintf(&b, "%s %s\n", id, base64.StdEncoding.EncodeToString(k))
	}
	if err := os.WriteFile(path, b.Bytes(), 0o400); err != nil {
		t.Fatal(err)
	}
}

type twoNodes struct {
	a, b *testEnv
	keys string
}

// newTwoNodes starts node-a serving and node-b fetching from it, with the
// same key file unless bKeys names another; tweakA/tweakB change either.
func newTwoNodes(t *testing.T, bKeys string, tweakA, tweakB func(*Config)) *twoNodes {
	t.Helper()
	testutil.RequireRoot(t)
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	writeKeys(t, keys, "k1")
	if bKeys == "" {
		bKeys = keys
	}
	n := &twoNodes{keys: keys}
	n.a = newEnvWith(t, filepath.Join(dir, "a"), func(c *Config) {
		c.NodeID = "node-a"
		c.Transfer = TransferConfig{Listen: "127.0.0.1:0", Keys: keys}
		if tweakA != nil {
			tweakA(c)
		}
	})
	addr := n.a.d.TransferAddr()
	n.b = newEnvWith(t, filepath.Join(dir, "b"), func(c *Config) {
		c.NodeID = "node-b"
		c.Transfer = TransferConfig{Keys: bKeys, Peers: peers.Static{{Node: "node-a", Addr: n.a.d.TransferAddr()}}}
		if tweakB != nil {
			tweakB(c)
		}
	})
	if addr == "" {
		t.Fatal("node-a serves no transfers")
	}
	return n
}

// createOn retries CreateVolume as csi-provisioner does while a copy runs
// (ABORTED, or the call's deadline), for up to a minute.
func createOn(t *testing.T, e *testEnv, req *csi.CreateVolumeRequest) (*csi.Volume, error) {
	t.Helper()
	end := time.Now().Add(time.Minute)
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := e.d.CreateVolume(c, req)
		cancel()
		if c := status.Code(err); (c != codes.Aborted && c != codes.DeadlineExceeded) || time.Now().After(end) {
			return resp.GetVolume(), err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRestoreAndCloneFromAnotherNode(t *testing.T) {
	n := newTwoNodes(t, "", nil, nil)
	for _, tc := range []struct {
		name   string
		params map[string]string
		block  bool
	}{
		{"directory", nil, false},
		{"ext4 image", map[string]string{ParamLayout: LayoutImage}, false},
		{"block", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := createReq("src-"+tc.name, 64<<20)
			req.Parameters = tc.params
			if tc.block {
				req.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
			}
			src, err := n.a.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			srcID := src.GetVolume().GetVolumeId()
			srcDir := n.a.d.hostpath.vols.Path(srcID)
			if tc.params == nil && !tc.block {
				testutil.WriteSampleTree(t, srcDir, 50)
			} else {
				// The image file itself, with data at its start and end.
				img := filepath.Join(srcDir, imageFileOf(t, srcDir))
				f, err := os.OpenFile(img, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt(bytes.Repeat([]byte("head"), 1024), 1<<20)
				f.WriteAt(bytes.Repeat([]byte("tail"), 1024), 60<<20)
				f.Close()
			}
			snap, err := n.a.d.CreateSnapshot(ctx, snapReq("snap-"+tc.name, srcID))
			if err != nil {
				t.Fatal(err)
			}
			snapDir := n.a.d.hostpath.vols.SnapshotPath(snap.GetSnapshot().GetSnapshotId())
			want := manifestOf(t, snapDir, tc.params != nil || tc.block)

			for _, mk := range []struct {
				what string
				req  *csi.CreateVolumeRequest
			}{
				{"restore", fromSnapshot("restored-"+tc.name, 64<<20, snap.GetSnapshot().GetSnapshotId())},
				{"clone", fromVolume("cloned-"+tc.name, 64<<20, srcID)},
			} {
				mk.req.Parameters, mk.req.VolumeCapabilities = req.Parameters, req.VolumeCapabilities
				v, err := createOn(t, n.b, mk.req)
				if err != nil {
					t.Fatalf("%s on node-b: %v", mk.what, err)
				}
				dst := n.b.d.hostpath.vols.Path(v.GetVolumeId())
				if got := manifestOf(t, dst, tc.params != nil || tc.block); testutil.DiffManifests(want, got) != "" {
					t.Errorf("%s on node-b differs from node-a's source:\n%s", mk.what, testutil.DiffManifests(want, got))
				}
				if v.GetContentSource() == nil {
					t.Errorf("%s: no content source in the answer", mk.what)
				}
				if _, err := os.Stat(n.a.d.hostpath.vols.Path(v.GetVolumeId())); err == nil {
					t.Errorf("%s: made on node-a too", mk.what)
				}
				// A retry of the same name answers the same volume.
				again, err := n.b.d.CreateVolume(ctx, mk.req)
				if err != nil || again.GetVolume().GetVolumeId() != v.GetVolumeId() {
					t.Errorf("%s retried: %v, %v; want volume %s", mk.what, again, err, v.GetVolumeId())
				}
			}
		})
	}
	// Nothing is left in node-a's partial/ once the sends ended.
	if left, _ := os.ReadDir(filepath.Join(n.a.dataDir, "partial")); len(left) != 0 {
		t.Errorf("node-a's partial/ holds %d entries after the transfers", len(left))
	}
}

// manifestOf is the tree's manifest; for an image, without its file's
// mtime, which the fit to the new volume's capacity sets (as in a restore
// on the same node).
func manifestOf(t *testing.T, dir string, image bool) []string {
	m := testutil.TreeManifest(t, dir)
	if image {
		for i := range m {
			m[i] = mtimeField.ReplaceAllString(m[i], "")
		}
	}
	return m
}

var mtimeField = regexp.MustCompile(` mtime=[0-9.]+`)

func imageFileOf(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("volume directory %s: %v entries, %v; want one image file", dir, len(ents), err)
	}
	return ents[0].Name()
}

func TestFetchFromAnotherNodeRefusals(t *testing.T) {
	dir := t.TempDir()
	wrong := filepath.Join(dir, "wrong-keys")
	writeKeys(t, wrong, "k1") // the same key ID, another secret
	n := newTwoNodes(t, wrong, nil, nil)
	src := n.a.create(t, "src")
	snap, err := n.a.d.CreateSnapshot(ctx, snapReq("snap", src))
	if err != nil {
		t.Fatal(err)
	}
	_, err = n.b.d.CreateVolume(ctx, fromSnapshot("restored", 1<<20, snap.GetSnapshot().GetSnapshotId()))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("restore with the wrong key: %v, want Unavailable", err)
	}
	_, err = n.b.d.CreateVolume(ctx, fromVolume("cloned", 1<<20, src))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("clone with the wrong key: %v, want Unavailable", err)
	}
	list, err := n.b.d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Fatalf("node-b lists %v (%v) after refused fetches; want nothing", list.GetEntries(), err)
	}
}

func TestFetchOfWhatNoNodeHolds(t *testing.T) {
	n := newTwoNodes(t, "", nil, nil)
	_, err := n.b.d.CreateVolume(ctx, fromSnapshot("restored", 1<<20, "hps1-0123456789abcdef0123456789abcdef"))
	wantCode(t, err, codes.NotFound)
	_, err = n.b.d.CreateVolume(ctx, fromVolume("cloned", 1<<20, "hpv1-0123456789abcdef0123456789abcdef"))
	wantCode(t, err, codes.NotFound)
}

// A delete of a snapshot while another node fetches it is ABORTED at once
// (it is a copy's source), and succeeds after.
func TestDeleteOfASnapshotBeingSent(t *testing.T) {
	n := newTwoNodes(t, "", func(c *Config) { c.Transfer.RateBytesPerSec = 4 << 20 }, nil)
	req := createReq("src", 64<<20)
	src, err := n.a.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 24<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(n.a.d.hostpath.vols.Path(src.GetVolume().GetVolumeId()), "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := n.a.d.CreateSnapshot(ctx, snapReq("snap", src.GetVolume().GetVolumeId()))
	if err != nil {
		t.Fatal(err)
	}
	snapID := snap.GetSnapshot().GetSnapshotId()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = n.b.d.CreateVolume(short, fromSnapshot("restored", 64<<20, snapID))
	cancel()
	wantPending(t, err) // the fetch goes on without its caller
	var delErr error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, delErr = n.a.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID}); status.Code(delErr) == codes.Aborted {
			break
		}
	}
	if status.Code(delErr) != codes.Aborted {
		t.Fatalf("DeleteSnapshot during its transfer: %v, want Aborted", delErr)
	}
	v, err := createOn(t, n.b, fromSnapshot("restored", 64<<20, snapID))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(n.b.d.hostpath.vols.Path(v.GetVolumeId()), "data"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored data: %d bytes, %v; want the source's %d", len(got), err, len(data))
	}
	if _, err := n.a.d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapID}); err != nil {
		t.Fatalf("DeleteSnapshot after the transfer: %v", err)
	}
}

// node-a stops in the middle of a send: node-b's restore fails with
// UNAVAILABLE naming node-a, not a hang; nothing of it is left or listed;
// once node-a is back, the retry restores it whole.
func TestSenderGoneMidTransfer(t *testing.T) {
	n := newTwoNodes(t, "", func(c *Config) { c.Transfer.RateBytesPerSec = 4 << 20 }, func(c *Config) { c.Transfer.IdleTimeout = 2 * time.Second })
	src, err := n.a.d.CreateVolume(ctx, createReq("src", 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 32<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(n.a.d.hostpath.vols.Path(src.GetVolume().GetVolumeId()), "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := n.a.d.CreateSnapshot(ctx, snapReq("snap", src.GetVolume().GetVolumeId()))
	if err != nil {
		t.Fatal(err)
	}
	req := fromSnapshot("restored", 64<<20, snap.GetSnapshot().GetSnapshotId())
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = n.b.d.CreateVolume(short, req)
	cancel()
	wantPending(t, err)
	n.a.d.Close() // mid-send: 32 MiB at 4 MiB/s takes 8 s
	var last error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if _, last = n.b.d.CreateVolume(ctx, req); status.Code(last) != codes.Aborted {
			break
		}
	}
	if status.Code(last) != codes.Unavailable {
		t.Fatalf("restore whose sender stopped: %v, want Unavailable", last)
	}
	list, err := n.b.d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Fatalf("node-b lists %v (%v) after the failed restore", list.GetEntries(), err)
	}
	for _, sub := range []string{"volumes", "partial"} {
		if left, _ := os.ReadDir(filepath.Join(n.b.dataDir, sub)); len(left) != 0 {
			t.Errorf("node-b's %s/ holds %d entries after the failed restore", sub, len(left))
		}
	}
	n.a.start(t) // node-a back, at a new port: node-b's static list follows it
	n.b.d.hostpath.xnode.cfg.Peers = peers.Static{{Node: "node-a", Addr: n.a.d.TransferAddr()}}
	v, err := createOn(t, n.b, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(n.b.d.hostpath.vols.Path(v.GetVolumeId()), "data"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("restored data: %d bytes, %v", len(got), err)
	}
}

// wantPending checks a call answered while its copy goes on.
func wantPending(t *testing.T, err error) {
	t.Helper()
	if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Aborted {
		t.Fatalf("got %v, want DeadlineExceeded or Aborted (the copy running on)", err)
	}
}
