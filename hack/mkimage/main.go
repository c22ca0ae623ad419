// Command mkimage writes a single-layer image archive without a container
// engine, from a root filesystem directory and/or single files. The archive
// is an OCI image layout (oci-layout, index.json, blobs) whose index names
// the image in the io.containerd.image.name annotation (the full name, which
// `ctr images import` and podman load use) and org.opencontainers.image.ref.name
// (the tag), and also a Docker archive: a manifest.json naming the same
// config and layer blobs under RepoTags, which `docker load` needs (as
// `docker save` writes since Docker 25). So kind load image-archive, k3s ctr
// images import and minikube image load (docker load, ctr images import or
// podman load, by the cluster's runtime) all take it.
//
// make image uses it where there is no docker or podman; the end-to-end
// test, which has no container engine and no registry, makes every image
// it runs this way.
//
//	mkimage -name docker.io/library/busybox:1.35 -o busybox.tar \
//	    -rootfs DIR -file /usr/bin/x:/x:0755 -symlink /bin/busybox:/bin/sh \
//	    -entrypoint /x -env PATH=/usr/bin:/bin
//
// With -check it reads an archive instead and verifies it (check.go): every
// blob's digest and size, the index, manifest and config, manifest.json, and
// that the entrypoint is an executable file in the layer; -name and
// -entrypoint, if given, must match.
//
//	mkimage -check busybox.tar -name docker.io/library/busybox:1.35 -entrypoint /x
package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var files, links, entrypoint, cmd, env list
	name := flag.String("name", "", "image name with registry and tag (docker.io/library/busybox:1.35)")
	out := flag.String("o", "", "output archive")
	rootfs := flag.String("rootfs", "", "directory whose contents become the image's root (optional)")
	flag.Var(&files, "file", "SRC:DST[:MODE] a host file copied into the image (repeatable)")
	flag.Var(&links, "symlink", "TARGET:LINK a symbolic link in the image (repeatable)")
	flag.Var(&entrypoint, "entrypoint", "an entrypoint word (repeatable, in order)")
	flag.Var(&cmd, "cmd", "a command word (repeatable, in order)")
	flag.Var(&env, "env", "KEY=VALUE (repeatable)")
	checkPath := flag.String("check", "", "verify this archive instead of writing one")
	flag.Parse()
	if *checkPath != "" {
		sum, err := check(*checkPath, *name, entrypoint)
		if err != nil {
			fmt.Fprintln(os.Stderr, "mkimage:", err)
			os.Exit(1)
		}
		fmt.Print(sum)
		return
	}
	if *name == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "mkimage: -name and -o are required")
		os.Exit(2)
	}
	if err := run(*name, *out, *rootfs, files, links, entrypoint, cmd, env); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

// epoch is every entry's time, so the same inputs make the same image.
var epoch = time.Unix(0, 0)

