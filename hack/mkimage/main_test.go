package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testName = "docker.io/hostpath-csi/hostpath-plugin:v9.9.9-test"

var testEntrypoint = []string{"/hostpath-plugin"}

// writeTestArchive makes an image as make image does (a root filesystem
// tree, the binary as a -file, its entrypoint and PATH) from a small tree:
// a directory, a file, a hard link, a symbolic link and a setuid file.
func writeTestArchive(t *testing.T, entrypoint []string) string {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"etc", "usr/bin", "usr/sbin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(p, content string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "etc/hostname"), "image\n", 0o644)
	write(filepath.Join(root, "usr/sbin/mkfs.ext4"), "#!/bin/sh\n", 0o755)
	write(filepath.Join(root, "usr/bin/mount"), "#!/bin/sh\n", 0o755|os.ModeSetuid)
	if err := os.Link(filepath.Join(root, "usr/sbin/mkfs.ext4"), filepath.Join(root, "usr/sbin/mkfs.ext3")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("mount", filepath.Join(root, "usr/bin/umount")); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "hostpath-plugin")
	write(bin, "#!/bin/sh\necho the driver\n", 0o755)
	out := filepath.Join(dir, "image.oci.tar")
	err := run(testName, out, root, []string{bin + ":/hostpath-plugin:0755"}, nil, entrypoint, nil,
		[]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
	if err != nil {
		t.Fatalf("mkimage: %v", err)
	}
	return out
}

// entry is one member of an archive, for tests that take one apart.
type entry struct {
	hdr  tar.Header
	data []byte
}

func readEntries(t *testing.T, p string) []entry {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var es []entry
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return es
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, entry{*hdr, data})
	}
}

func writeEntries(t *testing.T, p string, es []entry) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		hdr := e.hdr
		hdr.Size = int64(len(e.data))
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func find(t *testing.T, es []entry, name string) *entry {
	t.Helper()
	for i := range es {
		if es[i].hdr.Name == name {
			return &es[i]
		}
	}
	t.Fatalf("no %s in the archive", name)
	return nil
}

func remove(es []entry, name string) []entry {
	var out []entry
	for _, e := range es {
		if e.hdr.Name != name {
			out = append(out, e)
		}
	}
	return out
}

// editJSON decodes e, lets edit change it and encodes it again.
func editJSON(t *testing.T, e *entry, edit func(v any)) {
	t.Helper()
	var v any
	if err := json.Unmarshal(e.data, &v); err != nil {
		t.Fatalf("%s: %v", e.hdr.Name, err)
	}
	edit(v)
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	e.data = data
}

// chain is the archive's index, manifest and config as edited JSON, for
// faults deeper than one blob: rehash stores each blob again under its new
// digest and points its parents (and manifest.json) at it, so that only the
// fault under test remains.
type chain struct {
	es               []entry
	manifest, config map[string]any
}

func openChain(t *testing.T, es []entry) *chain {
	t.Helper()
	c := &chain{es: es}
	var idx map[string]any
	if err := json.Unmarshal(find(t, es, "index.json").data, &idx); err != nil {
		t.Fatal(err)
	}
	md := idx["manifests"].([]any)[0].(map[string]any)
	if err := json.Unmarshal(find(t, es, blob(md["digest"].(string))).data, &c.manifest); err != nil {
		t.Fatal(err)
	}
	cd := c.manifest["config"].(map[string]any)
	if err := json.Unmarshal(find(t, es, blob(cd["digest"].(string))).data, &c.config); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *chain) rehash(t *testing.T) []entry {
	t.Helper()
	put := func(old string, v any) (string, int) {
		data, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(s[:])
		e := find(t, c.es, blob(old))
		e.hdr.Name, e.data = blob(d), data
		return d, len(data)
	}
	cd := c.manifest["config"].(map[string]any)
	cd["digest"], cd["size"] = put(cd["digest"].(string), c.config)
	editJSON(t, find(t, c.es, "manifest.json"), func(v any) {
		v.([]any)[0].(map[string]any)["Config"] = blob(cd["digest"].(string))
	})
	editJSON(t, find(t, c.es, "index.json"), func(v any) {
		md := v.(map[string]any)["manifests"].([]any)[0].(map[string]any)
		md["digest"], md["size"] = put(md["digest"].(string), c.manifest)
	})
	return c.es
}

