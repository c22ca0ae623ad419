package driver

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCreateVolumeRejects(t *testing.T) {
	e := newEnv(t)
	withReq := func(change func(r *csi.CreateVolumeRequest)) *csi.CreateVolumeRequest {
		r := createReq("v", 1<<20)
		change(r)
		return r
	}
	tests := []struct {
		name    string
		req     *csi.CreateVolumeRequest
		code    codes.Code
		message string
	}{
		{"no name", withReq(func(r *csi.CreateVolumeRequest) { r.Name = "" }), codes.InvalidArgument, "name is required"},
		{"long name", withReq(func(r *csi.CreateVolumeRequest) { r.Name = strings.Repeat("n", 300) }), codes.InvalidArgument, "at most"},
		{"NUL in name", withReq(func(r *csi.CreateVolumeRequest) { r.Name = "a\x00b" }), codes.InvalidArgument, "NUL"},
		{"no capabilities", withReq(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }), codes.InvalidArgument, "capabilities are required"},
		{"multi-node mode", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)}
		}), codes.InvalidArgument, "MULTI_NODE_MULTI_WRITER is not supported"},
		{"block with a layout", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
			r.Parameters = map[string]string{ParamLayout: LayoutImage}
		}), codes.InvalidArgument, "does not apply to a block volume"},
		{"block and mount", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap, rwo}
		}), codes.InvalidArgument, "both block and mount"},
		{"unknown layout", withReq(func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{ParamLayout: "lvm"} }), codes.InvalidArgument, "want directory or image"},
		{"image of btrfs", withReq(func(r *csi.CreateVolumeRequest) {
			c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			c.GetMount().FsType = "btrfs"
			r.VolumeCapabilities = []*csi.VolumeCapability{c}
			r.Parameters = map[string]string{ParamLayout: LayoutImage}
		}), codes.InvalidArgument, "ext4 or xfs"},
		{"image under its filesystem's minimum", withReq(func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{ParamLayout: LayoutImage}
			r.CapacityRange.LimitBytes = 1 << 20
		}), codes.OutOfRange, "needs at least"},
		{"fs type", withReq(func(r *csi.CreateVolumeRequest) {
			c := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			c.GetMount().FsType = "xfs"
			r.VolumeCapabilities = []*csi.VolumeCapability{c}
		}), codes.InvalidArgument, `fs_type "xfs"`},
		{"bad mount flag", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "uid=5")}
		}), codes.InvalidArgument, `"uid=5"`},
		{"unknown parameter", withReq(func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"fstype": "ext4"} }), codes.InvalidArgument, `unknown parameter "fstype"`},
		{"bad mountPermissions", withReq(func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{ParamMountPermissions: "rwx"} }), codes.InvalidArgument, "octal"},
		{"negative size", withReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = -1 }), codes.InvalidArgument, "negative"},
		{"required over limit", withReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange.LimitBytes = 10 }), codes.InvalidArgument, "exceed limit"},
		{"over max size", withReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 1<<40 + 1 }), codes.OutOfRange, "--max-volume-size"},
		{"over free space", withReq(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 1 << 40 }), codes.ResourceExhausted, "available"},
		{"other node only", withReq(func(r *csi.CreateVolumeRequest) {
			r.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKeyNode: "node-2"}}}}
		}), codes.ResourceExhausted, "does not include this node"},
		{"missing source volume", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "x"}}}
		}), codes.NotFound, "volume not found"},
		{"missing source snapshot", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "hps1-00000000000000000000000000000000"}}}
		}), codes.NotFound, "snapshot hps1-00000000000000000000000000000000 not found"},
		{"empty source", withReq(func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{}
		}), codes.InvalidArgument, "neither a snapshot nor a volume"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.d.CreateVolume(ctx, tc.req)
			wantCode(t, err, tc.code)
			if !strings.Contains(status.Convert(err).Message(), tc.message) {
				t.Fatalf("message %q does not say %q", status.Convert(err).Message(), tc.message)
			}
		})
	}
	if vols, _ := e.d.hostpath.vols.List(); len(vols) != 0 {
		t.Fatalf("rejected requests left volume directories: %v", vols)
	}
}

