package vm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel is an unpacked Debian kernel package: the image qemu boots and the
// modules an initramfs can carry.
type Kernel struct {
	Package string // the package file it came from, e.g. linux-image-6.1.0-56-amd64_6.1.192-2_amd64
	Release string // what uname -r says in the guest, e.g. 6.1.0-56-amd64
	Image   string // path of vmlinuz (a bzImage)
	// PVH is the same kernel uncompressed, which qemu boots without the
	// guest decompressing it; empty when it could not be extracted.
	PVH     string
	Modules string // path of lib/modules/<release>, with a modules.dep
}

// kernelMeta is the Debian 12 metapackage that depends on the current
// kernel; the kernel package itself is named after the ABI
// (linux-image-6.1.0-<abi>-amd64).
const kernelMeta = "linux-image-amd64"

var kernelPackage = regexp.MustCompile(`^linux-image-6\.1\.0-[0-9]+-amd64$`)

// ErrUnavailable marks what this machine lacks to boot a VM (no qemu, no
// apt-get, no package lists, no busybox-static): tests skip on it.
var ErrUnavailable = errors.New("cannot boot a VM here")

// CacheDir is where kernels are kept between runs, outside any checkout:
// $HOSTPATH_VM_CACHE, else /var/cache/hostpath-csi/vm when it can be made
// (root), else the user's cache directory.
func CacheDir() string {
	if d := os.Getenv("HOSTPATH_VM_CACHE"); d != "" {
		return d
	}
	const system = "/var/cache/hostpath-csi/vm"
	if err := os.MkdirAll(system, 0o755); err == nil && unix.Access(system, unix.W_OK) == nil {
		return system
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "hostpath-csi", "vm")
	}
	return filepath.Join(os.TempDir(), "hostpath-csi-vm-cache")
}

// completeStamp is written last into an unpacked kernel's directory: a
// directory without it is an interrupted unpack and is ignored.
const completeStamp = "hostpath-csi-complete"

// FetchKernel returns Debian 12's kernel from cacheDir, or fetches it with
// apt-get download and unpacks it there with dpkg-deb -x (and depmod, as the
// package ships no modules.dep). A kernel already in the cache is used as it
// is, without asking apt anything, so a warm run never downloads. Several
// processes may call it at once: a lock file serialises them.
func FetchKernel(cacheDir string) (*Kernel, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("kernel cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kernel cache lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("kernel cache lock: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN) //nolint:errcheck // closing releases it anyway

	k, err := cachedKernel(cacheDir)
	if k == nil && err == nil {
		k, err = fetchKernel(cacheDir)
	}
	if err != nil {
		return nil, err
	}
	ensurePVH(k)
	return k, nil
}

// fetchKernel downloads and unpacks the kernel package into the cache.
func fetchKernel(cacheDir string) (*Kernel, error) {
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb", "depmod"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s not found, so Debian's kernel package cannot be fetched", ErrUnavailable, tool)
		}
	}
	pkg, err := resolveKernelPackage()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".fetch-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	// apt drops privileges to _apt for the download when it can reach the
	// directory; MkdirTemp made it 0700.
	_ = os.Chmod(tmp, 0o755)
	if out, err := runIn(tmp, "apt-get", "download", "-q", pkg); err != nil {
		return nil, fmt.Errorf("%w: apt-get download %s: %v\n%s", ErrUnavailable, pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("apt-get download %s left %d package files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := runIn(tmp, "dpkg-deb", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %v\n%s", debs[0], err, out)
	}
	k, err := kernelIn(root)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(k.Modules, "modules.dep")); errors.Is(err, os.ErrNotExist) {
		if out, err := runIn(tmp, "depmod", "-b", root, k.Release); err != nil {
			return nil, fmt.Errorf("depmod for %s: %v\n%s", k.Release, err, out)
		}
	}
	name := strings.TrimSuffix(filepath.Base(debs[0]), ".deb")
	if err := os.WriteFile(filepath.Join(root, completeStamp), []byte(name+"\n"), 0o644); err != nil {
		return nil, err
	}
	final := filepath.Join(cacheDir, name)
	if err := os.RemoveAll(final); err != nil { // an interrupted earlier unpack
		return nil, err
	}
	if err := os.Rename(root, final); err != nil {
		return nil, fmt.Errorf("move kernel into the cache: %w", err)
	}
	return kernelIn(final)
}

// cachedKernel returns the newest complete kernel in the cache, or nil.
func cachedKernel(cacheDir string) (*Kernel, error) {
	stamps, err := filepath.Glob(filepath.Join(cacheDir, "*", completeStamp))
	if err != nil || len(stamps) == 0 {
		return nil, err
	}
	sort.Slice(stamps, func(i, j int) bool {
		a, _ := os.Stat(stamps[i])
		b, _ := os.Stat(stamps[j])
		return a.ModTime().After(b.ModTime())
	})
	return kernelIn(filepath.Dir(stamps[0]))
}

// kernelIn finds the kernel image and modules of an unpacked package.
func kernelIn(root string) (*Kernel, error) {
	images, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return nil, fmt.Errorf("%s: want one boot/vmlinuz-*, found %d", root, len(images))
	}
	release := strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-")
	k := &Kernel{Package: filepath.Base(root), Release: release, Image: images[0],
		Modules: filepath.Join(root, "lib", "modules", release)}
	if _, err := os.Stat(k.Modules); err != nil {
		return nil, fmt.Errorf("kernel %s has no modules: %w", release, err)
	}
	return k, nil
}

// resolveKernelPackage asks apt which kernel package the metapackage
// currently points at.
func resolveKernelPackage() (string, error) {
	out, err := exec.Command("apt-cache", "depends", kernelMeta).Output()
	if err != nil {
		return "", fmt.Errorf("%w: apt-cache depends %s: %v (run apt-get update first)", ErrUnavailable, kernelMeta, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && kernelPackage.MatchString(f[1]) {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%w: apt-cache depends %s names no linux-image-6.1.0-*-amd64 (not Debian 12, or no package lists: run apt-get update)", ErrUnavailable, kernelMeta)
}

func runIn(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	return cmd.CombinedOutput()
}