func TestWrittenArchiveIsAValidImage(t *testing.T) {
	p := writeTestArchive(t, testEntrypoint)
	sum, err := check(p, testName, testEntrypoint)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	for _, want := range []string{testName, `["/hostpath-plugin"]`, "PATH=/usr/local/sbin"} {
		if !strings.Contains(sum, want) {
			t.Errorf("summary does not say %q:\n%s", want, sum)
		}
	}

	// The layer holds the tree as it was, and the binary.
	es := readEntries(t, p)
	c := openChain(t, es)
	layers := c.manifest["layers"].([]any)
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	layer := find(t, es, blob(layers[0].(map[string]any)["digest"].(string)))
	got := map[string]tar.Header{}
	tr := tar.NewReader(bytes.NewReader(layer.data))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[hdr.Name] = *hdr
	}
	for _, tc := range []struct {
		name     string
		typ      byte
		mode     int64
		linkname string
	}{
		{"etc/", tar.TypeDir, 0o755, ""},
		{"etc/hostname", tar.TypeReg, 0o644, ""},
		{"usr/bin/mount", tar.TypeReg, 0o4755, ""},
		{"usr/bin/umount", tar.TypeSymlink, 0o777, "mount"},
		{"usr/sbin/mkfs.ext3", tar.TypeReg, 0o755, ""}, // the first name, in order
		{"usr/sbin/mkfs.ext4", tar.TypeLink, 0o755, "usr/sbin/mkfs.ext3"},
		{"hostpath-plugin", tar.TypeReg, 0o755, ""},
	} {
		h, ok := got[tc.name]
		switch {
		case !ok:
			t.Errorf("%s: not in the layer", tc.name)
		case h.Typeflag != tc.typ || h.Mode != tc.mode || h.Linkname != tc.linkname:
			t.Errorf("%s: type %c mode %o link %q, want %c %o %q", tc.name, h.Typeflag, h.Mode, h.Linkname, tc.typ, tc.mode, tc.linkname)
		}
	}

	// The same inputs make the same archive (every time is the epoch).
	again := writeTestArchive(t, testEntrypoint)
	a, _ := os.ReadFile(p)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Errorf("two archives of the same inputs differ")
	}
}

