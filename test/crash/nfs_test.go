package crash

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// mountStandIn is put first on the real binary's PATH: the driver runs
// mount(8) for NFS sources (nfs.ExecMounter, with its timeout and process
// group kill), and this machine has no NFS client, so for "-t nfs" it
// bind-mounts $NFS_STANDIN_DIR/<server><path> instead and logs the call;
// anything else goes to the real mount(8). Nothing in the product knows.
const mountStandIn = `#!/bin/sh
case " $* " in
*" -t nfs "*|*" -t nfs4 "*)
	src= tgt=
	for a in "$@"; do src=$tgt; tgt=$a; done
	echo "$*" >> "$NFS_STANDIN_DIR/calls.log"
	server=${src%%:*} path=${src#*:}
	exec REALMOUNT --bind "$NFS_STANDIN_DIR/$server$path" "$tgt" ;;
esac
exec REALMOUNT "$@"
`

var nfsCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

// nfsModel is what the client was told: acknowledged volumes and snapshots
// with the content they must hold, and names whose call got no answer.
type nfsModel struct {
	mu          sync.Mutex
	vols        map[string]string // name -> ID
	content     map[string]string // name -> content of its file "data"
	snaps       map[string]string // snapshot name -> ID
	snapContent map[string]string // snapshot name -> content of its source at the time
	maybe       map[string]*csi.CreateVolumeRequest
	maybeSnap   map[string]string // snapshot name -> source volume ID
	maybeDel    map[string]string // volume or snapshot ID whose delete got no answer -> name
	kills, ops  int
}

// TestNFSKill kills the real binary with SIGKILL in the middle of NFS
// creates, snapshots, restores and deletes, restarts it with an empty
// state directory every other time (the controller Deployment moved), and
// checks that every acknowledged volume and snapshot is there with its
// data, that every unanswered call's retry gives one answer, and that once
// everything is deleted nothing is left on the export.
func TestNFSKill(t *testing.T) {
	testutil.RequireRoot(t)
	kills := 12
	if s := os.Getenv("HOSTPATH_NFS_CRASH_KILLS"); s != "" {
		kills, _ = strconv.Atoi(s)
	}
	realMount := testutil.RequireCommand(t, "mount")
	dir := t.TempDir()
	testutil.CleanupMounts(t, dir)
	standin := filepath.Join(dir, "nfs")
	export := filepath.Join(standin, "127.0.0.1", "export")
	bin := filepath.Join(dir, "bin")
	for _, d := range []string{export, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "mount"), []byte(strings.ReplaceAll(mountStandIn, "REALMOUNT", realMount)), 0o755); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: dir, socket: filepath.Join(dir, "csi.sock"), bin: buildPlugin(t),
		env: []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "NFS_STANDIN_DIR=" + standin}}
	t.Cleanup(h.kill)
	m := &nfsModel{vols: map[string]string{}, content: map[string]string{}, snaps: map[string]string{}, snapContent: map[string]string{},
		maybe: map[string]*csi.CreateVolumeRequest{}, maybeSnap: map[string]string{}, maybeDel: map[string]string{}}
	params := map[string]string{"server": "127.0.0.1", "share": "/export"}

	for k := 0; k <= kills; k++ {
		if k%2 == 1 {
			// The controller moved: nothing of the old node's state. (The
			// killed process's private mount of the export goes first: a
			// RemoveAll through it would empty the export.)
			// A mount(8) the killed process started runs in its own process
			// group and may still finish its mount after the kill: unmount
			// until no mount is left under the state for a while.
			state := filepath.Join(dir, "state")
			deadline := time.Now().Add(15 * time.Second)
			for quiet := 0; quiet < 5; {
				mnts := testutil.MountsUnder(t, state)
				if len(mnts) == 0 {
					quiet++
				} else {
					quiet = 0
				}
				for _, mnt := range mnts {
					if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
						t.Fatal(err)
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("mounts keep appearing under %s: %v", state, mnts)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err := os.RemoveAll(state); err != nil {
				t.Fatal(err)
			}
		}
		if k == kills {
			// Record writes a kill cut short are removed at the first use
			// of the export once older than the timeout on every
			// operation: let the last ones age past a short one.
			time.Sleep(1100 * time.Millisecond)
			h.args = []string{"--nfs-timeout=1s"}
		}
		h.start()
		h.checkNFS(m, export)
		if k == kills {
			break
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 3; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				h.nfsWork(m, params, export, fmt.Sprintf("k%d-w%d", k, w), stop)
			}(w)
		}
		time.Sleep(time.Duration(10+mrand.IntN(120)) * time.Millisecond)
		h.kill()
		m.kills++
		close(stop)
		wg.Wait()
	}
	// Delete everything; the export holds nothing of the driver's after.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, id := range m.snaps {
		if _, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatalf("delete snapshot %s: %v", name, err)
		}
	}
	for name, id := range m.vols {
		if _, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("delete volume %s: %v", name, err)
		}
	}
	h.stop() // waits for the background removal of deleted data
	for _, sub := range []string{"volumes", "snapshot-records", "names", "subdirs", "snapshots", "partial", "trash", "tmp"} {
		if left := dirSet(t, filepath.Join(export, ".hostpath-csi", sub)); len(left) != 0 {
			t.Errorf("%d entries left in .hostpath-csi/%s once everything was deleted: %v", len(left), sub, left)
		}
	}
	if left := dirSet(t, export); len(left) != 1 {
		t.Errorf("the export holds more than .hostpath-csi once everything was deleted: %v", left)
	}
	calls, _ := os.ReadFile(filepath.Join(standin, "calls.log"))
	if !strings.Contains(string(calls), "-t nfs 127.0.0.1:/export ") {
		t.Errorf("mount(8) was not asked for 127.0.0.1:/export with type nfs: %s", calls)
	}
	if left := testutil.MountsUnder(t, dir); len(left) != 0 {
		t.Errorf("mounts left: %v", left)
	}
	t.Logf("%d kills, %d acknowledged operations", m.kills, m.ops)
}

