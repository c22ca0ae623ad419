package vm

import (
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Initramfs describes the root filesystem a VM boots into: a static
// busybox, kernel modules loaded in dependency order, extra files (for
// instance the project's static Go binaries), and a shell script that /init
// runs once the machine is set up. When the script ends, the machine
// powers off.
type Initramfs struct {
	Kernel *Kernel
	// Modules are loaded by name (as modprobe names them) with everything
	// they depend on, dependencies first.
	Modules []string
	// Files are copied in: key is the path inside the VM, value the path on
	// the host; the mode is kept.
	Files map[string]string
	// Script runs under busybox sh after /proc, /sys, /dev and /tmp are
	// mounted and the modules are loaded, with every busybox applet on
	// PATH.
	Script string
	// Gzip compresses the archive. Uncompressed boots faster under
	// software emulation (the kernel need not inflate it); gzip makes a
	// smaller file.
	Gzip bool
}

// Busybox finds a statically linked busybox on the host: the VM has no
// libraries to run anything else.
func Busybox() (string, error) {
	p, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("%w: busybox not found (apt-get install busybox-static)", ErrUnavailable)
	}
	if err := requireStatic(p); err != nil {
		return "", fmt.Errorf("%w: %v (apt-get install busybox-static)", ErrUnavailable, err)
	}
	return p, nil
}

// requireStatic refuses a dynamically linked executable, which could not
// start in the VM (it has no ld.so and no libraries).
func requireStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", p)
		}
	}
	return nil
}

// initScript is /init. It runs as PID 1; if it ended, the kernel would
// panic, so it powers the machine off instead.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=1777 tmpfs /tmp
for m in $(cat /etc/vm-modules); do
	insmod "/$m" || echo "vm: insmod $m failed"
done
echo "vm: ready after $(cut -d' ' -f1 /proc/uptime) s"
/bin/sh /etc/vm-script
echo "vm: script exited with $?; powering off"
poweroff -f
`

// Write builds the archive at dst.
func (r *Initramfs) Write(dst string) (err error) {
	bb, err := Busybox()
	if err != nil {
		return err
	}
	idx, err := loadModuleIndex(r.Kernel.Modules)
	if err != nil {
		return err
	}
	mods, err := idx.resolve(r.Modules)
	if err != nil {
		return err
	}
	type entry struct {
		src  string // host file, or
		data []byte // contents
		mode fs.FileMode
	}
	files := map[string]entry{
		"init":              {data: []byte(initScript), mode: 0o755},
		"bin/busybox":       {src: bb, mode: 0o755},
		"etc/vm-script":     {data: []byte(r.Script), mode: 0o644},
		"etc/vm-modules":    {data: []byte(strings.Join(prefixAll(mods, "lib/modules/"+r.Kernel.Release+"/"), "\n") + "\n"), mode: 0o644},
		"etc/vm-release":    {data: []byte(r.Kernel.Release + "\n"), mode: 0o644},
		"etc/passwd":        {data: []byte("root:x:0:0:root:/:/bin/sh\n"), mode: 0o644},
		"etc/group":         {data: []byte("root:x:0:\n"), mode: 0o644},
		"etc/hostname":      {data: []byte("vm\n"), mode: 0o644},
		"etc/nsswitch.conf": {data: []byte("hosts: files\n"), mode: 0o644},
	}
	for _, m := range mods {
		files["lib/modules/"+r.Kernel.Release+"/"+m] = entry{src: filepath.Join(r.Kernel.Modules, m), mode: 0o644}
	}
	for in, host := range r.Files {
		st, err := os.Stat(host)
		if err != nil {
			return err
		}
		files[strings.TrimPrefix(path.Clean("/"+in), "/")] = entry{src: host, mode: st.Mode().Perm()}
	}

	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	var w io.Writer = out
	if r.Gzip {
		gz, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
		defer func() {
			if cerr := gz.Close(); err == nil {
				err = cerr
			}
		}()
		w = gz
	}
	c := newCPIOWriter(w)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	for _, d := range append([]string{"proc", "sys", "dev", "tmp", "root"}, parentDirs(names)...) {
		c.dir(d, 0o755)
	}
	// Entries in a stable order, so the same inputs give the same archive.
	slices.Sort(names)
	for _, n := range names {
		e := files[n]
		if e.src == "" {
			c.file(n, e.mode, int64(len(e.data)), strings.NewReader(string(e.data)))
			continue
		}
		if err := copyFileInto(c, n, e.src, e.mode); err != nil {
			return err
		}
	}
	return c.close()
}

func copyFileInto(c *cpioWriter, name, src string, mode fs.FileMode) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	c.file(name, mode, st.Size(), f)
	return c.err
}

func prefixAll(ss []string, prefix string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = prefix + s
	}
	return out
}
