package treestream

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// defaultACL gives new entries of a directory their ACL; it is set on a
// directory once its entries have been made, or they would inherit it.
const defaultACL = "system.posix_acl_default"

// xattrSource reads one entry's extended attributes: by descriptor, or by
// path (relative to a directory's /proc link, not following the entry) for
// what cannot be opened.
type xattrSource struct {
	list func(buf []byte) (int, error)
	get  func(name string, buf []byte) (int, error)
}

func fdXattrs(fd int) xattrSource {
	return xattrSource{
		list: func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Fgetxattr(fd, name, buf) },
	}
}

func pathXattrs(path string) xattrSource {
	return xattrSource{
		list: func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) },
		get:  func(name string, buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) },
	}
}

// eachXattr hands fn each attribute of src that keep accepts (all with a
// nil keep), one at a time; the value is valid only during the call.
func eachXattr(src xattrSource, keep func(string) bool, fn func(name string, value []byte) error) error {
	names, err := listXattrs(src)
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
		val, buf, err = getXattr(src, name, buf)
		if errors.Is(err, unix.ENODATA) {
			continue // removed in between
		}
		if err != nil {
			return err
		}
		if err := fn(name, val); err != nil {
			return err
		}
	}
	return nil
}

func listXattrs(src xattrSource) ([]byte, error) {
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

// getXattr reads one value into buf, growing it as needed; it returns the
// value and the buffer to reuse.
func getXattr(src xattrSource, name string, buf []byte) ([]byte, []byte, error) {
	for {
		n, err := src.get(name, buf)
		if errors.Is(err, unix.ERANGE) && len(buf) < maxXattr {
			buf = make([]byte, min(2*len(buf), maxXattr))
			continue
		}
		if err != nil {
			return nil, buf, err
		}
		return buf[:n], buf, nil
	}
}

// niced runs f on a goroutine whose thread runs at the nice value (1..19)
// and is discarded afterwards (the goroutine ends locked), so the priority
// never leaks to other goroutines; with nice <= 0 it just calls f.
func niced(nice int, f func()) {
	if nice <= 0 {
		f()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), min(nice, 19))
		f()
	}()
	<-done
}

// unblockOnCancel makes a read or write blocked on rw return once ctx is
// done, where rw says how: a deadline (net.Conn) or closing with an error
// (io.Pipe's ends). Other readers and writers are checked between records
// only. The returned stop undoes the arrangement.
func unblockOnCancel(ctx context.Context, rw any, read bool) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		switch c := rw.(type) {
		case interface{ SetReadDeadline(time.Time) error }:
			if read {
				_ = c.SetReadDeadline(time.Now())
				return
			}
		}
		switch c := rw.(type) {
		case interface{ SetWriteDeadline(time.Time) error }:
			if !read {
				_ = c.SetWriteDeadline(time.Now())
				return
			}
		}
		if c, ok := rw.(interface{ CloseWithError(error) error }); ok {
			_ = c.CloseWithError(context.Cause(ctx))
		}
	})
}
