package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
)

// nfsError maps a failure on an NFS export to its code: a server that does
// not answer in time is DEADLINE_EXCEEDED, one still stuck on an earlier
// call UNAVAILABLE; the message names the export (server:/share).
func nfsError(what string, err error) error {
	if _, ok := status.FromError(err); ok && status.Code(err) != codes.Unknown {
		return err
	}
	switch {
	case errors.Is(err, nfs.ErrInsideVolume):
		return status.Errorf(codes.FailedPrecondition, "%s: %v", what, err)
	case errors.Is(err, nfs.ErrTimeout):
		return status.Errorf(codes.DeadlineExceeded, "%s: %v", what, err)
	case errors.Is(err, nfs.ErrBusy):
		return status.Errorf(codes.Unavailable, "%s: %v", what, err)
	case errors.Is(err, nfs.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: %v", what, err)
	case errors.Is(err, nfs.ErrExists):
		return status.Errorf(codes.Aborted, "%s: %v; retry (a retry draws another key)", what, err)
	case errors.Is(err, nfs.ErrCorrupt):
		return status.Errorf(codes.DataLoss, "%s: %v", what, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.Aborted, "%s: %v; retry", what, err)
	}
	return diskError(what, err)
}
