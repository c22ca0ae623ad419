package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/test/nfs/report"
)

// decodeID reads an NFS volume or snapshot ID as docs/nfs.md documents it,
// independently of internal/ids: "nfs1:server:share:subDir:key" for a volume,
// "nfss1:server:share:key" for a snapshot (the key is 16 hex digits; a
// subDir may contain ':'; the server here is an IPv4 address). It returns
// the fields after the prefix.
func decodeID(id, prefix string) ([]string, error) {
	rest, ok := strings.CutPrefix(id, prefix)
	if !ok {
		return nil, fmt.Errorf("ID %q does not start with %q", id, prefix)
	}
	server, rest, ok1 := strings.Cut(rest, ":")
	share, rest, ok2 := strings.Cut(rest, ":")
	i := strings.LastIndex(rest, ":")
	key := rest[i+1:]
	if !ok1 || !ok2 || len(key) != 16 || strings.Trim(key, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("ID %q is not %sserver:share:[subDir:]<16 hex>", id, prefix)
	}
	if prefix == "nfss1:" {
		if i >= 0 {
			return nil, fmt.Errorf("snapshot ID %q has more fields than server, share and key", id)
		}
		return []string{server, share, key}, nil
	}
	if i < 0 {
		return nil, fmt.Errorf("volume ID %q has no subDir", id)
	}
	return []string{server, share, rest[:i], key}, nil
}