func TestCheckFindsFaults(t *testing.T) {
	good := writeTestArchive(t, testEntrypoint)
	for _, tc := range []struct {
		name       string
		archive    func(t *testing.T) string // nil: good
		fault      func(t *testing.T, es []entry) []entry
		checkName  string
		entrypoint []string // nil: the one written; empty: any
		want       string
	}{
		{name: "a byte of the layer changed", fault: func(t *testing.T, es []entry) []entry {
			var big *entry
			for i := range es {
				if big == nil || len(es[i].data) > len(big.data) {
					big = &es[i]
				}
			}
			big.data[len(big.data)/2] ^= 1
			return es
		}, want: "holds content of digest"},
		{name: "the config blob missing", fault: func(t *testing.T, es []entry) []entry {
			return remove(es, blob(openChain(t, es).manifest["config"].(map[string]any)["digest"].(string)))
		}, want: "no blob"},
		{name: "the manifest's size in the index wrong", fault: func(t *testing.T, es []entry) []entry {
			editJSON(t, find(t, es, "index.json"), func(v any) {
				md := v.(map[string]any)["manifests"].([]any)[0].(map[string]any)
				md["size"] = md["size"].(float64) + 1
			})
			return es
		}, want: "its descriptor says"},
		{name: "no oci-layout", fault: func(t *testing.T, es []entry) []entry { return remove(es, "oci-layout") }, want: "no oci-layout"},
		{name: "no manifest.json", fault: func(t *testing.T, es []entry) []entry { return remove(es, "manifest.json") }, want: "no manifest.json"},
		{name: "manifest.json names another layer", fault: func(t *testing.T, es []entry) []entry {
			editJSON(t, find(t, es, "manifest.json"), func(v any) {
				v.([]any)[0].(map[string]any)["Layers"] = []any{"blobs/sha256/" + strings.Repeat("0", 64)}
			})
			return es
		}, want: "manifest.json: layers"},
		{name: "manifest.json tags another name", fault: func(t *testing.T, es []entry) []entry {
			editJSON(t, find(t, es, "manifest.json"), func(v any) {
				v.([]any)[0].(map[string]any)["RepoTags"] = []any{"docker.io/other/image:v1"}
			})
			return es
		}, want: "RepoTags"},
		{name: "no name annotation", fault: func(t *testing.T, es []entry) []entry {
			editJSON(t, find(t, es, "index.json"), func(v any) {
				md := v.(map[string]any)["manifests"].([]any)[0].(map[string]any)
				delete(md["annotations"].(map[string]any), "io.containerd.image.name")
			})
			return es
		}, want: "no io.containerd.image.name"},
		{name: "a diff_id that is not the layer's", fault: func(t *testing.T, es []entry) []entry {
			c := openChain(t, es)
			c.config["rootfs"].(map[string]any)["diff_ids"] = []any{"sha256:" + strings.Repeat("1", 64)}
			return c.rehash(t)
		}, want: "diff_id"},
		{name: "the entrypoint not in the image", fault: func(t *testing.T, es []entry) []entry {
			c := openChain(t, es)
			c.config["config"].(map[string]any)["Entrypoint"] = []any{"/usr/bin/hostpath-plugin"}
			return c.rehash(t)
		}, entrypoint: []string{}, want: "not an executable file"},
		{name: "the entrypoint not executable", fault: func(t *testing.T, es []entry) []entry {
			c := openChain(t, es)
			c.config["config"].(map[string]any)["Entrypoint"] = []any{"/etc/hostname"}
			return c.rehash(t)
		}, entrypoint: []string{}, want: "not an executable file"},
		{name: "another name wanted", checkName: "docker.io/hostpath-csi/hostpath-plugin:v1", want: "is named"},
		{name: "another entrypoint wanted", entrypoint: []string{"/bin/sh"}, want: "entrypoint"},
		{name: "no entrypoint", archive: func(t *testing.T) string { return writeTestArchive(t, nil) }, want: "no entrypoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good
			if tc.archive != nil {
				p = tc.archive(t)
			}
			if tc.fault != nil {
				es := tc.fault(t, readEntries(t, p))
				p = filepath.Join(t.TempDir(), "faulty.tar")
				writeEntries(t, p, es)
			}
			name, ep := testName, testEntrypoint
			if tc.checkName != "" {
				name = tc.checkName
			}
			if tc.entrypoint != nil {
				ep = tc.entrypoint
			}
			if tc.archive != nil {
				ep = nil
			}
			_, err := check(p, name, ep)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("check: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

// What would make a broken image is refused: a file written under a
// directory that is a symlink in the root filesystem (its directory entry
// would replace the link on unpack), a name a runtime takes for a whiteout,
// a -file with more fields than it has.
func TestRefusesWhatWouldBreakTheImage(t *testing.T) {
	src := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(src, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		tree  func(root string) error
		files []string
		says  string
	}{
		{"a file under a symlinked directory", func(root string) error {
			if err := os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755); err != nil {
				return err
			}
			return os.Symlink("usr/bin", filepath.Join(root, "bin"))
		}, []string{src + ":/bin/x:0755"}, "is a symlink in the root filesystem"},
		{"a whiteout name", func(root string) error {
			return os.WriteFile(filepath.Join(root, ".wh.etc"), nil, 0o644)
		}, nil, "whiteout"},
		{"a -file with a fourth field", func(string) error { return nil }, []string{src + ":/x:0755:extra"}, "bad -file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if err := tc.tree(root); err != nil {
				t.Fatal(err)
			}
			err := run("docker.io/x/y:1", filepath.Join(t.TempDir(), "img.tar"), root, tc.files, nil, []string{"/x"}, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("got %v, want an error saying %q", err, tc.says)
			}
		})
	}
}
