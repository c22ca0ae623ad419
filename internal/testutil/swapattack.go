package testutil

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// SwapAttack is a tenant attacking the driver from inside its own volume:
// it keeps exchanging (renameat2 RENAME_EXCHANGE) a directory full of files,
// "d", with a symlink, "l", that points outside the volume, at a directory
// holding a mode-0600 canary file. A copy engine that resolves paths while
// this runs can be made to read the canary (the symlink is followed where a
// directory was seen) or to create files in the target directory (a later
// entry is created under a name that the copy made a symlink).
type SwapAttack struct {
	Volume string // the attacked volume's directory
	// Outside holds everything the attack aims at; nothing under it may
	// change, and nothing of it may appear in a copy.
	Outside string
	Target  string // the symlink's target, under Outside: canary's directory
	Canary  []byte // content of Target/canary, unique to this attack
	Files   map[string][]byte

	swaps   atomic.Int64
	stop    chan struct{}
	done    chan struct{}
	stopped sync.Once
	err     error
}

// NewSwapAttack fills volume (an existing, empty directory) with the
// directory d (files f000.. and a subdirectory sub with more files) and the
// symlink l, and outside (created; it must be outside the volume and outside
// every copy) with the canary.
func NewSwapAttack(t testing.TB, volume, outside string) *SwapAttack {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	id := make([]byte, 16)
	rand.Read(id)
	a := &SwapAttack{
		Volume:  volume,
		Outside: outside,
		Target:  filepath.Join(outside, "target"),
		Canary:  []byte("CANARY-" + hex.EncodeToString(id) + "-must-never-be-copied"),
		Files:   map[string][]byte{},
	}
	must(os.MkdirAll(a.Target, 0o700))
	must(os.WriteFile(filepath.Join(a.Target, "canary"), a.Canary, 0o600))
	must(os.Mkdir(filepath.Join(volume, "d"), 0o755))
	must(os.Mkdir(filepath.Join(volume, "d", "sub"), 0o755))
	for i := 0; i < 120; i++ {
		name := fmt.Sprintf("f%03d", i)
		if i >= 100 {
			name = fmt.Sprintf("sub/s%03d", i)
		}
		// Content that names its file, so a torn or swapped file shows.
		data := bytes.Repeat([]byte(fmt.Sprintf("%s of the attacked volume;", name)), 40+i*7)
		a.Files[name] = data
		must(os.WriteFile(filepath.Join(volume, "d", name), data, 0o644))
	}
	must(os.Symlink(a.Target, filepath.Join(volume, "l")))
	return a
}

// Start runs the attacker until Stop.
func (a *SwapAttack) Start() {
	a.stop, a.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(a.done)
		// At the priority the driver copies at (nice 10), so that on a busy
		// machine the attacker races the copies instead of starving them.
		// The thread is not unlocked: it ends with the goroutine.
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 10)
		fd, err := unix.Open(a.Volume, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			a.err = fmt.Errorf("open attacked volume: %w", err)
			return
		}
		defer unix.Close(fd)
		for {
			select {
			case <-a.stop:
				return
			default:
			}
			if err := unix.Renameat2(fd, "d", fd, "l", unix.RENAME_EXCHANGE); err != nil {
				a.err = fmt.Errorf("exchange d and l: %w", err)
				return
			}
			a.swaps.Add(1)
		}
	}()
}

// Stop ends the attacker, puts d and l back in their places and returns how
// many exchanges it made. It is safe to call more than once.
func (a *SwapAttack) Stop(t testing.TB) int64 {
	t.Helper()
	a.stopped.Do(func() {
		close(a.stop)
		<-a.done
		if a.err != nil {
			t.Errorf("attacker: %v", a.err)
		}
		if fi, err := os.Lstat(filepath.Join(a.Volume, "d")); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(a.Volume, "d"), unix.AT_FDCWD, filepath.Join(a.Volume, "l"), unix.RENAME_EXCHANGE); err != nil {
				t.Errorf("put d back: %v", err)
			}
		}
	})
	return a.swaps.Load()
}

// Swaps is the number of exchanges so far.
func (a *SwapAttack) Swaps() int64 { return a.swaps.Load() }

// OutsideState lists everything under Outside (path, type, size, mode), to
// compare before and after: a create that escaped a copy's destination
// shows as a new line.
func (a *SwapAttack) OutsideState(t testing.TB) []string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(a.Outside, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		lines = append(lines, fmt.Sprintf("%s %s %d", p, fi.Mode(), fi.Size()))
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", a.Outside, err)
	}
	return lines
}

// CheckCopy verifies a copy made while the attack ran and counts the
// volume's files and symlinks it holds. It returns what is wrong with it,
// the worst first:
//   - the canary's content anywhere in any file of the copy (a read
//     outside the volume);
//   - anything the volume never held: every regular file must be one of the
//     volume's files, whole, at its place under d (or under l, the name
//     the directory had after an exchange); every symlink must be l's, with
//     its target unchanged; every directory d, l or their sub.
func (a *SwapAttack) CheckCopy(root string) (files, links int, err error) {
	var canary, wrong []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		parts := strings.Split(rel, string(filepath.Separator))
		top := parts[0] == "d" || parts[0] == "l"
		inner := filepath.Join(parts[min(1, len(parts)-1):]...)
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(data, a.Canary) {
				canary = append(canary, rel)
			}
			if want, ok := a.Files[inner]; !top || len(parts) < 2 || !ok || !bytes.Equal(data, want) {
				wrong = append(wrong, fmt.Sprintf("%s: a file of %d bytes that the volume never held there", rel, len(data)))
			}
			files++
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if !top || len(parts) != 1 || target != a.Target {
				wrong = append(wrong, fmt.Sprintf("%s: symlink to %q that the volume never held there", rel, target))
			}
			links++
		case fi.IsDir():
			if rel != "." && (!top || len(parts) > 2 || len(parts) == 2 && parts[1] != "sub") {
				wrong = append(wrong, rel+": a directory that the volume never held there")
			}
		default:
			wrong = append(wrong, fmt.Sprintf("%s: %s that the volume never held", rel, fi.Mode().Type()))
		}
		return nil
	})
	switch {
	case err != nil:
		err = fmt.Errorf("read copy %s: %w", root, err)
	case len(canary) > 0:
		err = fmt.Errorf("the canary from outside the volume was copied into %s: %v", root, canary)
	case len(wrong) > 0:
		err = errors.New(strings.Join(wrong, "\n"))
	}
	return files, links, err
}

// OutsideChanged returns what differs between two OutsideState listings.
func OutsideChanged(before, after []string) string {
	if slices.Equal(before, after) {
		return ""
	}
	return DiffManifests(before, after)
}
