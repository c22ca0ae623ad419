package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
)

// A restore of a node-1 snapshot, and a clone of a node-1 volume, made by
// node 2 when the scheduler placed their claims there: node 2's driver
// finds node 1's (its pod, through the API), fetches the data over the
// authenticated transfer channel and makes the volume on its own disk. The
// bytes on node 2 are then those of node 1: contents, holes, owners, modes,
// links and extended attributes.
func testRestoreOnAnotherNode(t *testing.T, c *cluster) {
	keyBeforeRotation = transferKeyIDs(t, c)
	ns := c.namespace(t, "xnode")
	c.apply(t, ns, selectedClaim("source", c.node1, ""))
	src := c.boundPV(t, ns, "source")
	if got := pvNode(src); got != c.node1 {
		t.Fatalf("claim source: PV on node %q, want %s", got, c.node1)
	}
	srcDir := volumeDir(c.dataDir1, src.Spec.CSI.VolumeHandle)
	writeSampleTree(t, srcDir) // as a pod on node 1 would
	want := manifest(t, srcDir)

	c.apply(t, ns, snapshotOf("snap", "source"))
	var snap volumeSnapshot
	eventually(t, 2*time.Minute, "snapshot of source ready", func() (bool, error) {
		ok, err := c.tryGet(&snap, "-n", ns, "volumesnapshot", "snap")
		return ok && snap.Status != nil && snap.Status.ReadyToUse != nil && *snap.Status.ReadyToUse, err
	})
	var content volumeSnapshotContent
	c.get(t, &content, "volumesnapshotcontent", *snap.Status.BoundVolumeSnapshotContentName)
	if by := content.Labels["snapshot.storage.kubernetes.io/managed-by"]; by != c.node1 {
		t.Fatalf("snapshot managed by %q, want %s", by, c.node1)
	}
	if h := *content.Status.SnapshotHandle; exists(snapshotDir(c.dataDir2, h)) {
		t.Fatalf("snapshot %s is on node 2 already", h)
	}

	c.apply(t, ns, selectedClaim("restored", c.node2, fmt.Sprintf(fromSnapshot, "snap")))
	c.apply(t, ns, selectedClaim("cloned", c.node2, `  dataSource:
    kind: PersistentVolumeClaim
    name: source
`))
	for _, name := range []string{"restored", "cloned"} {
		pv := c.boundPV(t, ns, name)
		if got := pvNode(pv); got != c.node2 {
			t.Errorf("claim %s: PV on node %q, want %s", name, got, c.node2)
			continue
		}
		h := pv.Spec.CSI.VolumeHandle
		if exists(volumeDir(c.dataDir1, h)) {
			t.Errorf("claim %s: volume %s made on node 1 too", name, h)
		}
		got := manifest(t, volumeDir(c.dataDir2, h))
		if !slices.Equal(got, want) {
			t.Errorf("claim %s on node 2 differs from its source on node 1:\n got %q\nwant %q", name, got, want)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(volumeDir(c.dataDir2, h), "sparse"), &st); err != nil {
			t.Error(err)
		} else if st.Blocks*512 > 1<<20 {
			t.Errorf("claim %s: the 64 MiB sparse file with 8 KiB of data takes %d bytes on node 2: its holes were filled", name, st.Blocks*512)
		}
	}

	// What the README's many-node section shows.
	t.Logf("kubectl get pv (README):\n%s", c.k(t, "get", "pv", "-o",
		`custom-columns=CLAIM:.spec.claimRef.name,NODE:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0],HANDLE:.spec.csi.volumeHandle`,
		"--sort-by=.spec.claimRef.name"))

	// Deleting removes each node's data; the source and its snapshot
	// stay on node 1 until then.
	var handles []string
	for _, name := range []string{"restored", "cloned"} {
		handles = append(handles, c.boundPV(t, ns, name).Spec.CSI.VolumeHandle)
	}
	c.k(t, "-n", ns, "delete", "volumesnapshots,pvc", "--all")
	eventually(t, 2*time.Minute, "the volumes gone from node 2, the source from node 1", func() (bool, error) {
		for _, h := range handles {
			if exists(volumeDir(c.dataDir2, h)) {
				return false, nil
			}
		}
		return !exists(srcDir), nil
	})
}

