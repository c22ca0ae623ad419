package treestream

import (
	"context"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

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
