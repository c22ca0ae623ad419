package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// makeShareB makes the directory an administrator exports as class B's
// share.
func (e *nfsEnv) makeShareB(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(e.export, "team"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// Two classes on one server: class B's share is /export/team. A class-A
// claim named team maps to /export/team: it must not receive class B's
// share root (its .hostpath-csi records, every B volume's data), nor move
// it all to the trash when it is deleted.
func TestNFSClaimDoesNotReceiveAnotherSharesRoot(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	e.makeShareB(t)
	bVol := e.createNFS(t, "pv-b1", classB())
	bv, _ := ids.ParseNFSVolumeID(bVol.GetVolumeId())
	bData := filepath.Join(e.export, "team", bv.SubDir, "data")
	writeFile(t, bData, "team B's data")

	resp, err := e.d.CreateVolume(ctx, nfsReq("pv-a-team", classA("ns-a", "team")))
	if err == nil {
		id := resp.GetVolume().GetVolumeId()
		if _, derr := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); derr != nil {
			t.Logf("delete of the class-A volume: %v", derr)
		}
		e.d.nfs.exports.WaitIdle()
		_, serr := os.Stat(bData)
		t.Fatalf("a class-A claim named team was given class B's share root (volume %s); after its delete, B's data: %v", id, serr)
	}
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `team`) || !strings.Contains(err.Error(), ids.HiddenDir) {
		t.Fatalf("class-A claim named team: %v; want FAILED_PRECONDITION naming team and saying it holds %s", err, ids.HiddenDir)
	}
	if b, err := os.ReadFile(bData); err != nil || string(b) != "team B's data" {
		t.Fatalf("B's data after the refused claim: %q, %v", b, err)
	}
	// Nothing of the refused claim is left: no record, no claim, and B
	// goes on.
	if recs, _ := filepath.Glob(filepath.Join(e.export, ids.HiddenDir, "volumes", "*.json")); len(recs) != 0 {
		t.Errorf("records left by the refused claim on /export: %v", recs)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.export, ids.HiddenDir, "subdirs")); len(ents) != 0 {
		t.Errorf("claims left by the refused claim on /export: %d", len(ents))
	}
	e.createNFS(t, "pv-b2", classB())
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: bVol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
}

// Any directory already at a subDir that the driver did not make for the
// claim asking (data copied in by hand, or by another server name for the
// same export) is refused, and left as it is; so is a subDir whose way
// goes through another share's root.
func TestNFSClaimDoesNotReceiveADirectoryItDidNotMake(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	writeFile(t, filepath.Join(e.export, "found", "file"), "someone's")
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-found", classA("ns", "found")))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `found`) {
		t.Fatalf("claim of an existing directory: %v; want FAILED_PRECONDITION naming it", err)
	}
	if b, err := os.ReadFile(filepath.Join(e.export, "found", "file")); err != nil || string(b) != "someone's" {
		t.Fatalf("the existing directory after the refused claim: %q, %v", b, err)
	}
	// Class B's root is on the way of a class-A template with two levels.
	e.makeShareB(t)
	e.createNFS(t, "pv-b1", classB())
	deep := nfsParamsFor(ParamSubDir, "${pvc.metadata.namespace}/${pvc.metadata.name}", ParamPVCNamespace, "team", ParamPVCName, "db")
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-deep", deep))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), ids.HiddenDir) {
		t.Fatalf("claim team/db, inside class B's share root: %v; want FAILED_PRECONDITION naming %s", err, ids.HiddenDir)
	}
	if _, err := os.Stat(filepath.Join(e.export, "team", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("team/db made inside class B's share: %v", err)
	}
	// The claim asking again, once the directory is moved away, is made.
	if err := os.Rename(filepath.Join(e.export, "found"), filepath.Join(e.dir, "found-moved")); err != nil {
		t.Fatal(err)
	}
	e.createNFS(t, "pv-found", classA("ns", "found"))
}

