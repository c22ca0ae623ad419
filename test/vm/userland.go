package vm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Userland is a set of Debian packages unpacked into one directory, together
// with every library package they depend on, so that their dynamically
// linked programs can run in a VM whose initramfs carries them and the
// shared libraries they load (see Closure). It is how a guest gets programs
// that busybox does not have (an NFS server's daemons, util-linux mount).
type Userland struct {
	Root     string   // the unpacked packages, one tree
	Packages []string // every package unpacked there, sorted
}

// userlandDir is the cache's subdirectory for userlands, one per set of
// requested packages.
const userlandDir = "userland"

// FetchUserland returns the packages from cacheDir, or downloads them with
// apt-get download, follows their Depends and Pre-Depends on library
// packages (names starting with "lib"; the first of alternatives) to the
// end, and unpacks all of them with dpkg-deb -x into one tree. Programs
// and scripts the packages' maintainer scripts would set up are not run:
// the caller starts what it needs itself. A userland already in the cache
// is used without asking apt anything.
func FetchUserland(cacheDir string, packages []string) (*Userland, error) {
	want := slices.Sorted(slices.Values(packages))
	want = slices.Compact(want)
	sum := sha256.Sum256([]byte(strings.Join(want, "\n")))
	dir := filepath.Join(cacheDir, userlandDir, hex.EncodeToString(sum[:8]))
	unlock, err := lockCache(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if b, err := os.ReadFile(filepath.Join(dir, completeStamp)); err == nil {
		return &Userland{Root: filepath.Join(dir, "root"), Packages: strings.Fields(string(b))}, nil
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s not found, so Debian packages cannot be fetched", ErrUnavailable, tool)
		}
	}
	if err := os.RemoveAll(dir); err != nil { // an interrupted earlier fetch
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	debs := filepath.Join(dir, "debs")
	if err := os.Mkdir(debs, 0o755); err != nil { // apt drops to _apt: 0755
		return nil, err
	}
	root := filepath.Join(dir, "root")
	got, err := downloadClosure(debs, want)
	if err != nil {
		return nil, err
	}
	files, _ := filepath.Glob(filepath.Join(debs, "*.deb"))
	for _, deb := range files {
		if out, err := exec.Command("dpkg-deb", "-x", deb, root).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, out)
		}
	}
	if err := os.RemoveAll(debs); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, completeStamp), []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	return &Userland{Root: root, Packages: got}, nil
}

// downloadClosure downloads the packages into dir, then the library
// packages they depend on, round after round until none is missing. It
// returns every package name downloaded, sorted.
func downloadClosure(dir string, packages []string) ([]string, error) {
	have := map[string]bool{}
	next := packages
	for len(next) > 0 {
		args := append([]string{"download", "-q"}, next...)
		cmd := exec.Command("apt-get", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%w: apt-get download %s: %v (run apt-get update first)\n%s",
				ErrUnavailable, strings.Join(next, " "), err, out)
		}
		for _, p := range next {
			have[p] = true
		}
		var more []string
		for _, p := range next {
			debs, _ := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
			if len(debs) != 1 {
				return nil, fmt.Errorf("apt-get download %s left %d package files", p, len(debs))
			}
			deps, err := libraryDepends(debs[0])
			if err != nil {
				return nil, err
			}
			for _, d := range deps {
				if !have[d] && !slices.Contains(more, d) {
					more = append(more, d)
				}
			}
		}
		next = more
	}
	names := make([]string, 0, len(have))
	for p := range have {
		names = append(names, p)
	}
	slices.Sort(names)
	return names, nil
}

// libraryDepends lists the library packages a package file depends on.
func libraryDepends(deb string) ([]string, error) {
	out, err := exec.Command("dpkg-deb", "-f", deb, "Depends", "Pre-Depends").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-deb -f %s: %w", deb, err)
	}
	var deps []string
	s := bufio.NewScanner(bytes.NewReader(out))
	for s.Scan() {
		_, value, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		deps = append(deps, parseLibraryDepends(value)...)
	}
	return deps, s.Err()
}

