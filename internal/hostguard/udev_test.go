package hostguard

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRuleRefusesDataDirectoriesItCannotMatch(t *testing.T) {
	for _, tc := range []struct {
		dir string
		ok  bool
	}{
		{"/var/lib/hostpath-csi/data", true},
		{"relative/data", false},
		{"/", false},
		{"/var/lib/../data", false},
		{"/var/lib/data/", false},
		{"/var/lib/d*ta", false},
		{"/var/lib/d?ta", false},
		{"/var/lib/[d]ata", false},
		{"/var/lib/da\"ta", false},
		{"/var/lib/da\nta", false},
	} {
		text, err := Rule(tc.dir)
		if (err == nil) != tc.ok {
			t.Errorf("Rule(%q): %v, want ok %v", tc.dir, err, tc.ok)
		}
		if tc.ok && !strings.Contains(text, `ATTR{loop/backing_file}=="`+tc.dir+`/*|`) {
			t.Errorf("Rule(%q) does not match backing files under it:\n%s", tc.dir, text)
		}
	}
}

func TestInstallIsAtomicAndResolvesSymlinks(t *testing.T) {
	rules, base := t.TempDir(), t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(rules, "bad/name", link); err == nil {
		t.Fatal("a driver name with a slash was accepted as a file name")
	}
	path, err := Install(rules, "hostpath-csi.github.io", link)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(path) != "10-hostpath-csi.github.io.rules" {
		t.Errorf("rule file %s", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"`+real+`/*|`) || strings.Contains(string(b), link) {
		t.Errorf("rule names %s, not the resolved %s:\n%s", link, real, b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 (udev reads it)", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(rules)
	if len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestMatchesWhateverNamespaceTheDeviceWasAttachedFrom(t *testing.T) {
	const data = "/var/lib/hostpath-csi/data"
	for _, tc := range []struct {
		backing string
		want    bool
	}{
		{data + "/volumes/hpv1-0123456789abcdef0123456789abcdef/disk.img", true},
		{data + "/partial/x/disk.img", true},
		// The driver's container is gone: the path is from the hostPath's root.
		{"/data/volumes/hpv1-0123456789abcdef0123456789abcdef/disk.img", true},
		{"/data/snapshots/hps1-0123456789abcdef0123456789abcdef/disk.img", true},
		{"/volumes/hpv1-0123456789abcdef0123456789abcdef/disk.img (deleted)", true},
		// The kubelet's loop device of a CSI raw block volume.
		{"/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/pvc-1/dev/0b5f", true},
		// Not tenants'.
		{"/var/lib/snapd/snaps/core_1.snap", false},
		{"/srv/images/disk.img", false},
		{"/var/lib/hostpath-csi/database", false},
		{"/data/volumes/hpx1-0123/disk.img", false},
	} {
		if got := Matches(data, tc.backing); got != tc.want {
			t.Errorf("Matches(%q) = %v, want %v", tc.backing, got, tc.want)
		}
	}
}
