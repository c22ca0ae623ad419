package driver

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
)

// diskError maps a backend failure to the code that tells the CO what to do.
func diskError(what string, err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		code = codes.ResourceExhausted
	case errors.Is(err, hostpath.ErrMountedInside), errors.Is(err, beneath.ErrMountInside), errors.Is(err, beneath.ErrTooDeep),
		errors.Is(err, hostpath.ErrNestedSubvolumes):
		// Something inside the volume the driver will not reach into or
		// through: a mount a pod made, a tree deeper than it walks.
		code = codes.FailedPrecondition
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = codes.Aborted
	}
	return status.Errorf(code, "%s: %v", what, err)
}

// stateError reports a failure of the state database; nothing was changed.
// A full disk under the database is ResourceExhausted, like any full disk.
func stateError(err error) error {
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return status.Errorf(codes.ResourceExhausted, "state database: %v", err)
	}
	return status.Errorf(codes.Internal, "state database: %v", err)
}

// lock takes a per-key exclusive lock. If ctx ends first, the call is
// Aborted: another call on the same volume is still running and the CO
// should retry.
func (c *core) lock(ctx context.Context, kind, key string) (func(), error) {
	unlock, err := c.locks.Lock(ctx, kind+"/"+key)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "another operation on %s %q is in progress: %v", kind, key, err)
	}
	return unlock, nil
}

// rlock takes a per-key shared lock: readers of a volume or snapshot (a
// copy, a mount) run side by side; only a delete excludes them.
func (c *core) rlock(ctx context.Context, kind, key string) (func(), error) {
	unlock, err := c.locks.RLock(ctx, kind+"/"+key)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "%s %q is being deleted or changed: %v", kind, key, err)
	}
	return unlock, nil
}

func notFound(format string, args ...any) error {
	return status.Error(codes.NotFound, fmt.Sprintf(format, args...))
}

// lockForDelete takes the lock of a volume ("vol") or snapshot ("snap") that
// a delete is about to remove. Whoever deletes what is still being copied
// wants it gone: that copy is stopped first (it removes what it made). One
// that is the source of a running copy is ABORTED at once instead of
// queueing behind it.
func (c *core) lockForDelete(ctx context.Context, kind, id string) (func(), error) {
	if j := c.jobs.making(id); j != nil {
		if err := c.jobs.cancelAndWait(ctx, j); err != nil {
			return nil, err
		}
	}
	if j := c.jobs.reading(kind + "/" + id); j != nil {
		what := map[string]string{"vol": "volume", "snap": "snapshot"}[kind]
		return nil, status.Errorf(codes.Aborted, "%s %s is the source of a %s; retry once it ends", what, id, j.what)
	}
	return c.lock(ctx, kind, id)
}