// run is the scenario. Checks after a failed one still run (and most then
// fail too); the first failure is the one to read.
func (g *guest) run() {
	if !g.check("driver-ready", g.startDriver) {
		return
	}
	g.check("reject-unknown-parameter", func() (string, error) {
		_, err := g.create("pvc-bad", nfsParams("/export", "bad", "team1", "pv-bad", "nfsVersion", "4"), rwx4, nil)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "nfsVersion") {
			return "", fmt.Errorf("want InvalidArgument naming nfsVersion, got %v", err)
		}
		return err.Error(), nil
	})

	// A volume in a subdirectory named after the claim, RWX over NFSv4.2.
	const subDir = "team1/data-a"
	var volA *csi.Volume
	g.check("create-templated-subdir", func() (string, error) {
		var err error
		volA, err = g.create("pvc-a", nfsParams("/export", "data-a", "team1", "pv-a",
			"subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}", "onDelete", "delete", "mountPermissions", "0777"), rwx4, nil)
		if err != nil {
			return "", err
		}
		f, err := decodeID(volA.GetVolumeId(), "nfs1:")
		if err != nil {
			return "", err
		}
		if len(f) != 4 || f[0] != "127.0.0.1" || f[1] != "/export" || f[2] != subDir {
			return "", fmt.Errorf("volume ID %s decodes to %q, want server 127.0.0.1, share /export, subDir %s, key", volA.GetVolumeId(), f, subDir)
		}
		if len(volA.GetAccessibleTopology()) != 0 {
			return "", fmt.Errorf("an NFS volume has topology %v", volA.GetAccessibleTopology())
		}
		if c := volA.GetVolumeContext(); c["server"] != "127.0.0.1" || c["share"] != "/export" || c["subDir"] != subDir {
			return "", fmt.Errorf("volume context %v", c)
		}
		st, err := os.Stat("/export/" + subDir)
		if err != nil {
			return "", fmt.Errorf("on the server: %w", err)
		}
		if st.Mode().Perm() != 0o777 {
			return "", fmt.Errorf("/export/%s has mode %v, want 0777 (mountPermissions)", subDir, st.Mode().Perm())
		}
		return volA.GetVolumeId(), nil
	})
	idA := volA.GetVolumeId()
	g.check("create-idempotent", func() (string, error) {
		again, err := g.create("pvc-a", nfsParams("/export", "data-a", "team1", "pv-a",
			"subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}", "onDelete", "delete", "mountPermissions", "0777"), rwx4, nil)
		if err != nil {
			return "", err
		}
		if again.GetVolumeId() != idA {
			return "", fmt.Errorf("the same name gave %s, then %s", idA, again.GetVolumeId())
		}
		return "", nil
	})

	// Two "nodes" (two stagings, each its own NFS mount) and a pod on each.
	st1, st2 := stagingPath("a-node1"), stagingPath("a-node2")
	t1, t2 := targetPath("pod1", "a"), targetPath("pod2", "a")
	g.check("stage-publish-two-targets-v4.2", func() (string, error) {
		for _, p := range [][2]string{{st1, t1}, {st2, t2}} {
			if err := g.stage(idA, p[0], rwx4); err != nil {
				return "", err
			}
			if err := wantNFSMount(p[0], "127.0.0.1:/export/"+subDir, "nfs4", "4.2"); err != nil {
				return "", err
			}
			if err := g.publish(idA, p[0], p[1], rwx4, false); err != nil {
				return "", err
			}
			if err := wantNFSMount(p[1], "127.0.0.1:/export/"+subDir, "nfs4", "4.2"); err != nil {
				return "", err
			}
		}
		m, _ := mountAt(st1)
		return m.opts, nil
	})
	var sum1 string
	g.check("rwx-write-one-read-other", func() (string, error) {
		var err error
		if sum1, err = writeRandom(t1+"/data", 1<<20); err != nil {
			return "", fmt.Errorf("write through pod1's mount: %w", err)
		}
		return "", wantSum(t2+"/data", sum1, "read through pod2's mount")
	})
	g.check("data-on-server", func() (string, error) {
		return "", wantSum("/export/"+subDir+"/data", sum1, "the export on the server")
	})
	g.check("volume-stats", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		r, err := g.node.NodeGetVolumeStats(c, &csi.NodeGetVolumeStatsRequest{VolumeId: idA, VolumePath: t1})
		if err != nil {
			return "", fmt.Errorf("NodeGetVolumeStats: %w", err)
		}
		for _, u := range r.GetUsage() {
			if u.GetUnit() == csi.VolumeUsage_BYTES {
				if u.GetTotal() <= 0 || u.GetAvailable() <= 0 || u.GetUsed() < 1<<20 {
					return "", fmt.Errorf("bytes usage %v: want total and available > 0, used >= the 1 MiB written", u)
				}
				return fmt.Sprintf("bytes total %d used %d available %d", u.GetTotal(), u.GetUsed(), u.GetAvailable()), nil
			}
		}
		return "", fmt.Errorf("no bytes usage in %v", r.GetUsage())
	})
	g.check("publish-readonly", func() (string, error) {
		ro := targetPath("pod3", "a")
		if err := g.publish(idA, st1, ro, rwx4, true); err != nil {
			return "", err
		}
		werr := os.WriteFile(ro+"/nope", []byte("x"), 0o644)
		rerr := wantSum(ro+"/data", sum1, "read through the read-only mount")
		uerr := g.unpublish(idA, ro)
		if werr == nil {
			return "", fmt.Errorf("writing through a read-only publish succeeded")
		}
		if !strings.Contains(werr.Error(), "read-only") {
			return "", fmt.Errorf("writing through a read-only publish: %v, want a read-only file system error", werr)
		}
		return werr.Error(), errors.Join(rerr, uerr)
	})

	// Snapshot, change the data, restore and clone.
	var snapID string
	g.check("snapshot", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		r, err := g.ctrl.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: "snap-a", SourceVolumeId: idA})
		if err != nil {
			return "", fmt.Errorf("CreateSnapshot: %w", err)
		}
		snapID = r.GetSnapshot().GetSnapshotId()
		if !r.GetSnapshot().GetReadyToUse() || r.GetSnapshot().GetSourceVolumeId() != idA {
			return "", fmt.Errorf("snapshot %v: want ready, of %s", r.GetSnapshot(), idA)
		}
		return snapID, nil
	})
	g.check("snapshot-on-server", func() (string, error) {
		f, err := decodeID(snapID, "nfss1:")
		if err != nil {
			return "", err
		}
		if len(f) != 3 || f[0] != "127.0.0.1" || f[1] != "/export" {
			return "", fmt.Errorf("snapshot ID decodes to %q", f)
		}
		return "", wantSum("/export/.hostpath-csi/snapshots/"+f[2]+"/data", sum1, "the snapshot on the server")
	})
	var sum2 string
	g.check("modify-after-snapshot", func() (string, error) {
		var err error
		sum2, err = writeRandom(t2+"/data", 1<<20)
		return "", err
	})
	var idRestore string
	g.check("restore-from-snapshot", func() (string, error) {
		v, err := g.create("pvc-restore", nfsParams("/export", "restore", "team1", "pv-restore"), rwx4,
			&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}})
		if err != nil {
			return "", err
		}
		idRestore = v.GetVolumeId()
		return "", wantSum("/export/pv-restore/data", sum1, "the restored volume on the server (default subDir: the PV name)")
	})
	g.check("clone-from-volume", func() (string, error) {
		v, err := g.create("pvc-clone", nfsParams("/export", "clone", "team1", "pv-clone"), rwx4,
			&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: idA}}})
		if err != nil {
			return "", err
		}
		err = wantSum("/export/pv-clone/data", sum2, "the clone on the server")
		return "", errors.Join(err, g.delete(v.GetVolumeId()))
	})
	g.check("restored-data-through-mount", func() (string, error) {
		st, t := stagingPath("restore"), targetPath("pod4", "restore")
		if err := g.stage(idRestore, st, rwx4); err != nil {
			return "", err
		}
		if err := g.publish(idRestore, st, t, rwx4, false); err != nil {
			return "", err
		}
		err := wantSum(t+"/data", sum1, "the restored volume through its mount")
		return "", errors.Join(err, g.unpublish(idRestore, t), g.unstage(idRestore, st), g.delete(idRestore))
	})

	// NFSv3, from a StorageClass's mountOptions.
	g.check("v3-stage-publish-write", func() (string, error) {
		v, err := g.create("pvc-v3", nfsParams("/export", "v3", "team1", "pv-v3"), rwx3, nil)
		if err != nil {
			return "", err
		}
		id, st, t := v.GetVolumeId(), stagingPath("v3"), targetPath("pod5", "v3")
		if err := g.stage(id, st, rwx3); err != nil {
			return "", err
		}
		if err := g.publish(id, st, t, rwx3, false); err != nil {
			return "", err
		}
		err = wantNFSMount(t, "127.0.0.1:/export/pv-v3", "nfs", "3")
		sum, werr := writeRandom(t+"/data", 256<<10)
		if err == nil && werr == nil {
			err = wantSum("/export/pv-v3/data", sum, "written over NFSv3, on the server")
		}
		m, _ := mountAt(t)
		return m.opts, errors.Join(err, werr, g.unpublish(id, t), g.unstage(id, st), wantNotMounted(t, st), g.delete(id))
	})
	g.check("unpublish-unstage", func() (string, error) {
		return "", errors.Join(g.unpublish(idA, t1), g.unpublish(idA, t2), g.unstage(idA, st1), g.unstage(idA, st2),
			wantNotMounted(t1, t2, st1, st2))
	})

	// A hostpath volume's snapshot kept on the export (a VolumeSnapshotClass
	// with server and share): it outlives its node, which the move below
	// is (a driver with nothing of the old one's disk).
	var hpID, offSnapID, hpSum string
	g.check("hostpath-snapshot-kept-off-node", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		v, err := g.ctrl.CreateVolume(c, &csi.CreateVolumeRequest{Name: "hp-src", VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}})
		if err != nil {
			return "", fmt.Errorf("CreateVolume of a hostpath volume: %w", err)
		}
		hpID = v.GetVolume().GetVolumeId()
		if hpSum, err = writeRandom(driverFS+"/data/volumes/"+hpID+"/data", 1<<20); err != nil {
			return "", err
		}
		r, err := g.ctrl.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: "hp-snap", SourceVolumeId: hpID,
			Parameters: map[string]string{"server": "127.0.0.1", "share": "/export"}})
		if err != nil {
			return "", fmt.Errorf("CreateSnapshot kept on the export: %w", err)
		}
		offSnapID = r.GetSnapshot().GetSnapshotId()
		f, err := decodeID(offSnapID, "nfss1:")
		if err != nil {
			return "", err
		}
		if len(f) != 3 || f[1] != "/export" || !r.GetSnapshot().GetReadyToUse() {
			return "", fmt.Errorf("snapshot %v: want a ready snapshot on 127.0.0.1:/export", r.GetSnapshot())
		}
		return offSnapID, wantSum("/export/.hostpath-csi/snapshots/"+f[2]+"/data", hpSum, "the hostpath snapshot on the server")
	})

	// The controller moves to another node: everything it needs is on the
	// export. The checks after this one run against the moved controller.
	g.check("controller-moved-create-idempotent", func() (string, error) {
		if _, err := g.moveController(); err != nil {
			return "", err
		}
		c, cancel := ctx()
		defer cancel()
		listed, err := g.listVolumes(c)
		if err != nil {
			return "", fmt.Errorf("ListVolumes on the moved controller: %w", err)
		}
		again, err := g.create("pvc-a", nfsParams("/export", "data-a", "team1", "pv-a",
			"subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}", "onDelete", "delete", "mountPermissions", "0777"), rwx4, nil)
		if err != nil {
			return "", err
		}
		if again.GetVolumeId() != idA {
			return "", fmt.Errorf("the moved controller answered the same CreateVolume with %s, the first with %s", again.GetVolumeId(), idA)
		}
		return fmt.Sprintf("ListVolumes before any call on the export listed %d volumes", len(listed)), nil
	})
	g.check("controller-moved-lists", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		vols, err := g.listVolumes(c)
		if err != nil {
			return "", fmt.Errorf("ListVolumes: %w", err)
		}
		if !slices.Contains(vols, idA) {
			return "", fmt.Errorf("ListVolumes on the moved controller does not list %s: %q", idA, vols)
		}
		r, err := g.ctrl.ListSnapshots(c, &csi.ListSnapshotsRequest{SnapshotId: snapID})
		if err != nil {
			return "", fmt.Errorf("ListSnapshots %s: %w", snapID, err)
		}
		if len(r.GetEntries()) != 1 || r.GetEntries()[0].GetSnapshot().GetSourceVolumeId() != idA {
			return "", fmt.Errorf("ListSnapshots %s on the moved controller: %v", snapID, r.GetEntries())
		}
		return fmt.Sprintf("%d volumes listed", len(vols)), nil
	})

	g.check("hostpath-snapshot-restored-on-another-node", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		v, err := g.ctrl.CreateVolume(c, &csi.CreateVolumeRequest{Name: "hp-restored", VolumeCapabilities: []*csi.VolumeCapability{rwo},
			CapacityRange:       &csi.CapacityRange{RequiredBytes: 16 << 20},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: offSnapID}}}})
		if err != nil {
			return "", fmt.Errorf("restore of %s on the moved driver: %w", offSnapID, err)
		}
		id := v.GetVolume().GetVolumeId()
		err = wantSum(driverFS+"/moved/data/volumes/"+id+"/data", hpSum, "the restore on the other node")
		if _, derr := g.ctrl.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: id}); derr != nil {
			err = errors.Join(err, derr)
		}
		return id, err
	})
	g.check("hostpath-snapshot-deleted-from-another-node", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		if _, err := g.ctrl.DeleteSnapshot(c, &csi.DeleteSnapshotRequest{SnapshotId: offSnapID}); err != nil {
			return "", fmt.Errorf("DeleteSnapshot %s on the moved driver: %w", offSnapID, err)
		}
		f, _ := decodeID(offSnapID, "nfss1:")
		if _, err := os.Stat("/export/.hostpath-csi/snapshots/" + f[2]); !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("the snapshot's data is still on the server after its delete: %v", err)
		}
		return "", nil
	})

	// What each onDelete does on the server.
	g.check("delete-ondelete-delete", func() (string, error) {
		if err := g.delete(idA); err != nil {
			return "", err
		}
		if _, err := os.Stat("/export/" + subDir); !os.IsNotExist(err) {
			return "", fmt.Errorf("/export/%s after DeleteVolume (onDelete delete): %v, want it gone", subDir, err)
		}
		return "", nil
	})
	g.check("delete-idempotent", func() (string, error) { return "", g.delete(idA) })
	g.check("delete-ondelete-retain", func() (string, error) {
		v, err := g.create("pvc-retain", nfsParams("/export", "retain", "team1", "pv-retain", "onDelete", "retain"), rwx4, nil)
		if err != nil {
			return "", err
		}
		sum, err := writeRandom("/export/pv-retain/data", 4096)
		if err != nil {
			return "", err
		}
		if err := g.delete(v.GetVolumeId()); err != nil {
			return "", err
		}
		return "", wantSum("/export/pv-retain/data", sum, "the retained volume's data after DeleteVolume")
	})
	g.check("delete-ondelete-archive", func() (string, error) {
		v, err := g.create("pvc-archive", nfsParams("/export", "archive", "team1", "pv-archive", "onDelete", "archive"), rwx4, nil)
		if err != nil {
			return "", err
		}
		sum, err := writeRandom("/export/pv-archive/data", 4096)
		if err != nil {
			return "", err
		}
		if err := g.delete(v.GetVolumeId()); err != nil {
			return "", err
		}
		if _, err := os.Stat("/export/pv-archive"); !os.IsNotExist(err) {
			return "", fmt.Errorf("/export/pv-archive after DeleteVolume (onDelete archive): %v, want it renamed", err)
		}
		found, _ := filepath.Glob("/export/archived-pv-archive-*")
		if len(found) != 1 {
			return "", fmt.Errorf("want one /export/archived-pv-archive-<time>, found %q", found)
		}
		if _, err := time.Parse("20060102T150405Z", strings.TrimPrefix(found[0], "/export/archived-pv-archive-")); err != nil {
			return "", fmt.Errorf("archive %s: time suffix: %w", found[0], err)
		}
		return found[0], wantSum(found[0]+"/data", sum, "the archived data")
	})
	g.check("delete-snapshot", func() (string, error) {
		c, cancel := ctx()
		defer cancel()
		if _, err := g.ctrl.DeleteSnapshot(c, &csi.DeleteSnapshotRequest{SnapshotId: snapID}); err != nil {
			return "", fmt.Errorf("DeleteSnapshot: %w", err)
		}
		f, err := decodeID(snapID, "nfss1:")
		if err != nil || len(f) != 3 {
			return "", fmt.Errorf("snapshot ID %s: %v", snapID, err)
		}
		if _, err := os.Stat("/export/.hostpath-csi/snapshots/" + f[2]); !os.IsNotExist(err) {
			return "", fmt.Errorf("snapshot directory after DeleteSnapshot: %v, want it gone", err)
		}
		return "", nil
	})

	g.rootSquash()
	g.staleHandles()
	for _, o := range outages {
		g.serverOutage(o)
	}
}