func nfsDir(t *testing.T, export, id string) string {
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		t.Fatalf("volume ID %s: %v", id, err)
	}
	return filepath.Join(export, v.SubDir)
}

// nfsWork makes, snapshots, restores and deletes until stop or the kill.
func (h *harness) nfsWork(m *nfsModel, params map[string]string, export, prefix string, stop <-chan struct{}) {
	var mine, snaps []string
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		name := fmt.Sprintf("%s-%d", prefix, i)
		var err error
		switch r := mrand.IntN(6); {
		case r < 2 || len(mine) == 0:
			req := &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{nfsCap}}
			var id string
			if id, err = h.nfsCreate(m, req); err == nil {
				writeFileSync(h.t, filepath.Join(nfsDir(h.t, export, id), "data"), name)
				m.mu.Lock()
				m.content[name] = name
				m.mu.Unlock()
				mine = append(mine, name)
			}
		case r < 3:
			src := mine[mrand.IntN(len(mine))]
			m.mu.Lock()
			srcID, content := m.vols[src], m.content[src]
			m.maybeSnap["s"+name] = srcID
			m.mu.Unlock()
			var resp *csi.CreateSnapshotResponse
			resp, err = h.ctrl.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: "s" + name, SourceVolumeId: srcID})
			if err == nil {
				m.mu.Lock()
				delete(m.maybeSnap, "s"+name)
				m.snaps["s"+name], m.snapContent["s"+name] = resp.GetSnapshot().GetSnapshotId(), content
				m.ops++
				m.mu.Unlock()
				snaps = append(snaps, "s"+name)
			}
		case r < 4 && len(snaps) > 0:
			sn := snaps[mrand.IntN(len(snaps))]
			m.mu.Lock()
			sid, content := m.snaps[sn], m.snapContent[sn]
			m.mu.Unlock()
			req := &csi.CreateVolumeRequest{Name: name, Parameters: params, VolumeCapabilities: []*csi.VolumeCapability{nfsCap},
				VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
					Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sid}}}}
			if _, err = h.nfsCreate(m, req); err == nil {
				m.mu.Lock()
				m.content[name] = content
				m.mu.Unlock()
				mine = append(mine, name)
			}
		case r < 5 && len(snaps) > 0:
			j := mrand.IntN(len(snaps))
			m.mu.Lock()
			id := m.snaps[snaps[j]]
			m.maybeDel[id] = snaps[j]
			m.mu.Unlock()
			if _, err = h.ctrl.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: id}); err == nil {
				m.mu.Lock()
				delete(m.maybeDel, id)
				delete(m.snaps, snaps[j])
				m.ops++
				m.mu.Unlock()
				snaps = slices.Delete(snaps, j, j+1)
			}
		default:
			j := mrand.IntN(len(mine))
			m.mu.Lock()
			id := m.vols[mine[j]]
			m.maybeDel[id] = mine[j]
			m.mu.Unlock()
			if _, err = h.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err == nil {
				m.mu.Lock()
				delete(m.maybeDel, id)
				delete(m.vols, mine[j])
				m.ops++
				m.mu.Unlock()
				mine = slices.Delete(mine, j, j+1)
			}
		}
		if err != nil {
			if !driverGone(err) {
				h.t.Errorf("NFS workload call failed while the driver was up: %v", err)
			}
			return
		}
	}
}

