package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

func TestNFSCreateDeleteOnDelete(t *testing.T) {
	t.Parallel()
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
			// Readable in kubectl get pv, and its key names its record.
			if want := "nfs1:" + testServer + ":" + testShare + ":" + subDir + ":" + v.Key; vol.GetVolumeId() != want || len(v.Key) != 16 {
				t.Fatalf("volume ID %q, want %q with a 16-hex key", vol.GetVolumeId(), want)
			}
			if _, err := os.Stat(filepath.Join(e.export, ".hostpath-csi", "volumes", v.Key+".json")); err != nil {
				t.Fatalf("record of the volume: %v", err)
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
			wantCode(t, err, codes.FailedPrecondition)
			if !strings.Contains(err.Error(), subDir) {
				t.Fatalf("error does not name the subDir: %v", err)
			}

			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
				t.Fatalf("second delete: %v", err)
			}
			e.d.nfs.exports.WaitIdle()
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
	// Nothing left of the driver's own bookkeeping but empty directories,
	// and the claim of the retained volume's subdirectory, marked retained
	// (it keeps other claims from nesting around the retained data).
	for _, d := range []string{"volumes", "names", "subdirs", "partial", "trash"} {
		ents, _ := os.ReadDir(filepath.Join(e.export, ".hostpath-csi", d))
		if d == "subdirs" && len(ents) == 1 {
			b, _ := os.ReadFile(filepath.Join(e.export, ".hostpath-csi", d, ents[0].Name()))
			if strings.Contains(string(b), `"retained":true`) && strings.Contains(string(b), OnDeleteRetain) {
				continue
			}
		}
		if len(ents) != 0 {
			t.Errorf(".hostpath-csi/%s holds %d entries after every volume was deleted", d, len(ents))
		}
	}
	// An NFS ID never made, and one that does not even parse: deleted.
	id, _, _ := ids.NewNFSVolumeID(testServer, testShare, "never")
	for _, id := range []string{id, "nfs1:zzzz"} {
		if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("DeleteVolume(%s): %v", id, err)
		}
	}
}

func TestNFSParameters(t *testing.T) {
	t.Parallel()
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
		{"share with ':'", map[string]string{ParamServer: testServer, ParamShare: "/export:x"}, ParamShare},
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
	t.Parallel()
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
	for _, bad := range []string{other, "nfs1:zz", "nfs1:" + testServer + ":" + testShare + ":nope:0123"} {
		_, err = e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: bad})
		wantCode(t, err, codes.NotFound)
	}
}

// The controller mounts the export root with the class's mountOptions (a
// server that speaks NFSv3 only needs nfsvers=3 there too), never ro.
func TestNFSControllerMountOptions(t *testing.T) {
	t.Parallel()
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

// ValidateVolumeCapabilities gets the StorageClass's parameters (a CO, a
// static PV's check, csi-sanity); the provisioner's csi.storage.k8s.io/
// keys were only in CreateVolume. A volume made with them must still be
// confirmed for the class's own parameters.
func TestNFSValidateIgnoresProvisionerMetadata(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-v", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "ns", ParamPVCName, "claim", ParamPVName, "pv-v"))
	class := nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}")
	resp, err := e.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: vol.GetVolumeId(),
		VolumeCapabilities: []*csi.VolumeCapability{rwx}, Parameters: class})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetConfirmed() == nil {
		t.Errorf("not confirmed for the class's own parameters: %q", resp.GetMessage())
	}
	class[ParamOnDelete] = OnDeleteRetain
	resp, err = e.d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: vol.GetVolumeId(),
		VolumeCapabilities: []*csi.VolumeCapability{rwx}, Parameters: class})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetConfirmed() != nil {
		t.Errorf("confirmed for parameters the volume was not created with (%s: %s)", ParamOnDelete, OnDeleteRetain)
	}
}