// writeSampleTree writes what a volume's user can make: contents, a file
// with holes, a hard link, a symlink, owners, special mode bits, extended
// attributes, an empty directory.
func writeSampleTree(t *testing.T, dir string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "where"), []byte("node 1\n"), 0o644))
	must(os.MkdirAll(filepath.Join(dir, "db/base/1"), 0o700))
	big := make([]byte, 3<<20+123)
	for i := range big {
		big[i] = byte(i*7 + i>>12)
	}
	must(os.WriteFile(filepath.Join(dir, "db/base/1/16384"), big, 0o600))
	f, err := os.Create(filepath.Join(dir, "sparse"))
	must(err)
	_, err = f.WriteAt([]byte(strings.Repeat("x", 4096)), 0)
	must(err)
	_, err = f.WriteAt([]byte(strings.Repeat("y", 4096)), 32<<20)
	must(err)
	must(f.Truncate(64 << 20))
	must(f.Close())
	must(os.Link(filepath.Join(dir, "where"), filepath.Join(dir, "db/where-link")))
	must(os.Symlink("../where", filepath.Join(dir, "db/where-symlink")))
	must(os.Lchown(filepath.Join(dir, "db/base/1/16384"), 999, 999))
	must(os.Chown(filepath.Join(dir, "db"), 999, 998))
	must(syscall.Chmod(filepath.Join(dir, "sparse"), 0o4755))
	must(syscall.Setxattr(filepath.Join(dir, "db/base/1/16384"), "user.checksum", []byte("abc123"), 0))
	must(os.Mkdir(filepath.Join(dir, "empty"), 0o1777))
	must(syscall.Chmod(filepath.Join(dir, "empty"), 0o1777))
}

