package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

func TestNFSCreateDeleteOnDelete(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	for _, onDelete := range []string{"", OnDeleteDelete, OnDeleteRetain, OnDeleteArchive} {
		t.Run("onDelete="+onDelete, func(t *testing.T) {
			params := nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}", ParamMountPermissions, "2775",
				ParamPVCNamespace, "ns", ParamPVCName, "claim-"+onDelete, ParamPVName, "pv-x")
			if onDelete != "" {
				params[ParamOnDelete] = onDelete
			}
			vol := e.createNFS(t, "pv-"+onDelete, params)
			v, err := ids.ParseNFSVolumeID(vol.GetVolumeId())
			if err != nil {
				t.Fatal(err)
			}
			subDir := "ns/claim-" + onDelete
			if v.Server != testServer || v.Share != testShare || v.SubDir != subDir {
				t.Fatalf("volume ID names %+v", v)
			}
			if got := vol.GetVolumeContext(); got[ContextServer] != testServer || got[ContextShare] != testShare || got[ContextSubDir] != subDir {
				t.Fatalf("volume context %v", got)
			}
			if len(vol.GetAccessibleTopology()) != 0 {
				t.Fatalf("NFS volume has topology %v", vol.GetAccessibleTopology())
			}
			dir := filepath.Join(e.export, subDir)
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o775 || fi.Mode()&os.ModeSetgid == 0 {
				t.Fatalf("mode of %s is %v, want mountPermissions 2775", dir, fi.Mode())
			}
			writeFile(t, filepath.Join(dir, "data"), "payload")

			// Idempotent by name; the same name with another size or
			// other parameters is ALREADY_EXISTS.
			again := e.createNFS(t, "pv-"+onDelete, params)
			if again.GetVolumeId() != vol.GetVolumeId() {
				t.Fatalf("second create gave %s, first %s", again.GetVolumeId(), vol.GetVolumeId())
			}
			bigger := nfsReq("pv-"+onDelete, params)
			bigger.CapacityRange.RequiredBytes = 1 << 30
			_, err = e.d.CreateVolume(ctx, bigger)
			wantCode(t, err, codes.AlreadyExists)
			other := nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}", ParamPVCNamespace, "ns", ParamPVCName, "claim-"+onDelete)
			_, err = e.d.CreateVolume(ctx, nfsReq("pv-"+onDelete, other))
			wantCode(t, err, codes.AlreadyExists)
			// Another name mapping to the same subdirectory.
			_, err = e.d.CreateVolume(ctx, nfsReq("pv-other-"+onDelete, other))
			wantCode(t, err, codes.AlreadyExists)
			if !strings.Contains(err.Error(), subDir) {
				t.Fatalf("error does not name the subDir: %v", err)
			}

			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
				t.Fatalf("second delete: %v", err)
			}
			e.d.nfs.WaitIdle()
			_, statErr := os.Stat(dir)
			archived, _ := filepath.Glob(filepath.Join(e.export, "archived-ns-claim-"+onDelete+"-*"))
			switch onDelete {
			case "", OnDeleteDelete:
				if !errors.Is(statErr, os.ErrNotExist) || len(archived) != 0 {
					t.Fatalf("after delete: stat %v, archived %v", statErr, archived)
				}
			case OnDeleteRetain:
				if b, err := os.ReadFile(filepath.Join(dir, "data")); err != nil || string(b) != "payload" {
					t.Fatalf("retained data: %q, %v", b, err)
				}
				os.RemoveAll(dir)
			case OnDeleteArchive:
				if !errors.Is(statErr, os.ErrNotExist) || len(archived) != 1 {
					t.Fatalf("after archive: stat %v, archived %v", statErr, archived)
				}
				if b, err := os.ReadFile(filepath.Join(archived[0], "data")); err != nil || string(b) != "payload" {
					t.Fatalf("archived data: %q, %v", b, err)
				}
				if !strings.HasSuffix(archived[0], "Z") {
					t.Fatalf("archive name %s does not end in a UTC time", archived[0])
				}
			}
			_, err = e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: vol.GetVolumeId()})
			wantCode(t, err, codes.NotFound)
		})
	}
	// Nothing left of the driver's own bookkeeping but empty directories.
	for _, d := range []string{"volumes", "names", "subdirs", "partial", "trash"} {
		ents, _ := os.ReadDir(filepath.Join(e.export, ".hostpath-csi", d))
		if len(ents) != 0 {
			t.Errorf(".hostpath-csi/%s holds %d entries after every volume was deleted", d, len(ents))
		}
	}
	// An NFS ID never made, and one that does not even parse: deleted.
	id, _, _ := ids.NewNFSVolumeID(testServer, testShare, "never")
	for _, id := range []string{id, "nfs1-zzzz"} {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("DeleteVolume(%s): %v", id, err)
		}
	}
}

