package testutil

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// NFSStandIn stands in for NFS servers on a machine without an NFS client:
// it is a mounter (the driver's nfs.Mounter seam) that serves a source
// "server:/share/sub" by bind-mounting a local directory registered as that
// export, and records every call (source, fstype, options) so a test can
// assert exactly what the kernel's NFS client would have been asked.
type NFSStandIn struct {
	mu      sync.Mutex
	exports map[string]string // "server:/share" -> local directory
	calls   []MountCall
	hang    map[string]bool // servers whose mounts never return
}

// MountCall is one call of Mount.
type MountCall struct {
	Source, Target, FSType string
	Options                []string
}

// NewNFSStandIn returns a stand-in serving no export yet.
func NewNFSStandIn() *NFSStandIn {
	return &NFSStandIn{exports: map[string]string{}, hang: map[string]bool{}}
}

// AddExport makes server:share served from the directory dir (created),
// which it returns.
func (s *NFSStandIn) AddExport(t testing.TB, server, share, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.exports[server+":"+share] = dir
	return dir
}

// Hang makes every later mount from server block until its context ends,
// as mount.nfs does against a dead server.
func (s *NFSStandIn) Hang(server string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hang[server] = true
}

// Calls returns the mounts asked so far.
func (s *NFSStandIn) Calls() []MountCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]MountCall(nil), s.calls...)
}

// Mount serves source by a bind mount of the registered export's directory.
func (s *NFSStandIn) Mount(ctx context.Context, source, target, fstype string, options []string) error {
	s.mu.Lock()
	s.calls = append(s.calls, MountCall{Source: source, Target: target, FSType: fstype, Options: append([]string(nil), options...)})
	server, path, ok := splitSource(source)
	hang := s.hang[server]
	var local string
	for exp, dir := range s.exports {
		share := strings.TrimPrefix(exp, server+":")
		if share == exp {
			continue
		}
		if path == share || strings.HasPrefix(path, strings.TrimSuffix(share, "/")+"/") {
			local = filepath.Join(dir, strings.TrimPrefix(path, share))
		}
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("mount.nfs: bad source %q", source)
	}
	if hang {
		<-ctx.Done()
		return fmt.Errorf("mount.nfs: %s: %w", source, ctx.Err())
	}
	if local == "" {
		return fmt.Errorf("mount.nfs: access denied by server while mounting %s", source)
	}
	if err := unix.Mount(local, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("mount.nfs: %s: %w", source, err)
	}
	// The generic options take effect on the mount, as they would on the
	// kernel's NFS mount: the last of each pair wins, as in mount(8).
	var flags uintptr
	for _, opt := range options {
		for _, o := range strings.Split(opt, ",") {
			if bit, ok := standInFlags[strings.TrimPrefix(o, "no")]; ok {
				if strings.HasPrefix(o, "no") {
					flags |= bit
				} else {
					flags &^= bit
				}
			}
			switch o {
			case "ro":
				flags |= unix.MS_RDONLY
			case "rw":
				flags &^= unix.MS_RDONLY
			}
		}
	}
	if flags != 0 {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|flags, ""); err != nil {
			unix.Unmount(target, 0)
			return err
		}
	}
	return nil
}

// standInFlags are the generic options the stand-in applies, by the name
// after their "no".
var standInFlags = map[string]uintptr{"suid": unix.MS_NOSUID, "dev": unix.MS_NODEV, "exec": unix.MS_NOEXEC}

func splitSource(source string) (server, path string, ok bool) {
	if strings.HasPrefix(source, "[") {
		i := strings.Index(source, "]:")
		if i < 0 {
			return "", "", false
		}
		return source[:i+1], source[i+2:], true
	}
	server, path, ok = strings.Cut(source, ":")
	return server, path, ok && strings.HasPrefix(path, "/")
}
