package nfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// A mount(8) that hangs (mount.nfs waiting for a dead server) is killed
// with its whole process group when the timeout ends, its children too.
func TestExecMounterKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child.pid")
	script := "#!/bin/sh\nsleep 600 &\necho $! > " + pidFile + "\nwait\n"
	if err := os.WriteFile(filepath.Join(dir, "mount"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := ExecMounter{}.Mount(ctx, "dead.example:/export", filepath.Join(dir, "target"), "nfs", []string{"hard"})
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Mount of a hanging mount(8): %v; want it killed", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// The child was killed with its group: it is gone (or a zombie of
	// init's, never a running sleep).
	for i := 0; ; i++ {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z ") {
			break
		}
		if i == 200 {
			unix.Kill(pid, unix.SIGKILL)
			t.Fatalf("the mount's child %d still runs after the mount was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An operation that outlives the timeout marks its export busy until it
// returns: later calls on that export fail at once, other exports work.
func TestGuardStuckExport(t *testing.T) {
	g := newGuard(50 * time.Millisecond)
	release := make(chan struct{})
	err := g.do(context.Background(), "a:/x", "statfs", func() error { <-release; return nil })
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "a:/x") {
		t.Fatalf("stuck operation: %v", err)
	}
	called := false
	err = g.do(context.Background(), "a:/x", "statfs", func() error { called = true; return nil })
	if !errors.Is(err, ErrBusy) || called {
		t.Fatalf("call on a stuck export: %v (called %v); want ErrBusy without running it", err, called)
	}
	if err := g.do(context.Background(), "b:/x", "statfs", func() error { return nil }); err != nil {
		t.Fatalf("call on another export: %v", err)
	}
	close(release)
	for g.busy("a:/x") != nil {
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.do(context.Background(), "a:/x", "statfs", func() error { return nil }); err != nil {
		t.Fatalf("call once the stuck one returned: %v", err)
	}
}

// The mount of a dead server (its export stuck) is removed with a forced,
// lazy unmount, even with a file held open inside it.
func TestUnmountDeadMount(t *testing.T) {
	target, _ := bindWithOpenFile(t)
	g := newGuard(50 * time.Millisecond)
	release := make(chan struct{})
	defer close(release)
	g.do(context.Background(), "dead:/x", "read", func() error { <-release; return nil })
	if err := unmount(context.Background(), g, "dead:/x", target); err != nil {
		t.Fatalf("unmount of a dead mount: %v", err)
	}
	if m, _ := isMounted(target); m {
		t.Fatal("still mounted")
	}
}

// Creating a volume's directory never follows a symlink a tenant put on
// its path; a template's parents are made as needed. A directory already
// there is taken only if empty (the driver's own, after a kill) or handed
// over as retained data; never one that holds another share's records.
func TestMakeDirRefusesSymlinks(t *testing.T) {
	x, export, standin := useStandInExport(t)
	bg := context.Background()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(export, "ns")); err != nil {
		t.Fatal(err)
	}
	if err := x.MakeNewDir(bg, "ns/claim", nil); err == nil {
		t.Fatal("MakeNewDir went through a symlink")
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("created outside the export: %v", ents)
	}
	mode := os.FileMode(0o770)
	if err := x.MakeNewDir(bg, "a/b/c", &mode); err != nil {
		t.Fatalf("MakeNewDir(a/b/c) = %v", err)
	}
	if fi, err := os.Stat(filepath.Join(export, "a", "b", "c")); err != nil || fi.Mode().Perm() != 0o770 {
		t.Fatalf("a/b/c: %v, %v", fi, err)
	}
	// Empty: what a kill after the mkdir leaves; taken, the mode applied.
	if err := os.Chmod(filepath.Join(export, "a", "b", "c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := x.MakeNewDir(bg, "a/b/c", &mode); err != nil {
		t.Fatalf("MakeNewDir of its own empty directory = %v", err)
	}
	if fi, err := os.Stat(filepath.Join(export, "a", "b", "c")); err != nil || fi.Mode().Perm() != 0o770 {
		t.Fatalf("a/b/c retried: %v, %v; want 0770", fi, err)
	}
	if err := os.WriteFile(filepath.Join(export, "a", "b", "c", "f"), []byte("someone's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := x.MakeNewDir(bg, "a/b/c", &mode); !errors.Is(err, ErrNotOurs) {
		t.Fatalf("MakeNewDir of a directory holding data = %v; want ErrNotOurs", err)
	}
	// Retained data handed over keeps the mode it has.
	other := os.FileMode(0o700)
	if adopted, err := x.TakeOverDir(bg, "a/b/c", &other); err != nil || !adopted {
		t.Fatalf("TakeOverDir of an existing directory = %v, %v; want adopted", adopted, err)
	}
	if fi, err := os.Stat(filepath.Join(export, "a", "b", "c")); err != nil || fi.Mode().Perm() != 0o770 {
		t.Fatalf("a/b/c after it was taken over with mode 0700: %v, %v; want 0770 kept", fi, err)
	}
	// Another share's root deep inside: not taken over, not made through.
	if err := os.MkdirAll(filepath.Join(export, "a", "b", "c", "x", ids.HiddenDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := x.CheckNoShareInside(bg, "a/b/c"); !errors.Is(err, ErrHoldsShare) || !strings.Contains(err.Error(), "a/b/c/x") {
		t.Fatalf("CheckNoShareInside of a tree holding a/b/c/x/%s = %v; want ErrHoldsShare naming a/b/c/x", ids.HiddenDir, err)
	}
	if _, err := x.TakeOverDir(bg, "a/b/c/x", &other); !errors.Is(err, ErrHoldsShare) {
		t.Fatalf("TakeOverDir of another share's root = %v; want ErrHoldsShare", err)
	}
	if err := x.CheckNoShareInside(bg, "a"); !errors.Is(err, ErrHoldsShare) {
		t.Fatalf("CheckNoShareInside(a) = %v; want ErrHoldsShare", err)
	}
	if err := x.MakeNewDir(bg, "a/b/c/x/y", nil); !errors.Is(err, ErrHoldsShare) {
		t.Fatalf("MakeNewDir below another share's root = %v; want ErrHoldsShare", err)
	}
	if _, err := os.Stat(filepath.Join(export, "a", "b", "c", "x", "y")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("made below another share's root: %v", err)
	}
	if calls := standin.Calls(); len(calls) == 0 || calls[0].Source != "s:/e" || calls[0].FSType != "nfs" {
		t.Fatalf("export root mounted as %+v", calls)
	}
}

// A file operation whose caller gave up before the timeout keeps its
// export busy until it returns: a retry fails at once instead of starting
// another operation behind it.
func TestGuardCallerGaveUp(t *testing.T) {
	g := newGuard(time.Hour)
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := g.do(ctx, "a:/x", "statfs", func() error { <-release; return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("operation whose caller gave up: %v", err)
	}
	called := false
	err = g.do(context.Background(), "a:/x", "statfs", func() error { called = true; return nil })
	if !errors.Is(err, ErrBusy) || called || !strings.Contains(err.Error(), "a:/x") {
		t.Fatalf("call while the abandoned one runs: %v (called %v); want ErrBusy naming a:/x without running it", err, called)
	}
	close(release)
	for g.busy("a:/x") != nil {
		time.Sleep(5 * time.Millisecond)
	}
}

// A new record never replaces one of the same key (two volumes that drew
// one key, perhaps in two controllers at once): the second is ErrExists
// and the first is intact.
func TestCreateVolumeRecordDoesNotReplace(t *testing.T) {
	x, export, _ := useStandInExport(t)
	const key = "0123456789abcdef"
	if err := x.CreateVolume(context.Background(), &VolumeRecord{ID: "first", Name: "a"}, key); err != nil {
		t.Fatal(err)
	}
	err := x.CreateVolume(context.Background(), &VolumeRecord{ID: "second", Name: "b"}, key)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second record of one key: %v, want ErrExists", err)
	}
	r, err := x.GetVolume(context.Background(), key)
	if err != nil || r.ID != "first" {
		t.Fatalf("record after the refused create: %+v, %v; want the first", r, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(export, ".hostpath-csi", "tmp")); len(ents) != 0 {
		t.Fatalf("left in tmp/: %v", ents)
	}
}