// rootSquash: on an export that squashes root (the driver's own writes
// become nobody's), a non-root pod can write to a volume made with
// mountPermissions 0777, and cannot to one made without: the directory
// then keeps the mode it was created with (0755, owned by nobody).
func (g *guest) rootSquash() {
	// try makes and publishes a volume, has uid 1000 write to it (werr),
	// and cleans up; err is about everything but the write.
	try := func(name, pv string, extra ...string) (msg string, werr, err error) {
		v, err := g.create(name, nfsParams("/export-squash", name, "team1", pv, extra...), rwx4, nil)
		if err != nil {
			return "", nil, err
		}
		id, st, t := v.GetVolumeId(), stagingPath(name), targetPath("pod-"+name, name)
		if err := g.stage(id, st, rwx4); err != nil {
			return "", nil, err
		}
		if err := g.publish(id, st, t, rwx4, false); err != nil {
			return "", nil, errors.Join(err, g.unstage(id, st))
		}
		werr = asTenant(`echo tenant > "$1/by-uid-1000"`, t)
		fi, serr := os.Stat("/export-squash/" + pv)
		if serr == nil {
			msg = fmt.Sprintf("directory on the server: mode %v, owner uid %d", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Uid)
		}
		if werr == nil && serr == nil {
			if f, err := os.Stat("/export-squash/" + pv + "/by-uid-1000"); err != nil {
				serr = fmt.Errorf("the file uid 1000 wrote, on the server: %w", err)
			} else if uid := f.Sys().(*syscall.Stat_t).Uid; uid != 1000 {
				serr = fmt.Errorf("the file uid 1000 wrote is owned by uid %d on the server", uid)
			}
		}
		return msg, werr, errors.Join(serr, g.unpublish(id, t), g.unstage(id, st), g.delete(id))
	}
	g.check("root-squash-mountpermissions-0777", func() (string, error) {
		msg, werr, err := try("sq-open", "pv-sq-open", "mountPermissions", "0777")
		if werr != nil {
			return msg, fmt.Errorf("uid 1000 could not write to a volume with mountPermissions 0777 on a root_squash export (%s): %w", msg, werr)
		}
		return msg, err
	})
	g.check("root-squash-default-mode-denies-nonroot", func() (string, error) {
		msg, werr, err := try("sq-default", "pv-sq-default")
		if werr == nil && err != nil {
			return msg, err
		}
		if werr == nil {
			return msg, fmt.Errorf("uid 1000 wrote to a volume without mountPermissions on a root_squash export (%s): the advice of docs/nfs.md would be wrong", msg)
		}
		if !strings.Contains(werr.Error(), "Permission denied") {
			return msg, fmt.Errorf("uid 1000's write failed with %v, want Permission denied", werr)
		}
		return msg + "; uid 1000: " + werr.Error(), err
	})
}