func TestCreateVolumeSizesAndMode(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name     string
		cr       *csi.CapacityRange
		wantSize int64
	}{
		{"nothing asked", nil, DefaultVolumeSize},
		{"limit only, below default", &csi.CapacityRange{LimitBytes: 5 << 20}, 5 << 20},
		{"required", &csi.CapacityRange{RequiredBytes: 3 << 20}, 3 << 20},
		{"required and limit", &csi.CapacityRange{RequiredBytes: 3 << 20, LimitBytes: 4 << 20}, 3 << 20},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := createReq(fmt.Sprint("size-", i), 0)
			req.CapacityRange = tc.cr
			resp, err := e.d.CreateVolume(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			v := resp.GetVolume()
			if v.GetCapacityBytes() != tc.wantSize {
				t.Fatalf("capacity %d, want %d", v.GetCapacityBytes(), tc.wantSize)
			}
			if seg := v.GetAccessibleTopology()[0].GetSegments()[TopologyKeyNode]; seg != "node-1" {
				t.Fatalf("topology %v", v.GetAccessibleTopology())
			}
		})
	}
	req := createReq("mode", 1<<20)
	req.Parameters = map[string]string{ParamMountPermissions: "0750", ParamPVCName: "data-mongo-0", ParamPVCNamespace: "db"}
	resp, err := e.d.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(e.d.hostpath.vols.Path(resp.GetVolume().GetVolumeId()))
	if err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("volume directory mode %v (%v), want 0750", fi.Mode(), err)
	}
}

func TestCreateVolumeIdempotent(t *testing.T) {
	e := newEnv(t)
	first := e.create(t, "same")
	again, err := e.d.CreateVolume(ctx, createReq("same", 1<<20))
	if err != nil || again.GetVolume().GetVolumeId() != first {
		t.Fatalf("second create: %v, %v; want volume %s", again, err, first)
	}
	_, err = e.d.CreateVolume(ctx, createReq("same", 2<<20))
	wantCode(t, err, codes.AlreadyExists)
	req := createReq("same", 1<<20)
	req.Parameters = map[string]string{ParamMountPermissions: "0700"}
	_, err = e.d.CreateVolume(ctx, req)
	wantCode(t, err, codes.AlreadyExists)
}

// 64 racing creates of one name make exactly one volume; racing creates of
// different names all succeed.
func TestCreateVolumeRace(t *testing.T) {
	e := newEnv(t)
	const n = 64
	got := make([]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func(i int) {
			defer wg.Done()
			resp, err := e.d.CreateVolume(ctx, createReq("contended", 1<<20))
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = resp.GetVolume().GetVolumeId()
		}(i)
		go func(i int) {
			defer wg.Done()
			if _, err := e.d.CreateVolume(ctx, createReq(fmt.Sprint("own-", i), 1<<20)); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	for _, id := range got {
		if id != got[0] {
			t.Fatalf("racing creates returned different volumes: %s and %s", got[0], id)
		}
	}
	dirs, _ := e.d.hostpath.vols.List()
	if len(dirs) != n+1 {
		t.Fatalf("%d volume directories, want %d", len(dirs), n+1)
	}
}

func TestDeleteVolume(t *testing.T) {
	e := newEnv(t)
	id := e.create(t, "del")
	for i := 0; i < 2; i++ {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("delete #%d: %v", i, err)
		}
	}
	if _, err := os.Stat(e.d.hostpath.vols.Path(id)); !os.IsNotExist(err) {
		t.Fatalf("data still there: %v", err)
	}
	_, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.NotFound)
	_, err = e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument)
	// The name is free for a new volume.
	if again := e.create(t, "del"); again == id {
		t.Fatal("a deleted volume's ID was handed out again")
	}
}

// IDs from a request never become paths unless they have our format; hostile
// ones are NotFound (or, for delete, already gone) and touch nothing.
func TestHostileVolumeIDs(t *testing.T) {
	e := newEnv(t)
	victim := e.dir + "/victim"
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	hostile := []string{
		"../victim", "../../victim", "/etc/passwd", "hpv1-../../../victim", ".", "..",
		"hpv1-0123456789abcdef0123456789abcdeg", "hpv1-\x00", strings.Repeat("a", 1<<20),
	}
	for _, id := range hostile {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("DeleteVolume(%.30q): %v, want success (no such volume)", id, err)
		}
		_, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		wantCode(t, err, codes.NotFound)
		_, err = e.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: e.dir + "/s", VolumeCapability: rwo})
		wantCode(t, err, codes.NotFound)
		_, err = e.d.CreateSnapshot(ctx, snapReq("of-hostile", id))
		wantCode(t, err, codes.NotFound)
		_, err = e.d.CreateVolume(ctx, fromVolume("from-hostile", 0, id))
		wantCode(t, err, codes.NotFound)
	}
	if data, err := os.ReadFile(victim); err != nil || string(data) != "keep" {
		t.Fatalf("file outside the data directory touched: %q %v", data, err)
	}
}