// onDelete: retain with a template of the claim's name only: a claim of
// the same name in another namespace must not receive the retained data;
// the claim it was retained for (same namespace and name, made again) does.
func TestNFSRetainedDataGoesOnlyToItsClaim(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-a1", classA("team-a", "db", ParamOnDelete, OnDeleteRetain))
	secret := filepath.Join(e.export, "db", "secret")
	writeFile(t, secret, "team-a secrets")
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	resp, err := e.d.CreateVolume(ctx, nfsReq("pv-b1", classA("team-b", "db", ParamOnDelete, OnDeleteRetain)))
	if err == nil {
		b, _ := os.ReadFile(filepath.Join(e.export, resp.GetVolume().GetVolumeContext()[ContextSubDir], "secret"))
		t.Fatalf("a claim db of namespace team-b received the data retained for team-a/db: %q", b)
	}
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "another namespace") || strings.Contains(err.Error(), "team-a") {
		t.Fatalf("claim team-b/db over data retained for team-a/db: %v; want FAILED_PRECONDITION saying it is another namespace's, naming none", err)
	}
	// The claim it was retained for, made again (a new PVC UID, so a new
	// PV name), gets it back.
	back := e.createNFS(t, "pv-a2", classA("team-a", "db", ParamOnDelete, OnDeleteRetain))
	if b, err := os.ReadFile(secret); err != nil || string(b) != "team-a secrets" {
		t.Fatalf("retained data after its claim came back: %q, %v", b, err)
	}
	// Retained again; the class says no claim gets it: refused, even the
	// same one.
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: back.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-a3", classA("team-a", "db", ParamRetainedDataTo, RetainedToNone)))
	wantCode(t, err, codes.FailedPrecondition)
	// sameNamespace: another claim of team-a whose subDir maps there (a
	// fixed one) gets it; one of team-b never does.
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-b2", nfsParamsFor(ParamSubDir, "db", ParamPVCNamespace, "team-b", ParamPVCName, "other",
		ParamRetainedDataTo, RetainedToSameNamespace)))
	wantCode(t, err, codes.FailedPrecondition)
	other := e.createNFS(t, "pv-a4", nfsParamsFor(ParamSubDir, "db", ParamPVCNamespace, "team-a", ParamPVCName, "other",
		ParamRetainedDataTo, RetainedToSameNamespace))
	if b, err := os.ReadFile(secret); err != nil || string(b) != "team-a secrets" {
		t.Fatalf("retained data handed within its namespace: %q, %v", b, err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: other.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	e.d.nfs.exports.WaitIdle()
	_, err = e.d.CreateVolume(ctx, nfsReq("pv-bad", classA("team-a", "db", ParamRetainedDataTo, "anyone")))
	wantCode(t, err, codes.InvalidArgument)
}

// A retained claim written by an earlier driver records no claim: its data
// is handed to no claim (the safe side), and the message says what to do;
// once an administrator moves it away, the subDir is free.
func TestNFSRetainedDataOfAnOlderDriverIsHandedToNoClaim(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	vol := e.createNFS(t, "pv-old", classA("team-a", "db", ParamOnDelete, OnDeleteRetain))
	writeFile(t, filepath.Join(e.export, "db", "secret"), "team-a secrets")
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	// What the older driver wrote: the entry, retained, and nothing else.
	entry := filepath.Join(e.export, ids.HiddenDir, "subdirs", indexEntryName("db"))
	old, _ := json.Marshal(map[string]any{"name": "db", "id": vol.GetVolumeId(), "retained": true})
	if err := os.WriteFile(entry, old, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := e.d.CreateVolume(ctx, nfsReq("pv-again", classA("team-a", "db")))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "earlier version") {
		t.Fatalf("claim over data an older driver retained: %v; want FAILED_PRECONDITION saying an earlier version retained it", err)
	}
	if err := os.Rename(filepath.Join(e.export, "db"), filepath.Join(e.dir, "db-moved")); err != nil {
		t.Fatal(err)
	}
	e.createNFS(t, "pv-again", classA("team-a", "db"))
	if _, err := os.Stat(filepath.Join(e.export, "db", "secret")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the new volume holds the moved data: %v", err)
	}
}

// A create killed by an older driver (its record says nothing of how the
// directory came to be) is finished only over an empty directory (what a
// kill after its mkdir leaves); over one that holds data it is refused.
func TestNFSCreateOfAnOlderDriverTakesOnlyAnEmptyDirectory(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		files bool
		want  codes.Code
	}{{"empty", false, codes.OK}, {"holding data", true, codes.FailedPrecondition}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNFSEnv(t, 10*time.Second)
			e.d.Close()
			var fail atomic.Bool // read by the background sweep too
			e.opts.BeforeFileOp = func(export, op string) error {
				if fail.Load() && strings.HasPrefix(op, "create ") {
					return errors.New("injected: killed before the mkdir")
				}
				return nil
			}
			fail.Store(true)
			e.startNFS(t)
			params := classA("ns", "old")
			if _, err := e.d.CreateVolume(ctx, nfsReq("pv-old", params)); err == nil {
				t.Fatal("the injected failure did not fail the create")
			}
			e.d.Close()
			fail.Store(false)
			recs, _ := filepath.Glob(filepath.Join(e.export, ids.HiddenDir, "volumes", "*.json"))
			if len(recs) != 1 {
				t.Fatalf("%d records", len(recs))
			}
			var rec map[string]any
			b, _ := os.ReadFile(recs[0])
			if err := json.Unmarshal(b, &rec); err != nil {
				t.Fatal(err)
			}
			delete(rec, "exclusive")
			delete(rec, "makingDir")
			b, _ = json.Marshal(rec)
			if err := os.WriteFile(recs[0], b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(e.export, "old"), 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.files {
				writeFile(t, filepath.Join(e.export, "old", "file"), "someone's")
			}
			e.startNFS(t)
			_, err := e.d.CreateVolume(ctx, nfsReq("pv-old", params))
			if status.Code(err) != tc.want {
				t.Fatalf("retry of an older driver's interrupted create over a directory %s: %v; want %s", tc.name, err, tc.want)
			}
			if tc.files {
				if b, err := os.ReadFile(filepath.Join(e.export, "old", "file")); err != nil || string(b) != "someone's" {
					t.Fatalf("the directory after the refused retry: %q, %v", b, err)
				}
			}
		})
	}
}