// An outage of the NFS server, two ways: "hung", its packets dropped (a
// server that is gone or cut off: the client's requests wait for answers
// that never come), and "stopped", its nfsd threads ended (connections
// refused). During each, with a volume published: NodeGetVolumeStats and a
// CreateVolume on the export fail within the driver's timeout with
// DeadlineExceeded or Unavailable naming the server, the mount process the
// CreateVolume started is gone, a hostpath CreateVolume meanwhile does not
// wait, and the stale mounts unpublish and unstage. When the server is
// back, CreateVolume on the export works again.
type outage struct {
	name        string
	stop, start func() error
}

var outages = []outage{
	{name: "hung",
		stop: func() error {
			return errors.Join(run("nft", "add", "table", "ip", "outage"),
				run("nft", "add", "chain", "ip", "outage", "out", "{ type filter hook output priority 0; }"),
				run("nft", "add", "rule", "ip", "outage", "out", "tcp", "dport", "2049", "drop"),
				run("nft", "add", "rule", "ip", "outage", "out", "tcp", "sport", "2049", "drop"))
		},
		start: func() error { return run("nft", "delete", "table", "ip", "outage") },
	},
	{name: "stopped",
		stop:  func() error { return errors.Join(run("exportfs", "-ua"), run("rpc.nfsd", "0")) },
		start: func() error { return errors.Join(run("exportfs", "-ra"), run("rpc.nfsd", "4")) },
	},
}

