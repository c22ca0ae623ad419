package driver

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestParametersTableNamesEveryKey keeps docs/parameters.md and the lists
// the driver validates classes with the same, both ways: a key the driver
// accepts has its row, under the kind of object that carries it, and a row
// names no key the driver would refuse there.
func TestParametersTableNamesEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/parameters.md")
	if err != nil {
		t.Fatalf("reading the parameters table: %v", err)
	}
	row := regexp.MustCompile(`(?m)^\| ([^|]+) \| ([^|]+) \|`)
	code := regexp.MustCompile("`([^`]+)`")
	documented := map[string][]string{} // where -> keys
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		if m[1] == "where" || strings.HasPrefix(m[1], "---") {
			continue
		}
		for _, k := range code.FindAllStringSubmatch(m[2], -1) {
			documented[m[1]] = append(documented[m[1]], k[1])
		}
	}
	keys := func(m map[string]bool) []string {
		return slices.Sorted(func(yield func(string) bool) {
			for k := range m {
				if !yield(k) {
					return
				}
			}
		})
	}
	ignored := keys(ignoredSnapshotParameters)
	kinds := []struct {
		where    string // a row's first cell names the kind when it contains this
		accepted []string
		// read by a sidecar or the kubelet, never passed as a parameter
		notValidated []string
	}{
		{"StorageClass (hostpath", knownParameters, []string{"csi.storage.k8s.io/fstype"}},
		// An NFS class also takes any csi.storage.k8s.io/ key (what
		// csi-provisioner adds), the three it sets among them.
		{"StorageClass (NFS", append(slices.Clone(nfsKnownParameters), ParamPVCName, ParamPVCNamespace, ParamPVName), nil},
		{"StorageClass (hostpath, NFS", nil, nil},
		{"VolumeSnapshotClass", append(append(keys(snapshotParameters.known), snapshotParameters.own...), ignored...), nil},
		{"VolumeGroupSnapshotClass", append(keys(groupSnapshotParameters.known), ignored...), nil},
		{"inline volume", ephemeralAttributeNames, []string{"fsType"}},
		{"VolumeAttributesClass (hostpath", hostpathMutableParameters, nil},
		{"VolumeAttributesClass (NFS", nfsMutableParameters, nil},
	}
	for _, k := range kinds {
		var rows []string
		for where, ks := range documented {
			if strings.Contains(where, k.where) || (k.where == "StorageClass (NFS" && strings.Contains(where, "NFS)")) ||
				(k.where == "StorageClass (hostpath" && strings.HasPrefix(where, "StorageClass (hostpath")) {
				rows = append(rows, ks...)
			}
		}
		for _, key := range k.accepted {
			if !slices.Contains(rows, key) {
				t.Errorf("docs/parameters.md has no %s row for %q, which the driver accepts there", k.where+"…", key)
			}
		}
		if k.accepted == nil {
			continue
		}
		for _, key := range rows {
			if !slices.Contains(k.accepted, key) && !slices.Contains(k.notValidated, key) {
				t.Errorf("docs/parameters.md names %q under %s…, which the driver refuses there", key, k.where)
			}
		}
	}
	if len(documented) < 5 {
		t.Fatalf("read %d kinds of rows from docs/parameters.md: the table's shape changed", len(documented))
	}
}