func TestNFSParameters(t *testing.T) {
	meta := map[string]string{ParamPVCNamespace: "ns", ParamPVCName: "claim", ParamPVName: "pv-1"}
	for _, tc := range []struct {
		tmpl, want string
		meta       map[string]string
	}{
		{"", "pv-1", meta},
		{"${pv.metadata.name}", "pv-1", meta},
		{"${pv.metadata.name}", "req-name", map[string]string{}},
		{"${pvc.metadata.namespace}/${pvc.metadata.name}", "ns/claim", meta},
		{"k8s/${pvc.metadata.namespace}-${pvc.metadata.name}", "k8s/ns-claim", meta},
		{"fixed", "fixed", meta},
	} {
		tmpl := tc.tmpl
		if tmpl == "" {
			tmpl = DefaultSubDir
		}
		got, err := expandSubDir(tmpl, tc.meta, "req-name")
		if err != nil || got != tc.want {
			t.Errorf("expandSubDir(%q) = %q, %v; want %q", tmpl, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		tmpl string
		meta map[string]string
	}{
		{"../x", meta},
		{"/abs", meta},
		{"a/../b", meta},
		{"a//b", meta},
		{".hostpath-csi/x", meta},
		{"${pvc.metadata.labels}", meta},
		{"${pvc.metadata.name", meta},
		{"$HOME", meta},
		{"${pvc.metadata.name}", map[string]string{ParamPVCName: "../etc"}},
		{"${pvc.metadata.name}", map[string]string{ParamPVCName: "a/b"}},
		{"${pvc.metadata.name}", map[string]string{ParamPVCName: ".."}},
		{"${pvc.metadata.name}", map[string]string{}},
	} {
		if got, err := expandSubDir(tc.tmpl, tc.meta, "req"); err == nil {
			t.Errorf("expandSubDir(%q, %v) = %q, want an error", tc.tmpl, tc.meta, got)
		}
	}

	e := newNFSEnv(t, 10*time.Second)
	for _, tc := range []struct {
		name   string
		params map[string]string
		names  string // what the message must name
	}{
		{"unknown", nfsParamsFor("color", "blue"), "color"},
		{"layout", nfsParamsFor(ParamLayout, LayoutImage), ParamLayout},
		{"no share", map[string]string{ParamServer: testServer}, ParamShare},
		{"bad server", map[string]string{ParamServer: "a/b", ParamShare: testShare}, ParamServer},
		{"relative share", map[string]string{ParamServer: testServer, ParamShare: "export"}, ParamShare},
		{"escape", nfsParamsFor(ParamSubDir, "../../etc"), ParamSubDir},
		{"value escape", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", ParamPVCName, "../x"), ParamSubDir},
		{"onDelete", nfsParamsFor(ParamOnDelete, "shred"), ParamOnDelete},
		{"mode", nfsParamsFor(ParamMountPermissions, "rwx"), ParamMountPermissions},
	} {
		_, err := e.d.CreateVolume(ctx, nfsReq("bad-"+tc.name, tc.params))
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.names) {
			t.Errorf("%s: got %v, want InvalidArgument naming %s", tc.name, err, tc.names)
		}
	}
	block := nfsReq("block", nfsParamsFor())
	block.VolumeCapabilities = []*csi.VolumeCapability{blockCap}
	_, err := e.d.CreateVolume(ctx, block)
	wantCode(t, err, codes.InvalidArgument)
	ext4 := nfsReq("ext4", nfsParamsFor())
	ext4.VolumeCapabilities = []*csi.VolumeCapability{{AccessMode: rwx.AccessMode, AccessType: &csi.VolumeCapability_Mount{
		Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}}}
	_, err = e.d.CreateVolume(ctx, ext4)
	wantCode(t, err, codes.InvalidArgument)
	if calls := e.standin.Calls(); len(calls) != 0 {
		t.Fatalf("invalid requests mounted the export: %v", calls)
	}
}

func TestNFSControllerQueries(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-q", nfsParamsFor())
	id := vol.GetVolumeId()

	vr, err := e.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{rwx}})
	if err != nil || vr.GetConfirmed() == nil {
		t.Fatalf("ValidateVolumeCapabilities(RWX): %v, %v", vr, err)
	}
	vr, err = e.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: []*csi.VolumeCapability{blockCap}})
	if err != nil || vr.GetConfirmed() != nil || vr.GetMessage() == "" {
		t.Fatalf("ValidateVolumeCapabilities(block): %v, %v; want unconfirmed with a message", vr, err)
	}

	// Capacity: the export's free space (the volumes share it).
	cr, err := e.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", "csi.storage.k8s.io/fstype", "nfs")})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(e.export, &st); err != nil {
		t.Fatal(err)
	}
	if cr.GetAvailableCapacity() <= 0 || cr.GetAvailableCapacity() > int64(st.Blocks)*st.Bsize {
		t.Fatalf("GetCapacity = %d; the export holds %d bytes", cr.GetAvailableCapacity(), int64(st.Blocks)*st.Bsize)
	}
	_, err = e.d.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: nfsParamsFor("color", "blue")})
	wantCode(t, err, codes.InvalidArgument)

	h, err := e.d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health of a fine volume: %v, %v", h, err)
	}
	os.Remove(e.subDirOf(t, id))
	h, err = e.d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 1 || h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_DATA_LOSS {
		t.Fatalf("health of a volume whose subdirectory is gone: %v, %v", h, err)
	}
	_, err = e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "g", SourceVolumeIds: []string{id}})
	wantCode(t, err, codes.InvalidArgument)
	// Unknown IDs: NotFound, never a path.
	other, _, _ := ids.NewNFSVolumeID(testServer, testShare, "nope")
	for _, bad := range []string{other, "nfs1-zz"} {
		_, err = e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: bad})
		wantCode(t, err, codes.NotFound)
	}
}

// The controller mounts the export root with the class's mountOptions (a
// server that speaks NFSv3 only needs nfsvers=3 there too), never ro.
func TestNFSControllerMountOptions(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	req := nfsReq("pv-opts", nfsParamsFor())
	req.VolumeCapabilities = []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "nfsvers=3", "ro")}
	if _, err := e.d.CreateVolume(ctx, req); err != nil {
		t.Fatal(err)
	}
	calls := e.standin.Calls()
	if len(calls) == 0 || calls[0].Source != "nfs.example:/export" || calls[0].FSType != "nfs" || strings.Join(calls[0].Options, ",") != "nfsvers=3" {
		t.Fatalf("export root mounted as %+v; want nfs.example:/export, nfs, [nfsvers=3]", calls)
	}
}