func (g *guest) serverOutage(o outage) {
	checks := report.OutageChecks(o.name)
	pvc := "pvc-live-" + o.name
	v, err := g.create(pvc, nfsParams("/export", pvc, "team1", "pv-live-"+o.name), rwx4, nil)
	id, st, t := v.GetVolumeId(), stagingPath(pvc), targetPath("pod-"+pvc, pvc)
	if err == nil {
		err = g.stage(id, st, rwx4)
	}
	if err == nil {
		err = g.publish(id, st, t, rwx4, false)
	}
	if err == nil {
		_, err = writeRandom(t+"/data", 4096)
	}
	if err == nil {
		err = o.stop()
	}
	if err != nil {
		for _, name := range checks {
			g.check(name, func() (string, error) { return "", fmt.Errorf("publishing a volume and stopping the server: %w", err) })
		}
		return
	}
	fmt.Printf("guest: NFS server %s at uptime %.1f s\n", o.name, uptime())

	type result struct {
		err error
		d   time.Duration
	}
	var pending atomic.Bool
	pending.Store(true)
	createDone, statsDone := make(chan result, 1), make(chan result, 1)
	go func() {
		start := time.Now()
		_, err := g.create("pvc-dead-"+o.name, nfsParams("/export", "dead", "team1", "pv-dead-"+o.name), rwx4, nil)
		pending.Store(false)
		createDone <- result{err, time.Since(start)}
	}()
	go func() {
		start := time.Now()
		c, cancel := ctx()
		defer cancel()
		_, err := g.node.NodeGetVolumeStats(c, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: t})
		statsDone <- result{err, time.Since(start)}
	}()
	time.Sleep(2 * time.Second)
	g.check(checks[0], func() (string, error) {
		v, err := g.create("pvc-local-"+o.name, nil, rwo, nil)
		if err != nil {
			return "", fmt.Errorf("a hostpath CreateVolume while the NFS server is %s: %w", o.name, err)
		}
		still := pending.Load()
		if err := g.delete(v.GetVolumeId()); err != nil {
			return "", err
		}
		if !still {
			return "the NFS CreateVolume had already returned, so this shows nothing about waiting", nil
		}
		return "answered while the NFS CreateVolume was still waiting for the server", nil
	})
	wantFailure := func(what string, r result) (string, error) {
		msg := fmt.Sprintf("after %.1f s (--nfs-timeout %s): %v", r.d.Seconds(), nfsTimeout, r.err)
		if r.err == nil {
			return msg, fmt.Errorf("%s succeeded while the server is %s", what, o.name)
		}
		code := status.Code(r.err)
		if code != codes.DeadlineExceeded && code != codes.Unavailable {
			return msg, fmt.Errorf("%s: code %v, want DeadlineExceeded or Unavailable", what, code)
		}
		if !strings.Contains(status.Convert(r.err).Message(), "127.0.0.1") {
			return msg, fmt.Errorf("%s: the error does not name the server 127.0.0.1", what)
		}
		return msg, nil
	}
	g.check(checks[1], func() (string, error) { return wantFailure("NodeGetVolumeStats", <-statsDone) })
	g.check(checks[2], func() (string, error) { return wantFailure("CreateVolume", <-createDone) })
	g.check(checks[3], func() (string, error) {
		if left := processesMounting("127.0.0.1:"); len(left) > 0 {
			return "", fmt.Errorf("mount processes left running: %q", left)
		}
		return "", nil
	})
	g.check(checks[4], func() (string, error) {
		return "", errors.Join(g.unpublish(id, t), g.unstage(id, st), wantNotMounted(t, st))
	})
	g.check(checks[5], func() (string, error) {
		if err := o.start(); err != nil {
			return "", fmt.Errorf("bringing the server back: %w", err)
		}
		// As a CO would: retry while the answer says to.
		start := time.Now()
		for attempt := 1; ; attempt++ {
			v, err := g.create("pvc-back-"+o.name, nfsParams("/export", "back", "team1", "pv-back-"+o.name), rwx4, nil)
			if err == nil {
				return fmt.Sprintf("attempt %d, %.1f s after the server came back", attempt, time.Since(start).Seconds()), g.delete(v.GetVolumeId())
			}
			if c := status.Code(err); (c != codes.DeadlineExceeded && c != codes.Unavailable) || time.Since(start) > 3*time.Minute {
				return "", fmt.Errorf("attempt %d, %.1f s after the server came back: %w", attempt, time.Since(start).Seconds(), err)
			}
			time.Sleep(2 * time.Second)
		}
	})
}