// manifest describes a tree as its user sees it, one line per entry (atime
// left out: reading changes it).
func manifest(t *testing.T, root string) []string {
	t.Helper()
	first := map[uint64]string{}
	var lines []string
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		line := fmt.Sprintf("%s type=%o mode=%o uid=%d gid=%d", rel, st.Mode&syscall.S_IFMT, st.Mode&0o7777, st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		case syscall.S_IFREG:
			if st.Nlink > 1 {
				if f, ok := first[st.Ino]; ok {
					lines = append(lines, line+" link="+f)
					return nil
				}
				first[st.Ino] = rel
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			h := sha256.New()
			_, err = io.Copy(h, f)
			f.Close()
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" size=%d mtime=%d.%09d sha256=%s", st.Size, st.Mtim.Sec, st.Mtim.Nsec, hex.EncodeToString(h.Sum(nil))[:16])
		}
		if rel != "." && st.Mode&syscall.S_IFMT != syscall.S_IFLNK {
			buf := make([]byte, 256)
			if n, err := syscall.Getxattr(p, "user.checksum", buf); err == nil {
				line += " user.checksum=" + string(buf[:n])
			}
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

// keyBeforeRotation is the transfer key's ID before the docs rotate it.
var keyBeforeRotation []string

// transferKeyIDs are the key IDs in Secret hostpath-csi-transfer.
func transferKeyIDs(t *testing.T, c *cluster) []string {
	t.Helper()
	out := c.k(t, "-n", "hostpath-csi", "get", "secret", "hostpath-csi-transfer", "-o", "jsonpath={.data.keys}")
	raw, err := base64.StdEncoding.DecodeString(out)
	if err != nil {
		t.Fatal(err)
	}
	var keyIDs []string
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(line, "#") {
			keyIDs = append(keyIDs, f[0])
		}
	}
	return keyIDs
}

// After the docs' `transfer-keys.sh rotate`: one key, a new one, and a
// restore across nodes still works: node 2 proves itself with the new key
// only, which node 1's driver read from its remounted Secret without a
// restart.
func testRestoreAfterKeyRotation(t *testing.T, c *cluster) {
	now := transferKeyIDs(t, c)
	if len(now) != 1 || len(keyBeforeRotation) != 1 || now[0] == keyBeforeRotation[0] {
		t.Fatalf("transfer keys %v after the rotation, %v before; want one new key", now, keyBeforeRotation)
	}
	eventually(t, time.Minute, "node 2's copy of the key file holds only the new key", func() (bool, error) {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(c.kubeconfig), "node2", "transfer-keys"))
		return err == nil && strings.HasPrefix(string(b), now[0]+" ") && strings.Count(string(b), "\n") == 1, nil
	})
	ns := c.namespace(t, "xnode-rotated")
	c.apply(t, ns, selectedClaim("source", c.node1, ""))
	src := c.boundPV(t, ns, "source")
	srcDir := volumeDir(c.dataDir1, src.Spec.CSI.VolumeHandle)
	if err := os.WriteFile(filepath.Join(srcDir, "after-rotation"), []byte(now[0]+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.apply(t, ns, selectedClaim("cloned", c.node2, `  dataSource:
    kind: PersistentVolumeClaim
    name: source
`))
	pv := c.boundPV(t, ns, "cloned")
	got, err := os.ReadFile(filepath.Join(volumeDir(c.dataDir2, pv.Spec.CSI.VolumeHandle), "after-rotation"))
	if pvNode(pv) != c.node2 || err != nil || string(got) != now[0]+"\n" {
		t.Fatalf("clone on node 2 after the rotation: PV on %q, file %q (%v)", pvNode(pv), got, err)
	}
	c.k(t, "-n", ns, "delete", "pvc", "--all")
}

// Node 2 dies and its Node object is deleted, as for a machine that will
// not come back: a claim and a snapshot of it on node 2, deleted then, do
// not stay for ever. Within --gone-node-grace (2m) and a sweep, node 1's
// driver deletes the claim's PV (its data went with the node) and hands
// the snapshot's content to node 1's csi-snapshotter, which finishes it.
// Then node 2 comes back: its data directory still holds the volume and
// the snapshot, which nothing deletes (docs/transfer.md says so).
func testNodeGoneForGood(t *testing.T, c *cluster) {
	ns := c.namespace(t, "gone")
	c.apply(t, ns, selectedClaim("doomed", c.node2, ""))
	pv := c.boundPV(t, ns, "doomed")
	c.apply(t, ns, snapshotOf("doomed-snap", "doomed"))
	var snap volumeSnapshot
	eventually(t, 2*time.Minute, "snapshot of doomed ready", func() (bool, error) {
		ok, err := c.tryGet(&snap, "-n", ns, "volumesnapshot", "doomed-snap")
		return ok && snap.Status != nil && snap.Status.ReadyToUse != nil && *snap.Status.ReadyToUse, err
	})
	contentName := *snap.Status.BoundVolumeSnapshotContentName
	var content volumeSnapshotContent
	c.get(t, &content, "volumesnapshotcontent", contentName)
	snapHandle := *content.Status.SnapshotHandle

	c.script(t, "node2-stop.sh")
	c.k(t, "delete", "node", c.node2)
	c.k(t, "delete", "csinode", c.node2, "--ignore-not-found")
	c.k(t, "-n", ns, "delete", "volumesnapshot", "doomed-snap", "--wait=false")
	c.k(t, "-n", ns, "delete", "pvc", "doomed", "--wait=false")
	eventually(t, 6*time.Minute, "the PV and the snapshot content of node 2 gone", func() (bool, error) {
		var p v1.PersistentVolume
		pvThere, err := c.tryGet(&p, "pv", pv.Name)
		if err != nil {
			return false, err
		}
		var vsc volumeSnapshotContent
		vscThere, err := c.tryGet(&vsc, "volumesnapshotcontent", contentName)
		return !pvThere && !vscThere, err
	})

	// Node 2 comes back, disk and all.
	c.script(t, "node2.sh")
	if !exists(volumeDir(c.dataDir2, pv.Spec.CSI.VolumeHandle)) || !exists(snapshotDir(c.dataDir2, snapHandle)) {
		t.Errorf("node 2 came back without the data of its deleted claim and snapshot (volume %s, snapshot %s): "+
			"nothing but its own driver may remove them", pv.Spec.CSI.VolumeHandle, snapHandle)
	}
	// Its driver lists them, and removes them when told to, as
	// docs/transfer.md says (csictl delete, delete-snapshot on its socket).
	conn, err := grpc.NewClient("unix://"+filepath.Join(filepath.Dir(c.kubeconfig), "node2", "csi.sock"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctrl := csi.NewControllerClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var list *csi.ListVolumesResponse
	eventually(t, time.Minute, "node 2's driver answering ListVolumes", func() (bool, error) {
		list, err = ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
		return err == nil, nil
	})
	listed := false
	for _, e := range list.GetEntries() {
		listed = listed || e.GetVolume().GetVolumeId() == pv.Spec.CSI.VolumeHandle
	}
	if !listed {
		t.Errorf("node 2's driver does not list volume %s, which it still holds", pv.Spec.CSI.VolumeHandle)
	}
	if _, err := ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapHandle}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "node 2's data of the claim and snapshot removed", func() (bool, error) {
		return !exists(volumeDir(c.dataDir2, pv.Spec.CSI.VolumeHandle)) && !exists(snapshotDir(c.dataDir2, snapHandle)), nil
	})
}