// parseLibraryDepends reads a Depends value ("libc6 (>= 2.34), libfoo1 |
// libbar1, adduser") and returns the library packages in it: the first of
// each set of alternatives, without version or architecture.
func parseLibraryDepends(value string) []string {
	var out []string
	for _, clause := range strings.Split(value, ",") {
		first, _, _ := strings.Cut(clause, "|")
		name, _, _ := strings.Cut(strings.TrimSpace(first), " ")
		name, _, _ = strings.Cut(name, "(")
		name, _, _ = strings.Cut(name, ":")
		if strings.HasPrefix(name, "lib") {
			out = append(out, name)
		}
	}
	return out
}

// libDirs are where the dynamic loader of Debian's amd64 packages looks.
var libDirs = []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"}

// guestLibDir is where Closure puts every library in the guest; the
// loader searches it by default.
const guestLibDir = "/lib/x86_64-linux-gnu"

// Closure returns what Initramfs.Files needs to run the given programs of
// the userland (paths inside it, such as /usr/sbin/rpc.nfsd) in the guest:
// each program at the same path, its dynamic loader, and every shared
// library it loads, directly or through another library, in
// /lib/x86_64-linux-gnu. Keys are guest paths, values host paths. A
// library the userland lacks is an error naming it and who needs it.
func (u *Userland) Closure(programs ...string) (map[string]string, error) {
	files := map[string]string{}
	var need func(host, who string) error
	need = func(host, who string) error {
		f, err := elf.Open(host)
		if err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("%s: interpreter: %w", who, err)
			}
			interp := strings.TrimRight(string(b), "\x00")
			if _, ok := files[interp]; !ok {
				h, err := u.resolve(interp)
				if err != nil {
					return fmt.Errorf("%s needs its loader %s: %w", who, interp, err)
				}
				files[interp] = h
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		for _, lib := range libs {
			guest := path.Join(guestLibDir, lib)
			if _, ok := files[guest]; ok {
				continue
			}
			h, err := u.findLibrary(lib)
			if err != nil {
				return fmt.Errorf("%s needs %s: %w (its package is missing from %s)", who, lib, err, strings.Join(u.Packages, " "))
			}
			files[guest] = h
			if err := need(h, lib); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range programs {
		h, err := u.resolve(p)
		if err != nil {
			return nil, fmt.Errorf("program %s: %w", p, err)
		}
		files[p] = h
		if err := need(h, p); err != nil {
			return nil, err
		}
	}
	return files, nil
}

func (u *Userland) findLibrary(soname string) (string, error) {
	for _, d := range libDirs {
		if h, err := u.resolve(path.Join("/", d, soname)); err == nil {
			return h, nil
		}
	}
	return "", fmt.Errorf("not found in %s", strings.Join(libDirs, ", "))
}

// resolve maps a path inside the userland to the host file it names,
// following symbolic links inside the userland's root (an absolute link
// target is read against the root, never against the host's /).
func (u *Userland) resolve(p string) (string, error) {
	p = path.Clean("/" + p)
	for range 40 {
		host := filepath.Join(u.Root, p)
		st, err := os.Lstat(host)
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink == 0 {
			if !st.Mode().IsRegular() {
				return "", fmt.Errorf("%s is not a regular file", p)
			}
			return host, nil
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(p), target)
		}
		p = path.Clean("/" + target)
	}
	return "", fmt.Errorf("%s: %w", p, unix.ELOOP)
}

// lockCache takes the cache's lock file, which serialises processes
// filling the cache.
func lockCache(cacheDir string) (unlock func(), err error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		lock.Close()
		return nil, fmt.Errorf("cache lock: %w", err)
	}
	return func() { lock.Close() }, nil
}