// Two StorageClasses on one export, one with subDir "${pvc.metadata.name}",
// the other "${pvc.metadata.namespace}/${pvc.metadata.name}": a claim named
// like a namespace gets the directory that holds every volume of that
// namespace. Its tenant reads them, and its delete removes them.
func TestNFSNestedSubDirsAreRefused(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	nested := e.createNFS(t, "pv-victim", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "team-a", ParamPVCName, "db"))
	writeFile(t, filepath.Join(e.export, "team-a", "db", "secret"), "victim data")

	// Another tenant, any namespace, names its claim "team-a".
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-attacker", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}",
		ParamPVCNamespace, "mallory", ParamPVCName, "team-a")))
	if status.Code(err) != codes.AlreadyExists && status.Code(err) != codes.FailedPrecondition {
		// It got team-a/: the victim's data is in its volume.
		if _, serr := os.Stat(filepath.Join(e.export, "team-a", "db", "secret")); serr == nil {
			t.Errorf("a claim whose subDir %q holds volume %s's subDir %q was created (err %v): its pods see that volume's data",
				"team-a", nested.GetVolumeId(), "team-a/db", err)
		}
		if err == nil {
			v := nfsAttackerID(t, e)
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v}); err != nil {
				t.Fatal(err)
			}
			e.d.nfs.exports.WaitIdle()
			if _, serr := os.Stat(filepath.Join(e.export, "team-a", "db", "secret")); errors.Is(serr, os.ErrNotExist) {
				t.Errorf("deleting the claim on %q removed the data of volume %s (subDir team-a/db), which is still on record", "team-a", nested.GetVolumeId())
			}
		}
	}
}

func nfsAttackerID(t *testing.T, e *nfsEnv) string {
	t.Helper()
	resp, err := e.d.CreateVolume(ctx, nfsReq("pv-attacker", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}",
		ParamPVCNamespace, "mallory", ParamPVCName, "team-a")))
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVolume().GetVolumeId()
}

// The reverse order: a volume is made inside another volume's directory,
// which its tenant controls.
func TestNFSSubDirInsideAnotherVolumeIsRefused(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.createNFS(t, "pv-outer", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", ParamPVCNamespace, "mallory", ParamPVCName, "team-b"))
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-inner", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "team-b", ParamPVCName, "db")))
	if err == nil {
		t.Errorf("volume team-b/db was created inside volume team-b's directory: team-b's tenant reads and deletes it")
	}
}

// Volumes made before the driver kept the nested index are found too: the
// first use of the export by a process that keeps it indexes them.
func TestNFSNestedSubDirsOfOlderVolumesAreRefused(t *testing.T) {
	e := newNFSEnv(t, 10*time.Second)
	e.createNFS(t, "pv-old", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, "team-c", ParamPVCName, "db"))
	e.d.nfs.sweeps.wg.Wait() // its first use of the export is over
	// What an older driver left: no nested index.
	if err := os.RemoveAll(filepath.Join(e.export, ids.HiddenDir, "nested")); err != nil {
		t.Fatal(err)
	}
	d2 := e.another(t)
	_, err := d2.CreateVolume(ctx, nfsReq("pv-new", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}",
		ParamPVCNamespace, "mallory", ParamPVCName, "team-c")))
	if status.Code(err) != codes.FailedPrecondition || strings.Contains(err.Error(), "team-c/db") {
		t.Errorf("subDir team-c over an older volume's team-c/db: %v, want FailedPrecondition, naming not the other volume's subDir", err)
	}
}

// The names onDelete: archive gives, and a share inside the driver's own
// directory of another export, are refused before anything is made.
func TestNFSReservedSubDirAndShare(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-archived", nfsParamsFor(ParamSubDir, "archived-${pvc.metadata.name}", ParamPVCName, "x")))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ParamSubDir) {
		t.Errorf("subDir archived-...: %v, want InvalidArgument naming %s", err, ParamSubDir)
	}
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-archived-2", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", ParamPVCName, "archived-db-20260101T000000Z")))
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("a claim named like an archive: %v, want InvalidArgument", err)
	}
	p := nfsParamsFor()
	p[ParamShare] = testShare + "/" + ids.HiddenDir + "/snapshots"
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-hidden", p))
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ParamShare) {
		t.Errorf("share inside %s: %v, want InvalidArgument naming %s", ids.HiddenDir, err, ParamShare)
	}
	ents, _ := os.ReadDir(e.export)
	for _, ent := range ents {
		if ent.Name() != ids.HiddenDir {
			t.Errorf("a refused create left %s on the export", ent.Name())
		}
	}
}

