package state

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

var updateFixture = flag.Bool("update-fixture", false, "rewrite testdata/state-v<SchemaVersion>.db from fixtureVolumes")

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

// Every schema this driver ever wrote opens with today's code and reads back
// the same records. A change of layout must add a migration and keep this
// passing; run with -update-fixture only when adding a new schema's fixture.
func TestOpenFixtures(t *testing.T) {
	fixture := filepath.Join("testdata", "state-v1.db")
	if *updateFixture {
		dir := t.TempDir()
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range fixtureVolumes() {
			if err := s.PutVolume(v); err != nil {
				t.Fatal(err)
			}
		}
		for _, p := range fixturePublications() {
			if err := s.PutPublication(p); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		copyFile(t, filepath.Join(dir, DBFileName), fixture)
	}
	dir := t.TempDir()
	copyFile(t, fixture, filepath.Join(dir, DBFileName))
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("open the schema 1 fixture: %v", err)
	}
	defer s.Close()
	for _, want := range fixtureVolumes() {
		got, err := s.GetVolumeByName(want.Name)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("volume %s from the fixture: %+v, %v; want %+v", want.Name, got, err, want)
		}
	}
	pubs, err := s.AllPublications()
	if err != nil || !reflect.DeepEqual(pubs, fixturePublications()) {
		t.Fatalf("publications from the fixture: %+v, %v", pubs, err)
	}
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