func TestListVolumesPagination(t *testing.T) {
	e := newEnv(t)
	want := map[string]bool{}
	for i := 0; i < 7; i++ {
		want[e.create(t, fmt.Sprint("list-", i))] = true
	}
	got := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		if pages > 7 {
			t.Fatal("pagination does not end")
		}
		resp, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 3, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetEntries()) > 3 {
			t.Fatalf("page of %d entries, max 3", len(resp.GetEntries()))
		}
		for _, en := range resp.GetEntries() {
			if got[en.GetVolume().GetVolumeId()] {
				t.Fatalf("volume listed twice")
			}
			got[en.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if len(got) != len(want) {
		t.Fatalf("listed %d volumes, want %d", len(got), len(want))
	}
	_, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted)
	_, err = e.d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
	wantCode(t, err, codes.InvalidArgument)
}

func TestGetCapacity(t *testing.T) {
	e := newEnv(t)
	resp, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil || resp.GetAvailableCapacity() <= 0 {
		t.Fatalf("GetCapacity: %v %v", resp, err)
	}
	if resp.GetMaximumVolumeSize().GetValue() > resp.GetAvailableCapacity() {
		t.Fatalf("maximum volume size %d above available %d", resp.GetMaximumVolumeSize().GetValue(), resp.GetAvailableCapacity())
	}
	other, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKeyNode: "node-2"}}})
	if err != nil || other.GetAvailableCapacity() != 0 {
		t.Fatalf("capacity of another node: %v %v, want 0", other, err)
	}
	_, err = e.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"bogus": "1"}})
	wantCode(t, err, codes.InvalidArgument)
	// A class's parameters as csi-provisioner passes them, with its own
	// reserved keys (found on a real cluster: a class with an fstype had no
	// capacity, so its pods were never scheduled).
	if _, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{
		ParamLayout: LayoutImage, "csi.storage.k8s.io/fstype": "xfs", "csi.storage.k8s.io/provisioner-secret-name": "x"}}); err != nil {
		t.Fatalf("GetCapacity with a class's reserved keys: %v", err)
	}
}

func TestIdentity(t *testing.T) {
	e := newEnv(t)
	info, err := e.d.GetPluginInfo(ctx, nil)
	if err != nil || info.GetName() != DefaultDriverName || info.GetVendorVersion() == "" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	probe, err := e.d.Probe(ctx, nil)
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v", probe, err)
	}
	// A closed state database makes the driver not ready, and says why.
	e.d.store.Close()
	_, err = e.d.Probe(ctx, nil)
	wantCode(t, err, codes.FailedPrecondition)
	// livenessprobe serves this message on the pod's address: it names the
	// failed check, not the error's text (the log has that).
	if !strings.Contains(status.Convert(err).Message(), "state database") {
		t.Fatalf("Probe message %q does not say the state database failed", status.Convert(err).Message())
	}
}

// ValidateVolumeCapabilities gets a StorageClass's parameters as written;
// the provisioner's csi.storage.k8s.io/ keys were only in CreateVolume, so
// a volume made with them is confirmed for its class's own parameters, and
// refused for other ones.
func TestValidateIgnoresProvisionerMetadata(t *testing.T) {
	e := newEnv(t)
	r := createReq("pv-meta", 1<<20)
	r.Parameters = map[string]string{ParamLayout: LayoutDirectory, ParamPVCName: "claim", ParamPVCNamespace: "ns", ParamPVName: "pv-meta"}
	resp, err := e.d.CreateVolume(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	validate := func(params map[string]string) *csi.ValidateVolumeCapabilitiesResponse {
		t.Helper()
		v, err := e.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: resp.GetVolume().GetVolumeId(),
			VolumeCapabilities: r.GetVolumeCapabilities(), Parameters: params})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := validate(map[string]string{ParamLayout: LayoutDirectory}); v.GetConfirmed() == nil {
		t.Errorf("not confirmed for the class's own parameters: %q", v.GetMessage())
	}
	if v := validate(map[string]string{ParamLayout: LayoutDirectory, ParamMountPermissions: "0700"}); v.GetConfirmed() != nil {
		t.Errorf("confirmed for parameters the volume was not created with")
	}
}
