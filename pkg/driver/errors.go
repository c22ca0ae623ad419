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

func notFound(format string, args ...any) error {
	return status.Error(codes.NotFound, fmt.Sprintf(format, args...))
}
