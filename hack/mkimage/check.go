package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
)

// The media types an archive of ours may hold.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
	mediaLayerGz  = "application/vnd.oci.image.layer.v1.tar+gzip"
)

// jsonLimit bounds the JSON documents check keeps in memory (containerd's
// importer allows 20 MiB).
const jsonLimit = 20 << 20

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type imageIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     []ociDescriptor `json:"manifests"`
}

type imageManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string `json:"Entrypoint"`
		Cmd        []string `json:"Cmd"`
		Env        []string `json:"Env"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// archiveFile is what the first pass learns of one regular file of the
// archive: its size and SHA-256, and its bytes if it is small enough to be
// one of the JSON documents.
type archiveFile struct {
	size   int64
	digest string
	data   []byte
}

// check verifies the image archive at p as the loaders read it, and returns
// a summary of it. name and entrypoint, when not empty, are what the image
// must be called and run.
func check(p, name string, entrypoint []string) (string, error) {
	files, err := scanArchive(p)
	if err != nil {
		return "", err
	}
	jsonFile := func(fname string, v any) error {
		f, ok := files[fname]
		if !ok {
			return fmt.Errorf("%s: no %s", p, fname)
		}
		if f.data == nil {
			return fmt.Errorf("%s: %s is larger than %d bytes", p, fname, jsonLimit)
		}
		if err := json.Unmarshal(f.data, v); err != nil {
			return fmt.Errorf("%s: %s: %w", p, fname, err)
		}
		return nil
	}
	// blobJSON reads the blob d names after checking its digest and size.
	blobJSON := func(what string, d ociDescriptor, v any) error {
		if _, err := blobOf(files, d); err != nil {
			return fmt.Errorf("%s: %s: %w", p, what, err)
		}
		return jsonFile(blob(d.Digest), v)
	}
	// Every blob is stored under its own digest.
	for fname, f := range files {
		if !strings.HasPrefix(fname, "blobs/") {
			continue
		}
		if want := "blobs/sha256/" + strings.TrimPrefix(f.digest, "sha256:"); fname != want {
			return "", fmt.Errorf("%s: %s holds content of digest %s", p, fname, f.digest)
		}
	}

	var layout struct {
		ImageLayoutVersion string `json:"imageLayoutVersion"`
	}
	if err := jsonFile("oci-layout", &layout); err != nil {
		return "", err
	}
	if layout.ImageLayoutVersion != "1.0.0" {
		return "", fmt.Errorf("%s: oci-layout: version %q, want 1.0.0", p, layout.ImageLayoutVersion)
	}
	var idx imageIndex
	if err := jsonFile("index.json", &idx); err != nil {
		return "", err
	}
	if idx.SchemaVersion != 2 || idx.MediaType != mediaIndex {
		return "", fmt.Errorf("%s: index.json: schemaVersion %d, mediaType %q", p, idx.SchemaVersion, idx.MediaType)
	}
	if len(idx.Manifests) != 1 {
		return "", fmt.Errorf("%s: index.json: %d manifests, want 1", p, len(idx.Manifests))
	}
	md := idx.Manifests[0]
	if md.MediaType != mediaManifest {
		return "", fmt.Errorf("%s: index.json: manifest media type %q", p, md.MediaType)
	}
	imageName := md.Annotations["io.containerd.image.name"]
	if imageName == "" {
		return "", fmt.Errorf("%s: index.json: no io.containerd.image.name annotation: ctr images import would not name the image", p)
	}
	if name != "" && imageName != name {
		return "", fmt.Errorf("%s: index.json: the image is named %q, want %q", p, imageName, name)
	}
	tag := imageName[strings.LastIndex(imageName, ":")+1:]
	if i := strings.LastIndex(imageName, ":"); i < 0 || strings.Contains(tag, "/") {
		return "", fmt.Errorf("%s: index.json: image name %q has no tag", p, imageName)
	}
	if ref := md.Annotations["org.opencontainers.image.ref.name"]; ref != tag {
		return "", fmt.Errorf("%s: index.json: org.opencontainers.image.ref.name is %q, want the tag %q", p, ref, tag)
	}
	var m imageManifest
	if err := blobJSON("manifest", md, &m); err != nil {
		return "", err
	}
	if m.SchemaVersion != 2 || m.MediaType != mediaManifest {
		return "", fmt.Errorf("%s: manifest: schemaVersion %d, mediaType %q", p, m.SchemaVersion, m.MediaType)
	}
	if m.Config.MediaType != mediaConfig {
		return "", fmt.Errorf("%s: manifest: config media type %q", p, m.Config.MediaType)
	}
	var cfg imageConfig
	if err := blobJSON("config", m.Config, &cfg); err != nil {
		return "", err
	}
	if cfg.OS != "linux" || cfg.Architecture == "" {
		return "", fmt.Errorf("%s: config: os %q, architecture %q", p, cfg.OS, cfg.Architecture)
	}
	if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != len(m.Layers) || len(m.Layers) == 0 {
		return "", fmt.Errorf("%s: config: rootfs %q with %d diff_ids for %d layers", p, cfg.RootFS.Type, len(cfg.RootFS.DiffIDs), len(m.Layers))
	}
	for i, l := range m.Layers {
		if l.MediaType != mediaLayer && l.MediaType != mediaLayerGz {
			return "", fmt.Errorf("%s: manifest: layer %d media type %q", p, i, l.MediaType)
		}
		if _, err := blobOf(files, l); err != nil {
			return "", fmt.Errorf("%s: layer %d: %w", p, i, err)
		}
	}
	if len(cfg.Config.Entrypoint) == 0 {
		return "", fmt.Errorf("%s: config: no entrypoint", p)
	}
	if len(entrypoint) > 0 && !slices.Equal(cfg.Config.Entrypoint, entrypoint) {
		return "", fmt.Errorf("%s: config: entrypoint %q, want %q", p, cfg.Config.Entrypoint, entrypoint)
	}

	// docker load reads manifest.json: the same config and layers, by path.
	var dm []dockerManifestEntry
	if err := jsonFile("manifest.json", &dm); err != nil {
		return "", err
	}
	if len(dm) != 1 {
		return "", fmt.Errorf("%s: manifest.json: %d images, want 1", p, len(dm))
	}
	if dm[0].Config != blob(m.Config.Digest) {
		return "", fmt.Errorf("%s: manifest.json: config %q, the OCI manifest's is %q", p, dm[0].Config, blob(m.Config.Digest))
	}
	var layerPaths []string
	for _, l := range m.Layers {
		layerPaths = append(layerPaths, blob(l.Digest))
	}
	if !slices.Equal(dm[0].Layers, layerPaths) {
		return "", fmt.Errorf("%s: manifest.json: layers %q, the OCI manifest's are %q", p, dm[0].Layers, layerPaths)
	}
	if !slices.Equal(dm[0].RepoTags, []string{imageName}) {
		return "", fmt.Errorf("%s: manifest.json: RepoTags %q, want [%q]", p, dm[0].RepoTags, imageName)
	}

	// Second pass: the layers' contents, their diff_ids and the entrypoint.
	found, err := scanLayers(p, m.Layers, cfg.RootFS.DiffIDs, cfg.Config.Entrypoint[0])
	if err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("%s: entrypoint %s is not an executable file in the image", p, cfg.Config.Entrypoint[0])
	}

	var b strings.Builder
	fmt.Fprintf(&b, "image      %s (%s/%s)\n", imageName, cfg.OS, cfg.Architecture)
	fmt.Fprintf(&b, "manifest   %s (%d bytes)\n", md.Digest, md.Size)
	fmt.Fprintf(&b, "config     %s (%d bytes)\n", m.Config.Digest, m.Config.Size)
	for _, l := range m.Layers {
		fmt.Fprintf(&b, "layer      %s (%d bytes)\n", l.Digest, l.Size)
	}
	fmt.Fprintf(&b, "entrypoint %q\n", cfg.Config.Entrypoint)
	if len(cfg.Config.Cmd) > 0 {
		fmt.Fprintf(&b, "cmd        %q\n", cfg.Config.Cmd)
	}
	fmt.Fprintf(&b, "env        %q\n", cfg.Config.Env)
	return b.String(), nil
}

// blobOf returns the file that d names, after checking that it is there
// with d's size (its digest was checked against its path).
func blobOf(files map[string]archiveFile, d ociDescriptor) (archiveFile, error) {
	if !strings.HasPrefix(d.Digest, "sha256:") || len(d.Digest) != len("sha256:")+64 {
		return archiveFile{}, fmt.Errorf("digest %q is not a sha256 digest", d.Digest)
	}
	f, ok := files[blob(d.Digest)]
	if !ok {
		return archiveFile{}, fmt.Errorf("no blob %s in the archive", d.Digest)
	}
	if f.size != d.Size {
		return archiveFile{}, fmt.Errorf("blob %s has %d bytes, its descriptor says %d", d.Digest, f.size, d.Size)
	}
	return f, nil
}

// scanArchive reads every regular file of the archive once, hashing it.
func scanArchive(p string) (map[string]archiveFile, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	files := map[string]archiveFile{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		fname := path.Clean(hdr.Name)
		if _, dup := files[fname]; dup {
			return nil, fmt.Errorf("%s: %s is in the archive twice", p, fname)
		}
		h := sha256.New()
		var data bytes.Buffer
		w := io.Writer(h)
		if hdr.Size <= jsonLimit {
			w = io.MultiWriter(h, &data)
		}
		n, err := io.Copy(w, tr)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", p, fname, err)
		}
		af := archiveFile{size: n, digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}
		if hdr.Size <= jsonLimit {
			af.data = data.Bytes()
		}
		files[fname] = af
	}
	return files, nil
}

// scanLayers reads each layer blob: its uncompressed content must hash to
// its diff_id, and it reports whether entrypoint is an executable regular
// file (or a hard link to one) in some layer.
func scanLayers(p string, layers []ociDescriptor, diffIDs []string, entrypoint string) (bool, error) {
	want := map[string]int{}
	for i, l := range layers {
		want[blob(l.Digest)] = i
	}
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	target := strings.TrimPrefix(path.Clean(entrypoint), "/")
	found, seen := false, map[int]bool{}
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false, fmt.Errorf("%s: %w", p, err)
		}
		i, ok := want[path.Clean(hdr.Name)]
		if !ok || hdr.Typeflag != tar.TypeReg || seen[i] {
			continue
		}
		seen[i] = true
		var r io.Reader = tr
		if layers[i].MediaType == mediaLayerGz {
			gz, err := gzip.NewReader(tr)
			if err != nil {
				return false, fmt.Errorf("%s: layer %d: %w", p, i, err)
			}
			r = gz
		}
		h := sha256.New()
		has, err := layerHas(tar.NewReader(io.TeeReader(r, h)), target)
		if err != nil {
			return false, fmt.Errorf("%s: layer %d: %w", p, i, err)
		}
		if _, err := io.Copy(h, r); err != nil { // the end-of-archive padding
			return false, fmt.Errorf("%s: layer %d: %w", p, i, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != diffIDs[i] {
			return false, fmt.Errorf("%s: layer %d: uncompressed content has digest %s, the config's diff_id is %s", p, i, got, diffIDs[i])
		}
		found = found || has
	}
	if len(seen) != len(layers) {
		return false, fmt.Errorf("%s: %d of %d layers read", p, len(seen), len(layers))
	}
	return found, nil
}

// layerHas reads a layer to its end and reports whether name is in it as
// an executable regular file, or a hard link to one.
func layerHas(tr *tar.Reader, name string) (bool, error) {
	exec := map[string]bool{}
	found := false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return found, nil
		}
		if err != nil {
			return false, err
		}
		n := strings.TrimPrefix(path.Clean(hdr.Name), "/")
		switch hdr.Typeflag {
		case tar.TypeReg:
			exec[n] = hdr.Mode&0o111 != 0
		case tar.TypeLink:
			exec[n] = exec[strings.TrimPrefix(path.Clean(hdr.Linkname), "/")]
		default:
			exec[n] = false
		}
		if n == name {
			found = exec[n]
		}
	}
}
