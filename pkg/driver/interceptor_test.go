package driver

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A handler that panics answers Internal, naming the method, from both
// interceptors; an error passes through as it is.
func TestInterceptorsTurnPanicsIntoInternal(t *testing.T) {
	e := newEnv(t)
	boom := func() { panic("boom") }
	_, err := e.d.logAndRecover(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Controller/X"},
		func(context.Context, any) (any, error) { boom(); return nil, nil })
	if status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error in /csi.v1.Controller/X: boom" {
		t.Fatalf("unary panic: %v", err)
	}
	err = e.d.logAndRecoverStream(nil, nil, &grpc.StreamServerInfo{FullMethod: "/csi.v1.SnapshotMetadata/Y"},
		func(any, grpc.ServerStream) error { boom(); return nil })
	if status.Code(err) != codes.Internal || status.Convert(err).Message() != "internal error in /csi.v1.SnapshotMetadata/Y: boom" {
		t.Fatalf("stream panic: %v", err)
	}
	want := status.Error(codes.NotFound, "gone")
	_, err = e.d.logAndRecover(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/m"},
		func(context.Context, any) (any, error) { return nil, want })
	if !errors.Is(err, want) {
		t.Fatalf("an error through the interceptor: %v", err)
	}
}
