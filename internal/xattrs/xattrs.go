// Package xattrs reads an entry's extended attributes one at a time, for
// the two copy engines (internal/copytree, internal/treestream): a tenant's
// thousands of 64 KiB attributes never sit in memory together, and a list
// or a value that grows or goes while it is read is read again or left out.
package xattrs

import (
	"errors"
	"slices"

	"golang.org/x/sys/unix"
)

// DefaultACL is the attribute that gives new entries of a directory their
// ACL: a copy sets it on a directory only once its entries are made, or
// they would inherit it.
const DefaultACL = "system.posix_acl_default"

// MaxValue is the largest value Linux lets an attribute have.
const MaxValue = 1 << 16

// Source reads one entry's extended attributes.
type Source struct {
	list func(buf []byte) (int, error)
	get  func(name string, buf []byte) (int, error)
}

// Fd reads those of an open entry.
func Fd(fd int) Source {
	return Source{
		list: func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) },
	}
}

// Path reads those of the entry at path, not following it: for what cannot
// be opened (a symlink, a special file), by a path through a directory's
// /proc descriptor link.
func Path(path string) Source {
	return Source{
		list: func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) },
	}
}

// Each hands fn each attribute of src that keep accepts (all with a nil
// keep), one at a time; the value is valid only during the call. One
// removed in between is left out.
func Each(src Source, keep func(string) bool, fn func(name string, value []byte) error) error {
	names, err := list(src)
	if err != nil {
		return err
	}
	buf := make([]byte, 256)
	for len(names) > 0 {
		i := slices.Index(names, 0)
		if i < 0 {
			i = len(names)
		}
		name := string(names[:i])
		names = names[min(i+1, len(names)):]
		if name == "" || keep != nil && !keep(name) {
			continue
		}
		var val []byte
		val, buf, err = get(src, name, buf)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return &AttrError{Name: name, Err: err}
		}
		if err := fn(name, val); err != nil {
			return err
		}
	}
	return nil
}

// Get reads one attribute's value.
func Get(src Source, name string) ([]byte, error) {
	val, _, err := get(src, name, make([]byte, 256))
	return val, err
}

// AttrError is a failure to read one attribute.
type AttrError struct {
	Name string
	Err  error
}

func (e *AttrError) Error() string { return "xattr " + e.Name + ": " + e.Err.Error() }
func (e *AttrError) Unwrap() error { return e.Err }

// list returns the names, NUL separated; none where the filesystem has
// none. Asking the size first costs one call for the usual entry with no
// attributes.
func list(src Source) ([]byte, error) {
	for {
		n, err := src.list(nil)
		if errors.Is(err, unix.ENOTSUP) || n == 0 && err == nil {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		names := make([]byte, n)
		n, err = src.list(names)
		if errors.Is(err, unix.ERANGE) {
			continue // grew in between
		}
		if err != nil {
			return nil, err
		}
		return names[:n], nil
	}
}

// get reads one value into buf, growing it as needed up to MaxValue; it
// returns the value and the buffer to reuse.
func get(src Source, name string, buf []byte) ([]byte, []byte, error) {
	for {
		n, err := src.get(name, buf)
		if errors.Is(err, unix.ERANGE) && len(buf) < MaxValue {
			buf = make([]byte, min(2*len(buf), MaxValue))
			continue
		}
		if err != nil {
			return nil, buf, err
		}
		return buf[:n], buf, nil
	}
}
