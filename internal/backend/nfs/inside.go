package nfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// ErrCannotLook: a directory of the tree cannot be read by the driver
// (permission denied: on an export that squashes root, a directory its
// tenant made unreadable to others), so the tree cannot be looked through
// for another share.
var ErrCannotLook = errors.New("the driver may not read this directory")

// CheckNoShareInside walks subDir's tree and returns ErrHoldsShare, naming
// where, at the first directory named .hostpath-csi in it (the records of a
// share whose root lies inside: another StorageClass's export, whose
// volumes would go with the tree) or at a mount inside it; ErrCannotLook
// at a directory it may not read; nil if there is none, or subDir is gone.
//
// The tree is a tenant's, changed while it is walked: it is read through
// descriptors only (never a symlink, never into another mount), one
// directory open, or one read of a directory's entries, per guarded step,
// so a large tree on a healthy server takes as long as it needs while a
// server that stops answering costs one timeout. A directory whose path on
// the server would be longer than PATH_MAX is not entered: no export's
// root can lie there.
//
// The walk goes depth first and keeps, for each directory on the way
// down, its descriptor, its name and the kernel's offset of the entry to
// read next, nothing of the entries it has read: its memory is bounded by
// the tree's depth (at most PATH_MAX/2 levels), whatever the number of
// entries a tenant makes.
func (x *Export) CheckNoShareInside(ctx context.Context, subDir string) error {
	root, err := x.openStep(ctx, "look inside "+subDir+": open", nil, func() (*beneath.Dir, error) { return x.openSubDir(subDir) })
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("look inside %s on %s: %s: %w", subDir, x.Name(), subDir, ErrCannotLook)
	}
	if err != nil {
		return fmt.Errorf("look inside %s on %s: %w", subDir, x.Name(), err)
	}
	w := &insideWalk{x: x, subDir: subDir, base: len(x.Share()) + 1 + len(subDir), buf: make([]byte, insideReadSize)}
	if err := w.walk(ctx, root); err != nil {
		return fmt.Errorf("look inside %s on %s: %w", subDir, x.Name(), err)
	}
	return nil
}

// insideReadSize is the buffer of one read of a directory's entries, the
// one buffer of a walk.
const insideReadSize = 16 << 10

type insideWalk struct {
	x      *Export
	subDir string
	base   int // length of subDir's path on the server
	buf    []byte
	// levels are the directories from subDir down to the one being read.
	levels []insideLevel
}

// insideLevel is a directory on the way down: what the walk keeps of it.
type insideLevel struct {
	dir  *beneath.Dir
	name string // its name in the level above ("" for subDir)
	next int64  // the offset of its entry to read next
	plen int    // the length of its path on the server
}

func (w *insideWalk) walk(ctx context.Context, root *beneath.Dir) error {
	defer func() {
		for _, l := range w.levels {
			l.dir.Close()
		}
	}()
	w.levels = append(w.levels, insideLevel{dir: root, plen: w.base})
	for len(w.levels) > 0 {
		top := w.levels[len(w.levels)-1]
		// One read of top's entries: until a subdirectory to go into, or
		// the end of the read. The step's results are its own, taken
		// only once it answered (an abandoned step goes on alone).
		var sub string
		var end bool
		next := top.next
		err := w.x.doHolding(ctx, "look inside "+w.subDir, []*beneath.Dir{top.dir}, func() error {
			n := top.next
			var sawSub string
			e, err := top.dir.ReadFrom(top.next, w.buf, func(name string, after int64) (bool, error) {
				st, err := top.dir.Lstat(name)
				switch {
				case errors.Is(err, beneath.ErrMountInside):
					return true, fmt.Errorf("%s: %w (a filesystem is mounted there)", w.show(name), ErrHoldsShare)
				case beneath.Gone(err):
					n = after
					return false, nil
				case errors.Is(err, fs.ErrPermission):
					return true, fmt.Errorf("%s: %w", w.show(""), ErrCannotLook)
				case err != nil:
					return true, err
				}
				n = after
				if st.Mode&unix.S_IFMT != unix.S_IFDIR || top.plen+1+len(name) >= unix.PathMax {
					return false, nil
				}
				if name == ids.HiddenDir {
					return true, fmt.Errorf("%s %w", w.show(""), ErrHoldsShare)
				}
				sawSub = name
				return true, nil
			})
			if errors.Is(err, fs.ErrPermission) {
				err = fmt.Errorf("%s: %w", w.show(""), ErrCannotLook)
			}
			sub, end, next = sawSub, e, n
			return err
		})
		if err != nil {
			return err
		}
		w.levels[len(w.levels)-1].next = next
		if sub == "" {
			if end {
				top.dir.Close()
				w.levels = w.levels[:len(w.levels)-1]
			}
			continue
		}
		d, err := w.x.openStep(ctx, "look inside "+w.subDir, []*beneath.Dir{top.dir}, func() (*beneath.Dir, error) { return top.dir.OpenChild(sub) })
		switch {
		case errors.Is(err, beneath.ErrMountInside):
			return fmt.Errorf("%s: %w (a filesystem is mounted there)", w.show(sub), ErrHoldsShare)
		case beneath.Gone(err):
			continue // removed, or swapped for a symlink, meanwhile
		case errors.Is(err, fs.ErrPermission):
			return fmt.Errorf("%s: %w", w.show(sub), ErrCannotLook)
		case err != nil:
			return err
		}
		w.levels = append(w.levels, insideLevel{dir: d, name: sub, plen: top.plen + 1 + len(sub)})
	}
	return nil
}

// show is the path on the export of name in the deepest directory of the
// walk (of that directory for ""), for messages.
func (w *insideWalk) show(name string) string {
	var b strings.Builder
	b.WriteString(w.subDir)
	for _, l := range w.levels[1:] {
		b.WriteString("/")
		b.WriteString(l.name)
	}
	if name != "" {
		b.WriteString("/")
		b.WriteString(name)
	}
	return b.String()
}

// openStep runs open under the guard, holding held open meanwhile, and
// returns the directory it opens. If the caller gave up before open
// returned, what it opens late is closed, never handed over.
func (x *Export) openStep(ctx context.Context, op string, held []*beneath.Dir, open func() (*beneath.Dir, error)) (*beneath.Dir, error) {
	var mu sync.Mutex
	var got *beneath.Dir
	abandoned := false
	err := x.doHolding(ctx, op, held, func() error {
		d, err := open()
		mu.Lock()
		defer mu.Unlock()
		if abandoned {
			if d != nil {
				d.Close()
			}
			return err
		}
		got = d
		return err
	})
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		abandoned = true
		if got != nil {
			got.Close()
		}
		return nil, err
	}
	return got, nil
}
