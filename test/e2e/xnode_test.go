package e2e

import (
	"crypto/sha256"
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
)

// A restore of a node-1 snapshot, and a clone of a node-1 volume, made by
// node 2 when the scheduler placed their claims there: node 2's driver
// finds node 1's (its pod, through the API), fetches the data over the
// authenticated transfer channel and makes the volume on its own disk. The
// bytes on node 2 are then those of node 1: contents, holes, owners, modes,
// links and extended attributes.
func testRestoreOnAnotherNode(t *testing.T, c *cluster) {
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
