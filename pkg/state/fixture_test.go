package state

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var updateFixture = flag.Bool("update-fixture", false, "write testdata/state-v2.db (the current schema) from the fixture records")

// The records in the fixture of schema 1, as written on 2026-11-22.
func fixtureVolumes() []*Volume {
	return []*Volume{
		{ID: "hpv1-0123456789abcdef0123456789abcdef", Name: "pvc-1f0c", CapacityBytes: 1 << 30, AccessType: "mount", NodeID: "node-a",
			Phase: PhaseReady, CreatedAt: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC),
			Parameters: map[string]string{"mountPermissions": "0750", "csi.storage.k8s.io/pvc/name": "data-mongo-0"}},
		{ID: "hpv1-fedcba9876543210fedcba9876543210", Name: "pvc-2e9d", CapacityBytes: 5 << 20, AccessType: "mount", NodeID: "node-a",
			Phase: PhaseDeleting, CreatedAt: time.Date(2026, 11, 22, 12, 1, 0, 0, time.UTC)},
	}
}

// fixturePublications are in key order: publish sorts before stage.
func fixturePublications() []*Publication {
	id := "hpv1-0123456789abcdef0123456789abcdef"
	return []*Publication{
		{VolumeID: id, NodeID: "node-a", Kind: KindPublish, Path: "/var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pvc-1f0c/mount",
			StagingPath: "/var/lib/kubelet/plugins/kubernetes.io/csi/hostpath-csi.github.io/x/globalmount", ReadOnly: true,
			MountFlags: []string{"noexec"}, AccessMode: "SINGLE_NODE_WRITER", Phase: PhaseMounted},
		{VolumeID: id, NodeID: "node-a", Kind: KindStage, Path: "/var/lib/kubelet/plugins/kubernetes.io/csi/hostpath-csi.github.io/x/globalmount", Phase: PhaseMounted},
	}
}

// The snapshot and restored volume added in the fixture of schema 2.
func fixtureV2Snapshot() *Snapshot {
	return &Snapshot{ID: "hps1-00112233445566778899aabbccddeeff", Name: "snapshot-1", SourceVolumeID: "hpv1-0123456789abcdef0123456789abcdef",
		SourceCapacity: 1 << 30, SizeBytes: 8192, Mechanism: "reflink", Phase: PhaseReady,
		CreatedAt: time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC)}
}

func fixtureV2Group() *GroupSnapshot {
	return &GroupSnapshot{ID: "hpg1-0123456789abcdef0123456789abcdef", Name: "group-1",
		SourceVolumeIDs: []string{"hpv1-0123456789abcdef0123456789abcdef"}, SnapshotIDs: []string{"hps1-ffeeddccbbaa99887766554433221100"},
		Phase: PhaseReady, CreatedAt: time.Date(2026, 11, 22, 13, 2, 0, 0, time.UTC)}
}

func fixtureV2Member() *Snapshot {
	return &Snapshot{ID: "hps1-ffeeddccbbaa99887766554433221100", Name: "group-1-member-0", SourceVolumeID: "hpv1-0123456789abcdef0123456789abcdef",
		SourceCapacity: 1 << 30, SizeBytes: 4096, Mechanism: "copy", Phase: PhaseReady,
		CreatedAt: time.Date(2026, 11, 22, 13, 2, 0, 0, time.UTC), GroupID: "hpg1-0123456789abcdef0123456789abcdef"}
}

func fixtureV2Restored() *Volume {
	return &Volume{ID: "hpv1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Name: "pvc-restored", CapacityBytes: 1 << 30, AccessType: "mount", NodeID: "node-a",
		Phase: PhaseReady, CreatedAt: time.Date(2026, 11, 22, 13, 1, 0, 0, time.UTC), SourceSnapshotID: fixtureV2Snapshot().ID}
}

// Every schema this driver ever wrote opens with today's code (migrating
// it) and reads back the same records. A change of layout must add a
// migration and keep this passing; -update-fixture writes the fixture of
// the current schema.
func TestOpenFixtures(t *testing.T) {
	if *updateFixture {
		writeFixture(t, filepath.Join("testdata", "state-v2.db"))
	}
	for _, version := range []int{1, 2} {
		t.Run(fmt.Sprint("schema ", version), func(t *testing.T) {
			dir := t.TempDir()
			copyFile(t, filepath.Join("testdata", fmt.Sprintf("state-v%d.db", version)), filepath.Join(dir, DBFileName))
			s, err := Open(dir)
			if err != nil {
				t.Fatalf("open the schema %d fixture: %v", version, err)
			}
			defer s.Close()
			for _, want := range fixtureVolumes() {
				got, err := s.GetVolumeByName(want.Name)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("volume %s: %+v, %v; want %+v", want.Name, got, err, want)
				}
			}
			pubs, err := s.AllPublications()
			if err != nil || !reflect.DeepEqual(pubs, fixturePublications()) {
				t.Fatalf("publications: %+v, %v", pubs, err)
			}
			snaps, _, err := s.ListSnapshots("", 0, nil)
			if err != nil {
				t.Fatalf("snapshots after migration: %v", err)
			}
			if version == 1 {
				if len(snaps) != 0 {
					t.Fatalf("schema 1 had no snapshots, got %d", len(snaps))
				}
				if gs, err := s.Groups(); err != nil || len(gs) != 0 {
					t.Fatalf("group snapshots after migrating schema 1: %v %v", gs, err)
				}
				return
			}
			if len(snaps) != 2 || !reflect.DeepEqual(snaps[0], fixtureV2Snapshot()) || !reflect.DeepEqual(snaps[1], fixtureV2Member()) {
				t.Fatalf("snapshots: %+v", snaps)
			}
			if g, err := s.GetGroupByName("group-1"); err != nil || !reflect.DeepEqual(g, fixtureV2Group()) {
				t.Fatalf("group snapshot: %+v %v", g, err)
			}
			if got, err := s.GetVolumeByName("pvc-restored"); err != nil || !reflect.DeepEqual(got, fixtureV2Restored()) {
				t.Fatalf("restored volume: %+v %v", got, err)
			}
		})
	}
}

func writeFixture(t *testing.T, path string) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range append(fixtureVolumes(), fixtureV2Restored()) {
		if err := s.PutVolume(v); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range fixturePublications() {
		if err := s.PutPublication(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, sn := range []*Snapshot{fixtureV2Snapshot(), fixtureV2Member()} {
		if err := s.PutSnapshot(sn); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutGroup(fixtureV2Group()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	copyFile(t, filepath.Join(dir, DBFileName), path)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
