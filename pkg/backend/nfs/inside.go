package nfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/pkg/beneath"
	"github.com/hostpath-csi/hostpath-csi/pkg/ids"
)

// CheckNoShareInside walks subDir's tree and returns ErrHoldsShare, naming
// where, at the first directory named .hostpath-csi in it (the records of a
// share whose root lies inside: another StorageClass's export, whose
// volumes would go with the tree) or at a mount inside it; nil if there is
// none, or subDir is gone.
//
// The tree is a tenant's, changed while it is walked: it is read through
// descriptors only (never a symlink, never into another mount), one
// directory open, or one batch of a directory's entries read, per guarded
// step, so a large tree on a healthy server takes as long as it needs
// while a server that stops answering costs one timeout. A directory whose
// path on the server would be longer than PATH_MAX is not entered: no
// export's root can lie there.
func (x *Export) CheckNoShareInside(ctx context.Context, subDir string) error {
	root, err := x.openStep(ctx, "look inside "+subDir+": open", nil, func() (*beneath.Dir, error) { return x.openSubDir(subDir) })
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look inside %s on %s: %w", subDir, x.Name(), err)
	}
	w := &insideWalk{x: x, subDir: subDir, base: len(x.Share()) + 1 + len(subDir)}
	if err := w.walk(ctx, root); err != nil {
		return fmt.Errorf("look inside %s on %s: %w", subDir, x.Name(), err)
	}
	return nil
}

type insideWalk struct {
	x      *Export
	subDir string
	base   int // length of subDir's path on the server
}

// pendingDir is a directory found and not walked yet; parent is retained
// for it.
type pendingDir struct {
	parent    *beneath.Dir
	name, rel string
}

func (w *insideWalk) walk(ctx context.Context, root *beneath.Dir) error {
	var stack []pendingDir
	defer func() {
		for _, p := range stack {
			p.parent.Close()
		}
	}()
	cur, rel := root, "."
	for {
		subdirs, err := w.scan(ctx, cur, rel)
		if err == nil {
			for i := len(subdirs) - 1; i >= 0; i-- {
				child := join(rel, subdirs[i])
				if w.base+1+len(child) >= unix.PathMax {
					continue
				}
				stack = append(stack, pendingDir{parent: cur.Retain(), name: subdirs[i], rel: child})
			}
		}
		cur.Close()
		if err != nil {
			return err
		}
		for cur = nil; cur == nil; {
			if len(stack) == 0 {
				return nil
			}
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			d, err := w.x.openStep(ctx, "look inside "+w.subDir, []*beneath.Dir{p.parent}, func() (*beneath.Dir, error) { return p.parent.OpenDir(p.name) })
			p.parent.Close()
			switch {
			case errors.Is(err, beneath.ErrMountInside):
				return fmt.Errorf("%s: %w (a filesystem is mounted there)", w.show(p.rel), ErrHoldsShare)
			case beneath.Gone(err):
				continue // removed, or swapped for a symlink, meanwhile
			case err != nil:
				return err
			}
			cur, rel = d, p.rel
		}
	}
}

// scan reads dir's entries, a batch per step, and returns its
// subdirectories; a .hostpath-csi directory or a mount point among them is
// ErrHoldsShare.
func (w *insideWalk) scan(ctx context.Context, dir *beneath.Dir, rel string) ([]string, error) {
	var subdirs []string
	for {
		var batch []string
		end := false
		err := w.x.doHolding(ctx, "look inside "+w.subDir, []*beneath.Dir{dir}, func() error {
			names, err := dir.ReadNames()
			if err != nil {
				return err
			}
			if len(names) == 0 {
				end = true
				return nil
			}
			for _, n := range names {
				st, err := dir.Lstat(n)
				switch {
				case errors.Is(err, beneath.ErrMountInside):
					return fmt.Errorf("%s: %w (a filesystem is mounted there)", w.show(join(rel, n)), ErrHoldsShare)
				case beneath.Gone(err):
					continue
				case err != nil:
					return err
				}
				if st.Mode&unix.S_IFMT != unix.S_IFDIR {
					continue
				}
				if n == ids.HiddenDir {
					return fmt.Errorf("%s %w", w.show(rel), ErrHoldsShare)
				}
				batch = append(batch, n)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if end {
			return subdirs, nil
		}
		subdirs = append(subdirs, batch...)
	}
}

// show is rel (relative to the walked subDir) as a path on the export.
func (w *insideWalk) show(rel string) string {
	if rel == "." {
		return w.subDir
	}
	return w.subDir + "/" + rel
}

func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
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