func run(name, out, rootfs string, files, links, entrypoint, cmd, env []string) error {
	if i := strings.LastIndex(name, ":"); i < 0 || strings.Contains(name[i:], "/") {
		return fmt.Errorf("image name %q has no tag", name)
	}
	layer, err := os.CreateTemp(filepath.Dir(out), ".layer-*")
	if err != nil {
		return err
	}
	defer os.Remove(layer.Name())
	defer layer.Close()
	h := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(layer, h))
	dirs := map[string]bool{}
	if rootfs != "" {
		if err := addTree(tw, rootfs, dirs); err != nil {
			return err
		}
	}
	for _, f := range files {
		p := strings.Split(f, ":")
		if len(p) < 2 || len(p) > 3 {
			return fmt.Errorf("bad -file %q", f)
		}
		mode := int64(0o755)
		if len(p) == 3 {
			m, err := strconv.ParseInt(p[2], 8, 32)
			if err != nil {
				return fmt.Errorf("bad mode in -file %q: %w", f, err)
			}
			mode = m
		}
		if err := addParents(tw, p[1], dirs); err != nil {
			return err
		}
		if err := addFile(tw, p[0], p[1], mode); err != nil {
			return err
		}
	}
	for _, l := range links {
		p := strings.SplitN(l, ":", 2)
		if len(p) != 2 {
			return fmt.Errorf("bad -symlink %q", l)
		}
		if err := addParents(tw, p[1], dirs); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(p[1], "/"),
			Linkname: p[0], Mode: 0o777, ModTime: epoch}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerDigest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	layerSize, err := layer.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}

	imgConfig := map[string]any{
		"architecture": runtime.GOARCH, // the host's: so are the binaries and the root filesystem
		"os":           "linux",
		"created":      epoch.UTC().Format(time.RFC3339),
		"config":       map[string]any{"Entrypoint": nilIfEmpty(entrypoint), "Cmd": nilIfEmpty(cmd), "Env": nilIfEmpty(env)},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	}
	configJSON, _ := json.Marshal(imgConfig)
	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", digestOf(configJSON), int64(len(configJSON))),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar", layerDigest, layerSize)},
	}
	manifestJSON, _ := json.Marshal(manifest)
	tag := name[strings.LastIndex(name, ":")+1:]
	md := descriptor("application/vnd.oci.image.manifest.v1+json", digestOf(manifestJSON), int64(len(manifestJSON)))
	md["annotations"] = map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []any{md}})
	// The Docker archive's view of the same blobs, for docker load.
	dockerManifest, _ := json.Marshal([]dockerManifestEntry{{
		Config: blob(digestOf(configJSON)), RepoTags: []string{name}, Layers: []string{blob(layerDigest)},
	}})

	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	ow := tar.NewWriter(f)
	put := func(path string, data []byte) error {
		if err := ow.WriteHeader(&tar.Header{Name: path, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := ow.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := ow.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", index); err != nil {
		return err
	}
	if err := put("manifest.json", dockerManifest); err != nil {
		return err
	}
	if err := put(blob(digestOf(configJSON)), configJSON); err != nil {
		return err
	}
	if err := put(blob(digestOf(manifestJSON)), manifestJSON); err != nil {
		return err
	}
	if _, err := layer.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := ow.WriteHeader(&tar.Header{Name: blob(layerDigest), Mode: 0o644, Size: layerSize, ModTime: epoch}); err != nil {
		return err
	}
	if _, err := io.Copy(ow, layer); err != nil {
		return err
	}
	if err := ow.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// dockerManifestEntry is an image of a Docker archive's manifest.json.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func descriptor(mediaType, digest string, size int64) map[string]any {
	return map[string]any{"mediaType": mediaType, "digest": digest, "size": size}
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func blob(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

// addParents writes the directories above path that are not written yet.
// dirs holds what the layer has: directories as "a/b/", and the root
// filesystem's symlinks as "a/b". A parent that is a symlink there is
// refused: a directory entry of the same name would replace the link on
// unpack (bin -> usr/bin), and with it everything the link reached.
func addParents(tw *tar.Writer, path string, dirs map[string]bool) error {
	rel := strings.Trim(filepath.Dir(strings.TrimPrefix(path, "/")), "/")
	if rel == "." || rel == "" {
		return nil
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		d := strings.Join(parts[:i+1], "/") + "/"
		if dirs[strings.TrimSuffix(d, "/")] {
			return fmt.Errorf("%s: /%s is a symlink in the root filesystem; name the path it points to", path, strings.TrimSuffix(d, "/"))
		}
		if dirs[d] {
			continue
		}
		dirs[d] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	return nil
}

func addFile(tw *tar.Writer, src, dst string, mode int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(dst, "/"), Mode: mode, Size: st.Size(), ModTime: epoch}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// addTree writes a root filesystem: directories, regular files (hard links
// as links to the first name), symlinks; owners and modes kept. Device nodes,
// sockets and FIFOs are left out: the runtime provides /dev.
func addTree(tw *tar.Writer, root string, dirs map[string]bool) error {
	// A root given as a symlink would be walked as the link alone.
	root, err := filepath.EvalSymlinks(root)
	if err != nil {
		return err
	}
	rst, err := os.Stat(root)
	if err != nil {
		return err
	}
	if !rst.IsDir() {
		return fmt.Errorf("root filesystem %s is not a directory", root)
	}
	rootDev := rst.Sys().(*syscall.Stat_t).Dev
	var paths []string
	if err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(paths)
	// Hard links by device and inode; the tree is one filesystem.
	seen := map[[2]uint64]string{}
	for _, p := range paths {
		rel, _ := filepath.Rel(root, p)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		if uint64(sys.Dev) != uint64(rootDev) {
			return fmt.Errorf("%s is on another filesystem than the root filesystem %s (a mount inside it?)", p, root)
		}
		if strings.HasPrefix(filepath.Base(p), ".wh.") {
			// A runtime unpacking the layer would take it for a whiteout.
			return fmt.Errorf("%s: a name starting with .wh. is a whiteout to a container runtime", p)
		}
		hdr := &tar.Header{Name: rel, Mode: int64(st.Mode().Perm()), Uid: int(sys.Uid), Gid: int(sys.Gid), ModTime: epoch}
		if st.Mode()&os.ModeSetuid != 0 {
			hdr.Mode |= 0o4000
		}
		if st.Mode()&os.ModeSetgid != 0 {
			hdr.Mode |= 0o2000
		}
		if st.Mode()&os.ModeSticky != 0 {
			hdr.Mode |= 0o1000
		}
		switch {
		case st.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
			dirs[hdr.Name] = true
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case st.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			dirs[rel] = true
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
		case st.Mode().IsRegular():
			if first, ok := seen[[2]uint64{uint64(sys.Dev), sys.Ino}]; ok && sys.Nlink > 1 {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				if err := tw.WriteHeader(hdr); err != nil {
					return err
				}
				continue
			}
			seen[[2]uint64{uint64(sys.Dev), sys.Ino}] = rel
			hdr.Typeflag, hdr.Size = tar.TypeReg, st.Size()
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
		}
	}
	return nil
}