// A volume whose tree holds a share's records (another class's share made
// inside it, here through a second name for the same server, which no
// check on the server's name can tie to this export) is neither deleted
// nor archived: that share's volumes would go with it.
func TestNFSDeleteLeavesAVolumeThatHoldsAnotherShare(t *testing.T) {
	t.Parallel()
	for _, onDelete := range []string{OnDeleteDelete, OnDeleteArchive} {
		t.Run(onDelete, func(t *testing.T) {
			e := newNFSEnv(t, 10*time.Second)
			aVol := e.createNFS(t, "pv-a", classA("ns-a", "team", ParamOnDelete, onDelete))
			e.standin.AddExport(t, "alias.example", "/export/team", filepath.Join(e.export, "team"))
			bVol := e.createNFS(t, "pv-b", map[string]string{ParamServer: "alias.example", ParamShare: "/export/team"})
			bv, _ := ids.ParseNFSVolumeID(bVol.GetVolumeId())
			bData := filepath.Join(e.export, "team", bv.SubDir, "data")
			writeFile(t, bData, "team B's data")

			_, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: aVol.GetVolumeId()})
			e.d.nfs.exports.WaitIdle()
			if b, rerr := os.ReadFile(bData); rerr != nil || string(b) != "team B's data" {
				t.Fatalf("after DeleteVolume (%v) of a volume holding another share: B's data %q, %v", err, b, rerr)
			}
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), ids.HiddenDir) {
				t.Fatalf("DeleteVolume of a volume holding another share: %v; want FAILED_PRECONDITION naming %s", err, ids.HiddenDir)
			}
			// The volume is as it was.
			if _, err := e.d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: aVol.GetVolumeId()}); err != nil {
				t.Fatalf("the volume after its refused delete: %v", err)
			}
			// Once the other share is gone, the delete goes through.
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: bVol.GetVolumeId()}); err != nil {
				t.Fatal(err)
			}
			e.d.nfs.exports.WaitIdle()
			if err := os.RemoveAll(filepath.Join(e.export, "team", ids.HiddenDir)); err != nil {
				t.Fatal(err)
			}
			e.d.jobs.lookBackoff = 0 // the refusal answers retries for a while, then the tree is looked at again
			if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: aVol.GetVolumeId()}); err != nil {
				t.Fatalf("DeleteVolume once the other share is gone: %v", err)
			}
		})
	}
}