// One damaged record file does not hide the export's other volumes from
// ListVolumes; the volume it belongs to reports why in its health.
func TestNFSCorruptRecordIsLeftOutOfListings(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	good := e.createNFS(t, "pv-good", nfsParamsFor(ParamSubDir, "good"))
	bad := e.createNFS(t, "pv-bad", nfsParamsFor(ParamSubDir, "bad"))
	v, err := ids.ParseNFSVolumeID(bad.GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.export, ids.HiddenDir, "volumes", v.Key+".json"), []byte("{truncated"), 0o600); err != nil {
		t.Fatal(err)
	}
	resp, err := e.d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, en := range resp.GetEntries() {
		listed = append(listed, en.GetVolume().GetVolumeId())
	}
	if len(listed) != 1 || listed[0] != good.GetVolumeId() {
		t.Errorf("ListVolumes with one corrupt record: %v, want just %s", listed, good.GetVolumeId())
	}
	h, err := e.d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: bad.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	st := h.GetVolumeHealth().GetHealthStatuses()
	if len(st) != 1 || st[0].GetReason() != ReasonNFSRecordCorrupt || !strings.Contains(st[0].GetMessage(), "corrupt") {
		t.Errorf("health of the volume whose record is corrupt: %v, want %s", st, ReasonNFSRecordCorrupt)
	}
}

// An ID over the CSI spec's 128 bytes is made (and logged), not refused: the
// default subDir template cannot keep every ID within it (see warnLongID).
func TestNFSLongVolumeID(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	long := strings.Repeat("n", 63) + "/" + strings.Repeat("c", 63)
	vol := e.createNFS(t, "pv-long", nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
		ParamPVCNamespace, long[:63], ParamPVCName, long[64:]))
	id := vol.GetVolumeId()
	if len(id) <= ids.CSIMaxStringBytes {
		t.Fatalf("volume ID %q is %d bytes; the test wants one over %d", id, len(id), ids.CSIMaxStringBytes)
	}
	if v, err := ids.ParseNFSVolumeID(id); err != nil || v.SubDir != long {
		t.Fatalf("ParseNFSVolumeID(%q) = %+v, %v", id, v, err)
	}
	if _, err := os.Stat(filepath.Join(e.export, long)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
	e.d.nfs.exports.WaitIdle()
	if _, err := os.Stat(filepath.Join(e.export, long)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("after delete: %v", err)
	}
}

// Two classes that spell one server differently name one export: the new
// volume's ID has the server's one spelling, and a subDir taken through
// one spelling is taken through the other.
func TestNFSServerSpellingsAreOneExport(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	upper := nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", ParamPVCName, "db")
	upper[ParamServer] = strings.ToUpper(testServer)
	vol := e.createNFS(t, "pv-upper", upper)
	v, err := ids.ParseNFSVolumeID(vol.GetVolumeId())
	if err != nil || v.Server != testServer {
		t.Fatalf("volume ID %s: server %q (%v), want %q", vol.GetVolumeId(), v.Server, err, testServer)
	}
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-lower", nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", ParamPVCName, "db")))
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("subDir db through %s after %s: %v, want FailedPrecondition", testServer, upper[ParamServer], err)
	}
}

// A volume and one inside it, created at the same time, never both get
// their directory: the creates lock the subDir and share-lock its parents.
func TestNFSNestedCreatesRace(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	for i := 0; i < 20; i++ {
		ns := fmt.Sprintf("ns%d", i)
		outer := nfsReq("pv-outer-"+ns, nfsParamsFor(ParamSubDir, "${pvc.metadata.name}", ParamPVCName, ns))
		inner := nfsReq("pv-inner-"+ns, nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}",
			ParamPVCNamespace, ns, ParamPVCName, "db"))
		errs := make(chan error, 2)
		for _, r := range []*csi.CreateVolumeRequest{outer, inner} {
			go func() {
				_, err := e.d.CreateVolume(ctx, r)
				errs <- err
			}()
		}
		ok := 0
		for range 2 {
			err := <-errs
			switch {
			case err == nil:
				ok++
			case status.Code(err) != codes.FailedPrecondition:
				t.Fatalf("%s: %v, want success or FailedPrecondition", ns, err)
			}
		}
		if ok != 1 {
			t.Fatalf("%s and %s/db created at once: %d succeeded, want exactly one", ns, ns, ok)
		}
	}
}
