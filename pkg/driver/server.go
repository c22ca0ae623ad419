package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// NewGRPCServer returns a server with the driver's services registered and
// an interceptor that logs each call and turns a panic into Internal.
func (d *Driver) NewGRPCServer() *grpc.Server {
	srv := grpc.NewServer(
		grpc.UnaryInterceptor(d.logAndRecover),
		grpc.StreamInterceptor(d.logAndRecoverStream),
		// A fixed pool of handler goroutines instead of one new goroutine
		// (and stack growth) per call: CSI calls are small and many.
		grpc.NumStreamWorkers(uint32(4*runtime.NumCPU())),
	)
	d.Register(srv)
	return srv
}

// logAndRecover logs each call, counts it in the operations metric, and
// turns a panic into Internal.
func (d *Driver) logAndRecover(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	if klog.V(5).Enabled() {
		klog.InfoS("GRPC request", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	}
	defer func() {
		d.endCall(info.FullMethod, start, recover(), &err, "GRPC call", "GRPC call refused")
		if err == nil && klog.V(5).Enabled() {
			klog.InfoS("GRPC response", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp))
		}
	}()
	return handler(ctx, req)
}

// logAndRecoverStream is logAndRecover for the streaming calls (the
// SnapshotMetadata service): each call logged with its request and counted
// once, a panic turned into Internal.
func (d *Driver) logAndRecoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() {
		d.endCall(info.FullMethod, start, recover(), &err, "GRPC stream", "GRPC stream refused or ended early")
	}()
	return handler(srv, &loggedStream{ServerStream: ss, method: info.FullMethod})
}

// endCall is how both interceptors end a call: a panic (r, from the
// caller's recover) becomes Internal in *err, the call is counted, and it
// is logged by its code: what on success, what+" failed" for Internal and
// Unknown, refused for any other code.
func (d *Driver) endCall(method string, start time.Time, r any, err *error, what, refused string) {
	if r != nil {
		klog.ErrorS(nil, "Panic in GRPC handler", "method", method, "panic", r, "stack", string(debug.Stack()))
		*err = status.Errorf(codes.Internal, "internal error in %s: %v", method, r)
	}
	d.metrics.calls.RecordMetrics(method, *err, time.Since(start))
	switch code := status.Code(*err); {
	case code == codes.OK:
		klog.V(4).InfoS(what, "method", method, "duration", time.Since(start))
	case code == codes.Internal || code == codes.Unknown:
		klog.ErrorS(*err, what+" failed", "method", method, "duration", time.Since(start))
	default:
		klog.V(2).InfoS(refused, "method", method, "code", code, "error", status.Convert(*err).Message(), "duration", time.Since(start))
	}
}

// loggedStream logs the request a streaming call receives (it is read by
// the handler, after the interceptor has run).
type loggedStream struct {
	grpc.ServerStream
	method string
}

func (s *loggedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && klog.V(5).Enabled() {
		klog.InfoS("GRPC request", "method", s.method, "request", protosanitizer.StripSecrets(m))
	}
	return err
}

// Listen opens the endpoint (unix:///path or a plain path). The socket gets
// mode 0600 before anyone can connect: it is bound under a temporary name,
// chmod'ed, then renamed into place. A socket left by a dead process is
// replaced; one that a live process still serves is an error.
func Listen(endpoint string) (net.Listener, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	_ = os.Remove(tmp)
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // the socket is renamed; remove the real path ourselves
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("move socket into place: %w", err)
	}
	return &unlinkingListener{Listener: l, path: path}, nil
}

// unlinkingListener removes the socket file when closed.
type unlinkingListener struct {
	net.Listener
	path string
}

func (l *unlinkingListener) Close() error {
	err := l.Listener.Close()
	if rmErr := os.Remove(l.path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
		err = rmErr
	}
	return err
}

func socketPath(endpoint string) (string, error) {
	if endpoint == "" {
		return "", errors.New("endpoint is empty")
	}
	path := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Scheme != "" {
		if u.Scheme != "unix" {
			return "", fmt.Errorf("endpoint %q: only unix:// sockets are served", endpoint)
		}
		path = u.Path
		if u.Host != "" { // unix://relative/path
			path = u.Host + u.Path
		}
	}
	if path == "" {
		return "", fmt.Errorf("endpoint %q has no socket path", endpoint)
	}
	return filepath.Abs(path)
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket path %s exists and is not a socket (%s); refusing to replace it", path, fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("socket %s is served by a running process; is another driver running?", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("check socket %s: %w", path, err)
	}
	klog.InfoS("Removing stale socket of a dead process", "path", path)
	return os.Remove(path)
}