func (h *harness) nfsCreate(m *nfsModel, req *csi.CreateVolumeRequest) (string, error) {
	m.mu.Lock()
	m.maybe[req.GetName()] = req
	m.mu.Unlock()
	resp, err := h.ctrl.CreateVolume(context.Background(), req)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.maybe, req.GetName())
	m.vols[req.GetName()] = resp.GetVolume().GetVolumeId()
	m.ops++
	return resp.GetVolume().GetVolumeId(), nil
}

// checkNFS retries what got no answer (a CO would) and checks every
// acknowledged object: the same ID by name, its data.
func (h *harness) checkNFS(m *nfsModel, export string) {
	t := h.t
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	retry := func(call func() error) {
		for {
			err := call()
			if err == nil {
				return
			}
			if status.Code(err) != codes.Aborted {
				t.Fatalf("retry after a restart: %v", err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for id, name := range m.maybeDel {
		retry(func() error {
			var err error
			if ids.IsNFSSnapshotID(id) {
				_, err = h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
			} else {
				_, err = h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			}
			return err
		})
		delete(m.vols, name)
		delete(m.snaps, name)
		delete(m.maybeDel, id)
	}
	for name, req := range m.maybe {
		// The create never answered: the CO retries it, then (the claim
		// having gone meanwhile, say) deletes it. It must be one volume.
		var id string
		retry(func() error {
			r, err := h.ctrl.CreateVolume(ctx, req)
			id = r.GetVolume().GetVolumeId()
			return err
		})
		if _, err := h.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		delete(m.maybe, name)
	}
	for name, src := range m.maybeSnap {
		var id string
		retry(func() error {
			r, err := h.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: src})
			id = r.GetSnapshot().GetSnapshotId()
			return err
		})
		if _, err := h.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatalf("delete snapshot %s: %v", name, err)
		}
		delete(m.maybeSnap, name)
	}
	for name, id := range m.vols {
		r, err := h.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		if err != nil || r.GetVolume().GetVolumeId() != id {
			t.Fatalf("acknowledged volume %s (%s) after a kill: %v", name, id, err)
		}
		want, written := m.content[name]
		got, rerr := os.ReadFile(filepath.Join(nfsDir(t, export, id), "data"))
		switch {
		case written && (rerr != nil || !bytes.Equal(got, []byte(want))):
			t.Fatalf("volume %s: data %q, %v; want %q", name, got, rerr, want)
		case !written:
			// Killed between the create's answer and the test's write:
			// nothing to compare; the directory must exist.
			if _, err := os.Stat(nfsDir(t, export, id)); err != nil {
				t.Fatalf("volume %s: %v", name, err)
			}
		}
	}
	for name, id := range m.snaps {
		if _, err := h.ctrl.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatalf("acknowledged snapshot %s (%s) after a kill: %v", name, id, err)
		}
		s, _ := ids.ParseNFSSnapshotID(id)
		got, err := os.ReadFile(filepath.Join(export, ".hostpath-csi", "snapshots", s.Key, "data"))
		if want := m.snapContent[name]; want != "" && (err != nil || string(got) != want) {
			t.Fatalf("snapshot %s: data %q, %v; want %q", name, got, err, want)
		}
	}
}

func writeFileSync(t *testing.T, path, data string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Errorf("write %s: %v", path, err)
		return
	}
	f.WriteString(data)
	f.Sync()
	f.Close()
}