// processesMounting lists the command lines of running processes that
// name source (a mount the driver started and did not end).
func processesMounting(source string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range dirs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
		if strings.Contains(cmd, "mount") && strings.Contains(cmd, source) {
			found = append(found, cmd)
		}
	}
	return found
}

func (g *guest) listVolumes(c context.Context) ([]string, error) {
	var ids []string
	token := ""
	for {
		r, err := g.ctrl.ListVolumes(c, &csi.ListVolumesRequest{MaxEntries: 50, StartingToken: token})
		if err != nil {
			return ids, err
		}
		for _, e := range r.GetEntries() {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
		if token = r.GetNextToken(); token == "" {
			return ids, nil
		}
	}
}

// staleHandles replaces the filesystem under a published volume's export
// on the server (as when a server's disk is restored or re-created): the
// file handles the client holds go stale. Staging the volume again, as
// the kubelet does for the next pod, must give a working mount; the stale
// mounts must still unpublish and unstage; the controller must work on
// the export again.
func (g *guest) staleHandles() {
	const name, pv, share = "pvc-stale", "pv-stale", "/export-stale"
	var id string
	st, t1, t2 := stagingPath(name), targetPath("pod-stale1", name), targetPath("pod-stale2", name)
	var sum string
	g.check("stale-handle-made-stale", func() (string, error) {
		v, err := g.create(name, nfsParams(share, name, "team1", pv), rwx4, nil)
		if err != nil {
			return "", err
		}
		id = v.GetVolumeId()
		if err := g.stage(id, st, rwx4); err != nil {
			return "", err
		}
		if err := g.publish(id, st, t1, rwx4, false); err != nil {
			return "", err
		}
		if _, err := writeRandom(t1+"/data", 4096); err != nil {
			return "", err
		}
		// The server's side: a new filesystem with the same tree.
		err = errors.Join(run("exportfs", "-u", "127.0.0.0/8:"+share), run("umount", share),
			run("mount", "-t", "tmpfs", "-o", "mode=0755", "export-stale", share), os.Mkdir(share+"/"+pv, 0o755))
		if err != nil {
			return "", err
		}
		if sum, err = writeRandom(share+"/"+pv+"/data", 4096); err != nil {
			return "", err
		}
		if err := run("exportfs", "-ra"); err != nil {
			return "", err
		}
		_, err = os.ReadFile(t1 + "/data")
		if !errors.Is(err, syscall.ESTALE) {
			return "", fmt.Errorf("reading through the old mount after the server's filesystem was replaced: %v, want ESTALE (the scenario did not happen)", err)
		}
		return err.Error(), nil
	})
	g.check("stale-handle-restage-remounts", func() (string, error) {
		if err := g.stage(id, st, rwx4); err != nil {
			return "", fmt.Errorf("staging again over a stale mount: %w", err)
		}
		if err := g.publish(id, st, t2, rwx4, false); err != nil {
			return "", fmt.Errorf("publishing for a new pod after staging again: %w", err)
		}
		return "", wantSum(t2+"/data", sum, "the new pod's mount")
	})
	g.check("stale-handle-unpublish-unstage", func() (string, error) {
		return "", errors.Join(g.unpublish(id, t1), g.unpublish(id, t2), g.unstage(id, st), wantNotMounted(t1, t2, st))
	})
	g.check("stale-handle-controller-works", func() (string, error) {
		v, err := g.create("pvc-stale-after", nfsParams(share, "after", "team1", "pv-stale-after"), rwx4, nil)
		if err != nil {
			return "", fmt.Errorf("CreateVolume on the export whose filesystem was replaced: %w", err)
		}
		if _, err := os.Stat(share + "/pv-stale-after"); err != nil {
			return "", fmt.Errorf("on the server: %w", err)
		}
		return "", g.delete(v.GetVolumeId())
	})
}
