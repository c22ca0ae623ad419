package crash

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// TestTransferKill kills either side of a restore across nodes with
// SIGKILL mid-transfer: node-b (the receiver) and then node-a (the sender),
// two real driver processes over loopback. After each kill nothing half
// made is listed or left on node-b, a retry while node-a is down is
// UNAVAILABLE (not a hang), and once both run the retry restores the
// snapshot whole.
func TestTransferKill(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	keys := filepath.Join(dir, "keys")
	k := make([]byte, 32)
	rand.Read(k)
	if err := os.WriteFile(keys, []byte("k1 "+base64.StdEncoding.EncodeToString(k)+"\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	bin := buildPlugin(t)
	mk := func(node string, args ...string) *harness {
		d := filepath.Join(dir, node)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		h := &harness{t: t, dir: d, socket: filepath.Join(d, "csi.sock"), bin: bin, nodeID: node,
			args: append([]string{"--transfer-keys=" + keys}, args...)}
		t.Cleanup(h.kill)
		return h
	}
	// 48 MiB at 8 MiB/s: six seconds of transfer to kill into.
	a := mk("node-a", "--transfer-listen="+addr, "--transfer-rate=8Mi")
	b := mk("node-b", "--transfer-peers=node-a="+addr, "--transfer-idle-timeout=3s")
	a.start()
	b.start()

	c, cancel := ctx5()
	src, err := a.ctrl.CreateVolume(c, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 48<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	if err := os.WriteFile(filepath.Join(a.dir, "data", "volumes", src.GetVolume().GetVolumeId(), "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, cancel = ctx5()
	snap, err := a.ctrl.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.GetVolume().GetVolumeId()})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	restore := func(name string) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}}
	}
	// startRestore asks once with a short deadline, as csi-provisioner
	// does, and lets the transfer run on without the call.
	startRestore := func(name string) {
		c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		_, err := b.ctrl.CreateVolume(c, restore(name))
		if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Aborted {
			t.Fatalf("restore %s: %v, want it still running", name, err)
		}
	}
	// finish retries until the restore answers, then checks its bytes.
	finish := func(name string) {
		t.Helper()
		for end := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			c, cancel := ctx5()
			v, err := b.ctrl.CreateVolume(c, restore(name))
			cancel()
			if pending(err) && time.Now().Before(end) {
				continue
			}
			if err != nil {
				t.Fatalf("restore %s: %v", name, err)
			}
			got, err := os.ReadFile(filepath.Join(b.dir, "data", "volumes", v.GetVolume().GetVolumeId(), "data"))
			if err != nil || sha256.Sum256(got) != want {
				t.Fatalf("restore %s: %d bytes (%v), not the source's %d", name, len(got), err, len(data))
			}
			return
		}
	}
	// listed is node-b's volumes, and what its data directory holds.
	listed := func() (ids []string, entries map[string]int) {
		c, cancel := ctx5()
		defer cancel()
		list, err := b.ctrl.ListVolumes(c, &csi.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		entries = map[string]int{}
		for _, sub := range []string{"volumes", "partial"} {
			entries[sub] = len(dirSet(t, filepath.Join(b.dir, "data", sub)))
		}
		return ids, entries
	}

	// 1. The receiver killed mid-transfer.
	startRestore("r1")
	time.Sleep(1500 * time.Millisecond)
	b.kill()
	b.start()
	if ids, entries := listed(); len(ids) != 0 || entries["volumes"] != 0 || entries["partial"] != 0 {
		t.Fatalf("after a kill of the receiver mid-transfer node-b lists %v and holds %v; want nothing", ids, entries)
	}
	finish("r1")

	// 2. The sender killed mid-transfer.
	startRestore("r2")
	time.Sleep(1500 * time.Millisecond)
	a.kill()
	var last error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		c, cancel := ctx5()
		_, last = b.ctrl.CreateVolume(c, restore("r2"))
		cancel()
		if !pending(last) {
			break
		}
	}
	if status.Code(last) != codes.Unavailable || !bytes.Contains([]byte(last.Error()), []byte("node-a")) {
		t.Fatalf("restore whose sender was killed: %v, want Unavailable naming node-a", last)
	}
	if ids, entries := listed(); len(ids) != 1 || entries["volumes"] != 1 || entries["partial"] != 0 {
		t.Fatalf("after a kill of the sender node-b lists %v and holds %v; want only r1", ids, entries)
	}
	a.start()
	finish("r2")
	t.Log(fmt.Sprintf("restores across nodes survived a kill of the receiver and of the sender mid-transfer (%d MiB each)", len(data)>>20))

	// Everything deleted, nothing left on either node.
	for _, h := range []*harness{b, a} {
		c, cancel := ctx5()
		list, err := h.ctrl.ListVolumes(c, &csi.ListVolumesRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.GetEntries() {
			c, cancel := ctx5()
			_, err := h.ctrl.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: e.GetVolume().GetVolumeId()})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	c, cancel = ctx5()
	_, err = a.ctrl.DeleteSnapshot(c, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	b.stop()
	a.stop()
	for _, h := range []*harness{a, b} {
		for _, sub := range []string{"volumes", "snapshots", "partial", "trash", "quarantine"} {
			if left := dirSet(t, filepath.Join(h.dir, "data", sub)); len(left) != 0 {
				t.Errorf("%s: %d entries left in data/%s", h.nodeID, len(left), sub)
			}
		}
	}
}

// pending is the answer of a create whose copy runs on: ABORTED (a retry
// while it runs) or the call's own deadline (it waited for the copy).
func pending(err error) bool {
	c := status.Code(err)
	return c == codes.Aborted || c == codes.DeadlineExceeded
}
