package beneath

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// SkipDir, returned by a WalkFunc for a directory, skips its contents.
var SkipDir = fs.SkipDir

// Entry is what Walk shows of one entry of the tree.
type Entry struct {
	// Parent is the open directory holding the entry (nil for the root).
	// It stays open during the call; Retain it to use it later.
	Parent *Dir
	// Name is the entry's name in Parent ("" for the root).
	Name string
	// Path is the entry's path relative to the root ("." for the root),
	// for messages.
	Path string
	// Stat describes the entry, not following a symlink. For a directory it
	// describes the directory as opened, which is what its contents are
	// read from.
	Stat unix.Statx_t
	// Dir is, for a directory, the directory itself, open until its
	// contents have been walked (Retain it to keep it longer); nil for
	// anything else.
	Dir *Dir
	// Depth is 0 for the root, 1 for its entries, and so on.
	Depth int
}

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Dir != nil }

// WalkFunc is called for each entry. An error stops the walk and is
// returned by Walk, except SkipDir for a directory, which skips its contents.
type WalkFunc func(e *Entry) error

// WalkOptions tune a walk. The zero value walks everything and fails at a
// mount inside the tree.
type WalkOptions struct {
	// Leave, if set, is called for each directory once its contents have
	// been walked (not for one skipped with SkipDir).
	Leave WalkFunc
	// SkipMounts leaves out every mount point inside the tree and what is
	// below it. Without it a mount point fails the walk (ErrMountInside).
	SkipMounts bool
}

// Walk calls fn for root, then for each entry below it, depth first, each
// directory's entries in name order. Entries that vanish or change type
// while the tree is walked are left out (Gone). Walk never follows a
// symlink, never crosses into another mount and fails past MaxDepth.
// root stays open; Walk does not close it.
func Walk(root *Dir, fn WalkFunc, opts WalkOptions) error {
	st, err := root.Stat()
	if err != nil {
		return err
	}
	w := &walker{fn: fn, opts: opts}
	return w.dir(&Entry{Name: "", Path: ".", Stat: st, Dir: root})
}

type walker struct {
	fn   WalkFunc
	opts WalkOptions
}

func (w *walker) dir(e *Entry) error {
	if err := w.fn(e); err != nil {
		if errors.Is(err, SkipDir) {
			return nil
		}
		return err
	}
	names, err := e.Dir.Names()
	if err != nil {
		// A directory removed after it was opened reads as gone: what it
		// held vanished with it, so it is walked as empty.
		if !Gone(err) || e.Depth == 0 {
			return err
		}
		names = nil
	}
	for _, name := range names {
		child := Entry{Parent: e.Dir, Name: name, Path: join(e.Path, name), Depth: e.Depth + 1}
		if child.Stat, err = e.Dir.Lstat(name); err != nil {
			if w.leftOut(err) {
				continue
			}
			return err
		}
		if child.Stat.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := w.fn(&child); err != nil && !errors.Is(err, SkipDir) {
				return err
			}
			continue
		}
		if child.Depth > MaxDepth {
			return fmt.Errorf("%s: %w", e.Dir.Path()+"/"+name, ErrTooDeep)
		}
		if err := w.subdir(&child); err != nil {
			return err
		}
	}
	if w.opts.Leave != nil {
		return w.opts.Leave(e)
	}
	return nil
}

func (w *walker) subdir(e *Entry) error {
	sub, err := e.Parent.OpenDir(e.Name)
	if err != nil {
		if w.leftOut(err) {
			return nil
		}
		return err
	}
	defer sub.Close()
	// Describe what was opened: the name may point elsewhere by now.
	if e.Stat, err = sub.Stat(); err != nil {
		return err
	}
	e.Dir = sub
	return w.dir(e)
}

// leftOut reports an entry that the walk skips: vanished, changed, or a
// mount point when those are skipped.
func (w *walker) leftOut(err error) bool {
	return Gone(err) || w.opts.SkipMounts && errors.Is(err, ErrMountInside)
}

func join(dir, name string) string {
	if dir == "." {
		return name
	}
	return dir + "/" + name
}