// The converse of a claim receiving another share's root: a class whose
// share lies inside a volume of a class on the same server (class B's
// /export/team while team is a class-A volume, live or retained) is
// refused, before anything of the driver is written into that volume.
func TestNFSShareInsideAnotherSharesVolumeIsRefused(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	aVol := e.createNFS(t, "pv-a", classA("ns-a", "team", ParamOnDelete, OnDeleteRetain))
	writeFile(t, filepath.Join(e.export, "team", "a-data"), "team A's data")
	refused := func(when string) {
		t.Helper()
		_, err := e.d.CreateVolume(ctx, nfsReq("pv-b1", classB()))
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `"team"`) || !strings.Contains(err.Error(), testServer+":/export") {
			t.Fatalf("class B on /export/team, %s: %v; want FAILED_PRECONDITION naming subDir team of share %s:/export", when, err, testServer)
		}
		if _, err := os.Stat(filepath.Join(e.export, "team", ids.HiddenDir)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("class B wrote its records into class A's volume (%s): %v", when, err)
		}
	}
	refused("a live volume of class A")
	// Another controller (the Deployment moved) refuses it too.
	if _, err := e.another(t).CreateVolume(ctx, nfsReq("pv-b1", classB())); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("class B on another controller: %v; want FAILED_PRECONDITION", err)
	}
	if _, err := e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: aVol.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	refused("data retained from class A's volume")
	// Moving the retained data away and making the directory anew is not
	// enough: what the directory holds is no sign of whose it is.
	if err := os.Rename(filepath.Join(e.export, "team"), filepath.Join(e.dir, "team-moved")); err != nil {
		t.Fatal(err)
	}
	e.makeShareB(t)
	refused("data retained from class A's volume, moved away")
	// Once the administrator releases the claim as the refusal says, B
	// works.
	sum := sha256.Sum256([]byte("team"))
	if err := os.Remove(filepath.Join(e.export, ids.HiddenDir, "subdirs", hex.EncodeToString(sum[:]))); err != nil {
		t.Fatal(err)
	}
	e.createNFS(t, "pv-b1", classB())
	// A new process (the Deployment moved) looks again, and lets it be.
	if _, err := e.another(t).CreateVolume(ctx, nfsReq("pv-b2", classB())); err != nil {
		t.Fatalf("class B in use, on another controller: %v", err)
	}
	if left := mountsUnderProbes(t, e); len(left) != 0 {
		t.Fatalf("looks at the export above left mounted: %v", left)
	}
}

func mountsUnderProbes(t *testing.T, e *nfsEnv) []string {
	t.Helper()
	var out []string
	for _, m := range testutil.MountsUnder(t, e.opts.MountDir) {
		if strings.Contains(filepath.Base(m), "probe-") {
			out = append(out, m)
		}
	}
	return out
}

// A look at an export above a share that a kill cut short leaves a mount
// under the controller's mount directory; the next start removes it.
func TestNFSLookAboveAShareLeftByAKillIsUnmountedAtStart(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	left := filepath.Join(e.opts.MountDir, "probe-0123456789abcdef01234567")
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(e.export, left, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	e.restart(t)
	if m := mountsUnderProbes(t, e); len(m) != 0 {
		t.Fatalf("left over after a restart: %v", m)
	}
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mount point left over after a restart: %v", err)
	}
}

// The look for another share inside a volume reads its whole tree, which
// on a large volume takes longer than a sidecar waits: it goes on when the
// caller gives up (ABORTED), is not started over by the retries, and the
// first retry after it ends gets the delete done.
func TestNFSDeleteOfALargeTreeIsNotStartedOverAtEachRetry(t *testing.T) {
	// Not parallel: a short deadline of its own must not run out on a
	// machine busy with other tests.
	e := newNFSEnv(t, 10*time.Second)
	var looks atomic.Int32
	e.opts.BeforeFileOp = func(export, op string) error {
		switch op {
		case "look inside big: open":
			looks.Add(1)
		case "look inside big":
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}
	e.restart(t)
	vol := e.createNFS(t, "pv-big", nfsParamsFor(ParamSubDir, "big"))
	for i := 0; i < 10; i++ {
		if err := os.MkdirAll(filepath.Join(e.export, "big", "d", strings.Repeat("x", i+1)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := e.d.DeleteVolume(short, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
	cancel()
	wantCode(t, err, codes.Aborted)
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err = e.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("DeleteVolume after the look ended: %v", err)
	}
	if n := looks.Load(); n != 1 {
		t.Errorf("the tree was looked at %d times; want once, whatever the retries", n)
	}
	if _, err := os.Stat(filepath.Join(e.export, "big")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the volume's directory after the delete: %v", err)
	}
}
