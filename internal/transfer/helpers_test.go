package transfer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type testKey struct {
	id     string
	secret []byte
}

func newKey(t testing.TB, id string) testKey {
	t.Helper()
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return testKey{id: id, secret: s}
}

func keyFileText(keys ...testKey) string {
	var b strings.Builder
	b.WriteString("# transfer keys\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %s\n", k.id, base64.StdEncoding.EncodeToString(k.secret))
	}
	return b.String()
}

// writeKeyFile replaces path atomically (rename), as a Secret update
// replaces the file a path leads to.
func writeKeyFile(t testing.TB, path string, keys ...testKey) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(keyFileText(keys...)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func keyring(t testing.TB, keys ...testKey) *Keyring {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys")
	writeKeyFile(t, p, keys...)
	kr, err := LoadKeyring(p)
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// countingHandler counts its calls and runs fn.
type countingHandler struct {
	calls atomic.Int32
	fn    func(ctx context.Context, req Request, ans *Answer) error
}

func (h *countingHandler) Handle(ctx context.Context, req Request, ans *Answer) error {
	h.calls.Add(1)
	return h.fn(ctx, req, ans)
}

func bytesHandler(body []byte) *countingHandler {
	return &countingHandler{fn: func(ctx context.Context, req Request, ans *Answer) error {
		if err := ans.Header(map[string]any{"size": len(body)}); err != nil {
			return err
		}
		_, err := ans.Write(body)
		return err
	}}
}

// refusals collects a server's refusal reasons.
type refusals struct {
	mu      sync.Mutex
	reasons []string
	ch      chan string
}

func watchRefusals(s *Server) *refusals {
	r := &refusals{ch: make(chan string, 100)}
	s.onRefuse = func(remote, reason string) {
		r.mu.Lock()
		r.reasons = append(r.reasons, reason)
		r.mu.Unlock()
		select {
		case r.ch <- reason:
		default:
		}
	}
	return r
}

// next waits for the next refusal.
func (r *refusals) next(t testing.TB) string {
	t.Helper()
	select {
	case s := <-r.ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no refusal logged")
		return ""
	}
}

// startServer serves s on a loopback port until the test ends.
func startServer(t testing.TB, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, s, ln)
}

func serveOn(t testing.TB, s *Server, ln net.Listener) string {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// trackingListener remembers the connections it accepted, so a test can
// break them as a dying server's kernel would.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) breakAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as from a killed process's kernel
		}
		c.Close()
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// countingLimiter passes to a real limiter and counts the tokens asked.
type countingLimiter struct {
	inner  byteLimiter
	tokens atomic.Int64
	max    atomic.Int64
}

func (l *countingLimiter) WaitN(ctx context.Context, n int) error {
	l.tokens.Add(int64(n))
	for {
		m := l.max.Load()
		if int64(n) <= m || l.max.CompareAndSwap(m, int64(n)) {
			break
		}
	}
	return l.inner.WaitN(ctx, n)
}
