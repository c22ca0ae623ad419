package driver

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "sub", "csi.sock")

	l, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v %v, want a socket with mode 0600", fi.Mode(), err)
	}
	// A live socket is never replaced: that would hijack another driver.
	if _, err := Listen("unix://" + sock); err == nil || !strings.Contains(err.Error(), "another driver") {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket not removed on close: %v", err)
	}

	// A stale socket (its process died) is replaced.
	stale, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, err = Listen(sock) // a plain path works too
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l.Close()

	// Something that is not a socket is never removed.
	if err := os.WriteFile(sock, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	for _, bad := range []string{"", "tcp://127.0.0.1:5000", "unix://"} {
		if _, err := Listen(bad); err == nil {
			t.Errorf("Listen(%q) accepted", bad)
		}
	}
}

// The state and data directories have the narrowest modes that work: only
// the driver (root) reads the database or walks into the volumes; pods see
// a volume through its bind mount, not through these directories.
func TestFileModes(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		path string
		mode os.FileMode
	}{
		{e.stateDir, 0o700},
		{filepath.Join(e.stateDir, "state.db"), 0o600},
		{e.dataDir, 0o700},
		{filepath.Join(e.dataDir, "volumes"), 0o700},
		{filepath.Join(e.dataDir, "trash"), 0o700},
		{filepath.Join(e.dataDir, "quarantine"), 0o700},
	}
	for _, tc := range tests {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode().Perm(), tc.mode)
		}
	}
}
