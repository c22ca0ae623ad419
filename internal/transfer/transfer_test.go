package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFetch(t *testing.T) {
	k := newKey(t, "k1")
	want := randomBytes(t, 3<<20+12345)
	var got Request
	h := &countingHandler{fn: func(ctx context.Context, req Request, ans *Answer) error {
		got = req
		if err := ans.Header(map[string]any{"size": len(want)}); err != nil {
			return err
		}
		// Uneven writes, some larger than a frame.
		for p := want; len(p) > 0; {
			n := min(len(p), 300001)
			if _, err := ans.Write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
		}
		return nil
	}}
	addr := startServer(t, &Server{Keys: keyring(t, k), Handler: h})
	c := &Client{Keys: keyring(t, k)}
	req := Request{Op: "fetch", Kind: "snapshot", ID: "snap-1"}
	meta, body, err := c.Do(ctxT(t), addr, req)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	data, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	if sha256.Sum256(data) != sha256.Sum256(want) {
		t.Fatalf("body differs: %d bytes, want %d", len(data), len(want))
	}
	var m struct{ Size int }
	if err := json.Unmarshal(meta, &m); err != nil || m.Size != len(want) {
		t.Fatalf("meta %s (%v), want size %d", meta, err, len(want))
	}
	if got != req {
		t.Fatalf("handler got %+v, want %+v", got, req)
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("handler called %d times", n)
	}
}

// An empty body (a handler that writes nothing) is complete, not broken.
func TestEmptyAnswer(t *testing.T) {
	k := newKey(t, "k1")
	h := &countingHandler{fn: func(ctx context.Context, req Request, ans *Answer) error { return nil }}
	addr := startServer(t, &Server{Keys: keyring(t, k), Handler: h})
	meta, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), addr, Request{Op: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if data, err := io.ReadAll(body); err != nil || len(data) != 0 || meta != nil {
		t.Fatalf("got %q, meta %s, err %v; want an empty complete body", data, meta, err)
	}
}

const secretAnswer = "THE-SECRET-ANSWER"

func secretHandler() *countingHandler {
	return bytesHandler(bytes.Repeat([]byte(secretAnswer), 1000))
}

// readAllFrom reads what a peer sends until it closes (or 10 s pass).
func readAllFrom(t *testing.T, c net.Conn) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the connection: %v", err)
	}
	return b
}

func TestNoCredentials(t *testing.T) {
	k := newKey(t, "k1")
	tlsTo := func(t *testing.T, addr string) *tls.Conn {
		c, err := tls.Dial("tcp", addr, clientTLSConfig())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	tests := []struct {
		name   string
		talk   func(t *testing.T, addr string) []byte
		reason string
	}{
		{"plain TCP", func(t *testing.T, addr string) []byte {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + `{"op":"fetch"}`)); err != nil {
				t.Fatal(err)
			}
			return readAllFrom(t, c)
		}, "TLS handshake"},
		{"TLS without proof", func(t *testing.T, addr string) []byte {
			return readAllFrom(t, tlsTo(t, addr))
		}, "reading proof"},
		{"TLS with garbage proof", func(t *testing.T, addr string) []byte {
			c := tlsTo(t, addr)
			if _, err := c.Write(randomBytes(t, 200)); err != nil {
				t.Fatal(err)
			}
			return readAllFrom(t, c)
		}, "proof version"},
		{"TLS with a proof of random bytes", func(t *testing.T, addr string) []byte {
			c := tlsTo(t, addr)
			msg := append([]byte{proofVersion, 2}, "k1"...)
			msg = append(msg, randomBytes(t, macLen)...)
			// The request too, as if the proof were good.
			msg = append(msg, 0, 0, 0, 14)
			msg = append(msg, `{"op":"fetch"}`...)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			return readAllFrom(t, c)
		}, `wrong proof for key id "k1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := secretHandler()
			s := &Server{Keys: keyring(t, k), Handler: h, HandshakeTimeout: 500 * time.Millisecond}
			ref := watchRefusals(s)
			addr := startServer(t, s)
			got := tt.talk(t, addr)
			if r := ref.next(t); !strings.Contains(r, tt.reason) {
				t.Errorf("refusal reason %q, want %q", r, tt.reason)
			}
			if bytes.Contains(got, []byte(secretAnswer)) || len(got) > 1 && tt.name != "plain TCP" {
				t.Errorf("got %d bytes after the handshake: %q", len(got), got)
			}
			if n := h.calls.Load(); n != 0 {
				t.Errorf("handler called %d times", n)
			}
		})
	}
}

func TestWrongKey(t *testing.T) {
	k := newKey(t, "k1")
	tests := []struct {
		name   string
		client testKey
		reason string
	}{
		{"unknown id", newKey(t, "k2"), `unknown key id "k2"`},
		{"right id, wrong secret", newKey(t, "k1"), `wrong proof for key id "k1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := secretHandler()
			s := &Server{Keys: keyring(t, k), Handler: h}
			ref := watchRefusals(s)
			addr := startServer(t, s)
			_, body, err := (&Client{Keys: keyring(t, tt.client)}).Do(ctxT(t), addr, Request{Op: "fetch"})
			if body != nil {
				body.Close()
			}
			if !errors.Is(err, ErrAuthentication) || !strings.Contains(err.Error(), "authentication failed") || body != nil {
				t.Fatalf("Do: %v, body %v; want authentication failed", err, body)
			}
			if r := ref.next(t); !strings.Contains(r, tt.reason) {
				t.Errorf("refusal reason %q, want %q", r, tt.reason)
			}
			if n := h.calls.Load(); n != 0 {
				t.Errorf("handler called %d times", n)
			}
		})
	}
}

// recordingProxy forwards one connection to target, keeping what the
// client sent.
func recordingProxy(t *testing.T, target string) (addr string, sent func() []byte) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var rec bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer s.Close()
		go func() {
			io.Copy(c, s)
			c.Close()
		}()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			rec.Write(buf[:n])
			mu.Unlock()
			if _, werr := s.Write(buf[:n]); werr != nil || err != nil {
				return
			}
		}
	}()
	return ln.Addr().String(), func() []byte {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return bytes.Clone(rec.Bytes())
	}
}

func TestReplay(t *testing.T) {
	k := newKey(t, "k1")
	h := secretHandler()
	s := &Server{Keys: keyring(t, k), Handler: h}
	ref := watchRefusals(s)
	addr := startServer(t, s)
	paddr, sent := recordingProxy(t, addr)

	_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), paddr, Request{Op: "fetch"})
	if err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Contains(answer, []byte(secretAnswer)) {
		t.Fatalf("recorded session: %d bytes, %v", len(answer), err)
	}
	recorded := sent()
	if h.calls.Load() != 1 {
		t.Fatalf("handler called %d times in the recorded session", h.calls.Load())
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(recorded); err != nil {
		t.Fatal(err)
	}
	back := readAllFrom(t, c)
	if r := ref.next(t); !strings.Contains(r, "TLS handshake") {
		t.Errorf("refusal reason %q, want a failed TLS handshake", r)
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("handler called %d times; the replay reached it", n)
	}
	// The answer was 17 kB; what comes back is the server's handshake and
	// an alert, nothing of an answer.
	if len(back) >= len(answer) {
		t.Fatalf("replay got %d bytes back, the answer is %d", len(back), len(answer))
	}
}

// relay terminates TLS toward the client with its own certificate and opens
// its own TLS to the server, passing the bytes between them, proof
// included.
func relay(t *testing.T, target string) string {
	cert, err := ephemeralCert()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := tls.Dial("tcp", target, clientTLSConfig())
				if err != nil {
					return
				}
				defer s.Close()
				go func() {
					io.Copy(c, s)
					c.Close()
				}()
				io.Copy(s, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestRelayRefused(t *testing.T) {
	k := newKey(t, "k1")
	h := secretHandler()
	s := &Server{Keys: keyring(t, k), Handler: h}
	ref := watchRefusals(s)
	addr := startServer(t, s)
	_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), relay(t, addr), Request{Op: "fetch"})
	if !errors.Is(err, ErrAuthentication) || body != nil {
		t.Fatalf("Do through a relay: %v; want authentication failed", err)
	}
	if r := ref.next(t); !strings.Contains(r, `wrong proof for key id "k1"`) {
		t.Errorf("refusal reason %q", r)
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("handler called %d times", n)
	}
}

// fakeServer accepts any proof, answers with a made-up one and then sends
// an answer anyway.
func fakeServer(t *testing.T) string {
	cert, err := ephemeralCert()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(cert))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var h [2]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		if _, err := io.ReadFull(c, make([]byte, int(h[1])+macLen)); err != nil {
			return
		}
		out := append([]byte{verdictOK}, make([]byte, macLen)...)
		rand.Read(out[1:])
		hdr, _ := json.Marshal(answerHeader{OK: true, Meta: json.RawMessage(`"forged"`)})
		out, _ = appendFrame(out, frameHeader, hdr)
		out, _ = appendFrame(out, frameData, []byte(secretAnswer))
		out, _ = appendFrame(out, frameEnd, []byte(`{"ok":true}`))
		c.Write(out)
		io.Copy(io.Discard, c)
	}()
	return ln.Addr().String()
}

func appendFrame(b []byte, typ byte, p []byte) ([]byte, error) {
	var w bytes.Buffer
	_, err := writeFrame(&w, nil, typ, p)
	return append(b, w.Bytes()...), err
}

func TestServerWithoutTheKey(t *testing.T) {
	meta, body, err := (&Client{Keys: keyring(t, newKey(t, "k1"))}).Do(ctxT(t), fakeServer(t), Request{Op: "fetch"})
	if !errors.Is(err, ErrAuthentication) || !strings.Contains(err.Error(), "peer's proof") || body != nil || meta != nil {
		t.Fatalf("Do against a server without the key: meta %s, body %v, err %v; want its proof refused", meta, body, err)
	}
}

func TestRotation(t *testing.T) {
	oldK, newK := newKey(t, "old"), newKey(t, "new")
	serverKeys := filepath.Join(t.TempDir(), "keys")
	writeKeyFile(t, serverKeys, newK, oldK)
	kr, err := LoadKeyring(serverKeys)
	if err != nil {
		t.Fatal(err)
	}
	h := bytesHandler([]byte("hello"))
	s := &Server{Keys: kr, Handler: h}
	ref := watchRefusals(s)
	addr := startServer(t, s)
	oldClient := &Client{Keys: keyring(t, oldK)}
	newClient := &Client{Keys: keyring(t, newK)}
	fetch := func(c *Client) error {
		_, body, err := c.Do(ctxT(t), addr, Request{Op: "fetch"})
		if err != nil {
			return err
		}
		defer body.Close()
		b, err := io.ReadAll(body)
		if err == nil && string(b) != "hello" {
			t.Fatalf("body %q", b)
		}
		return err
	}
	steps := []struct {
		name    string
		rewrite []testKey // the server's new key file, if any
		client  *Client
		ok      bool
	}{
		{"old key while both are listed", nil, oldClient, true},
		{"new key while both are listed", nil, newClient, true},
		{"old key after it was dropped", []testKey{newK}, oldClient, false},
		{"new key after the old was dropped", nil, newClient, true},
	}
	for _, st := range steps {
		if st.rewrite != nil {
			writeKeyFile(t, serverKeys, st.rewrite...)
		}
		err := fetch(st.client)
		if st.ok && err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if !st.ok {
			if !errors.Is(err, ErrAuthentication) {
				t.Fatalf("%s: %v, want authentication failed", st.name, err)
			}
			if r := ref.next(t); !strings.Contains(r, `unknown key id "old"`) {
				t.Fatalf("%s: refusal %q", st.name, r)
			}
		}
	}
}

func TestHandlerStatus(t *testing.T) {
	k := newKey(t, "k1")
	tests := []struct {
		name     string
		fn       func(ctx context.Context, req Request, ans *Answer) error
		code     codes.Code
		msg      string
		midBody  bool // the error comes from the body's Read
		bodySeen string
	}{
		{name: "not found", code: codes.NotFound, msg: "snapshot snap-9 not found",
			fn: func(ctx context.Context, req Request, ans *Answer) error {
				return status.Errorf(codes.NotFound, "snapshot %s not found", req.ID)
			}},
		{name: "plain error", code: codes.Unknown, msg: "disk on fire",
			fn: func(ctx context.Context, req Request, ans *Answer) error { return errors.New("disk on fire") }},
		{name: "wrapped status", code: codes.FailedPrecondition, msg: "reading: rpc error: code = FailedPrecondition desc = busy",
			fn: func(ctx context.Context, req Request, ans *Answer) error {
				return errorsJoinMsg("reading", status.Error(codes.FailedPrecondition, "busy"))
			}},
		{name: "panic", code: codes.Internal, msg: "transfer handler panicked: boom",
			fn: func(ctx context.Context, req Request, ans *Answer) error { panic("boom") }},
		{name: "mid-stream", code: codes.DataLoss, msg: "file changed while read", midBody: true, bodySeen: "part",
			fn: func(ctx context.Context, req Request, ans *Answer) error {
				if _, err := ans.Write([]byte("part")); err != nil {
					return err
				}
				return status.Error(codes.DataLoss, "file changed while read")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startServer(t, &Server{Keys: keyring(t, k), Handler: HandlerFunc(tt.fn)})
			_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), addr, Request{Op: "fetch", ID: "snap-9"})
			var seen []byte
			if tt.midBody {
				if err != nil {
					t.Fatalf("Do: %v", err)
				}
				seen, err = io.ReadAll(body)
				body.Close()
				if errors.Is(err, io.EOF) {
					t.Fatalf("body read ended in io.EOF")
				}
			} else if body != nil {
				body.Close()
				t.Fatal("Do gave a body with its error")
			}
			st, ok := status.FromError(err)
			if !ok || st.Code() != tt.code || st.Message() != tt.msg {
				t.Fatalf("error %v; want code %v, message %q", err, tt.code, tt.msg)
			}
			if string(seen) != tt.bodySeen {
				t.Fatalf("body %q, want %q", seen, tt.bodySeen)
			}
		})
	}
}

func errorsJoinMsg(msg string, err error) error {
	return &wrapped{msg: msg, err: err}
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg + ": " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

// A stream that ends without its end frame is an error, never io.EOF.
func TestBrokenStream(t *testing.T) {
	k := newKey(t, "k1")
	tests := []struct {
		name  string
		brk   func(s *Server, ln *trackingListener)
		cause string
	}{
		{"server closed", func(s *Server, ln *trackingListener) { s.Close() }, "connection lost before the end of the stream"},
		{"connections reset", func(s *Server, ln *trackingListener) { ln.breakAll() }, "connection lost before the end of the stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wrote := make(chan struct{})
			handlerDone := make(chan error, 1)
			h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
				if _, err := ans.Write(bytes.Repeat([]byte("x"), 100000)); err != nil {
					return err
				}
				close(wrote)
				<-ctx.Done()
				handlerDone <- ctx.Err()
				return ctx.Err()
			})
			s := &Server{Keys: keyring(t, k), Handler: h}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			tl := &trackingListener{Listener: ln}
			addr := serveOn(t, s, tl)
			_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), addr, Request{Op: "fetch"})
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			<-wrote
			tt.brk(s, tl)
			data, err := io.ReadAll(body)
			if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), tt.cause) || !strings.Contains(err.Error(), addr) {
				t.Fatalf("ReadAll after %d bytes: %v; want a broken stream naming %s", len(data), err, addr)
			}
			if len(data) > 100000 {
				t.Fatalf("read %d bytes", len(data))
			}
			// The handler learns it too: its ctx ends.
			select {
			case <-handlerDone:
			case <-time.After(10 * time.Second):
				t.Fatal("handler's ctx did not end")
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	k := newKey(t, "k1")
	tests := []struct {
		name       string
		headerSent bool
	}{
		{"before the header", false},
		{"in the body", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
				if tt.headerSent {
					if _, err := ans.Write([]byte("some")); err != nil {
						return err
					}
				}
				<-ctx.Done() // stuck for good, until the client gives up
				return ctx.Err()
			})
			addr := startServer(t, &Server{Keys: keyring(t, k), Handler: h})
			const idle = 300 * time.Millisecond
			c := &Client{Keys: keyring(t, k), IdleTimeout: idle}
			start := time.Now()
			_, body, err := c.Do(ctxT(t), addr, Request{Op: "fetch"})
			if tt.headerSent {
				if err != nil {
					t.Fatal(err)
				}
				defer body.Close()
				_, err = io.ReadAll(body)
			}
			if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "no data for 300ms") {
				t.Fatalf("error %v; want an idle timeout naming %s", err, addr)
			}
			if d := time.Since(start); d < idle || d > 10*time.Second {
				t.Fatalf("failed after %v, idle timeout %v", d, idle)
			}
		})
	}
}

// With MaxTransfers 1 a second transfer waits for the first to end, on the
// server and on the client.
func TestMaxTransfersServer(t *testing.T) {
	k := newKey(t, "k1")
	var mu sync.Mutex
	var events []string
	event := func(e string) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}
	release := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
		event(req.ID + " start")
		if req.ID == "first" {
			// Busy, and showing it, until released.
			for {
				select {
				case <-release:
				case <-time.After(20 * time.Millisecond):
					if _, err := ans.Write([]byte("-")); err != nil {
						return err
					}
					continue
				}
				break
			}
		}
		event(req.ID + " end")
		_, err := ans.Write([]byte(req.ID))
		return err
	})
	queued := make(chan Request, 2)
	s := &Server{Keys: keyring(t, k), Handler: h, MaxTransfers: 1, QueueKeepalive: 20 * time.Millisecond}
	s.onQueued = func(r Request) { queued <- r }
	addr := startServer(t, s)
	// Keepalives hold the waiting client's idle timeout off.
	c := &Client{Keys: keyring(t, k), IdleTimeout: 500 * time.Millisecond}
	results := make(chan string, 2)
	fetch := func(id string) {
		_, body, err := c.Do(ctxT(t), addr, Request{ID: id})
		if err != nil {
			results <- err.Error()
			return
		}
		defer body.Close()
		b, err := io.ReadAll(body)
		if err != nil {
			results <- err.Error()
			return
		}
		results <- string(b)
	}
	go fetch("first")
	for {
		mu.Lock()
		n := len(events)
		mu.Unlock()
		if n > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	go fetch("second")
	select {
	case r := <-queued:
		if r.ID != "second" {
			t.Fatalf("queued %q", r.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second transfer was not queued")
	}
	time.Sleep(time.Second) // longer than the client's idle timeout: keepalives work
	close(release)
	for _, r := range []string{<-results, <-results} {
		if r != "second" && strings.TrimLeft(r, "-") != "first" {
			t.Fatalf("result %q", r)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"first start", "first end", "second start", "second end"}
	if strings.Join(events, ",") != strings.Join(want, ",") {
		t.Fatalf("events %v, want %v", events, want)
	}
}

func TestMaxTransfersClient(t *testing.T) {
	k := newKey(t, "k1")
	addr := startServer(t, &Server{Keys: keyring(t, k), Handler: bytesHandler([]byte("data"))})
	queued := make(chan struct{}, 3)
	c := &Client{Keys: keyring(t, k), MaxTransfers: 1}
	c.onQueued = func() { queued <- struct{}{} }

	_, first, err := c.Do(ctxT(t), addr, Request{ID: "first"})
	if err != nil {
		t.Fatal(err)
	}
	// A waiting Do ends with its ctx.
	ctx, cancel := context.WithCancel(ctxT(t))
	cancelled := make(chan error, 1)
	go func() {
		_, _, err := c.Do(ctx, addr, Request{ID: "cancelled"})
		cancelled <- err
	}()
	<-queued
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Do: %v", err)
	}

	second := make(chan error, 1)
	go func() {
		_, body, err := c.Do(ctxT(t), addr, Request{ID: "second"})
		if err == nil {
			_, err = io.ReadAll(body)
			body.Close()
		}
		second <- err
	}()
	<-queued
	select {
	case err := <-second:
		t.Fatalf("second transfer ran while the first held the slot: %v", err)
	default:
	}
	if _, err := io.ReadAll(first); err != nil {
		t.Fatal(err)
	}
	first.Close()
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

func TestChunkFor(t *testing.T) {
	tests := []struct {
		rate int64
		want int
	}{
		{0, maxData},
		{1, 1},
		{800, 100},
		{8 << 20, maxData},
		{1 << 40, maxData},
	}
	for _, tt := range tests {
		if got := chunkFor(tt.rate); got != tt.want {
			t.Errorf("chunkFor(%d) = %d, want %d", tt.rate, got, tt.want)
		}
	}
}

// Every body byte passes the limiter of both sides, in pieces no larger
// than the limiter's burst; and a transfer is not faster than the rate.
func TestRateLimit(t *testing.T) {
	k := newKey(t, "k1")
	const bps = 4 << 20
	body := randomBytes(t, 1<<20)
	s := &Server{Keys: keyring(t, k), Handler: bytesHandler(body), RateBytesPerSec: bps}
	if err := s.init(); err != nil {
		t.Fatal(err)
	}
	c := &Client{Keys: keyring(t, k), RateBytesPerSec: bps, IdleTimeout: 2 * time.Second}
	c.init()
	sl := &countingLimiter{inner: s.limiter}
	s.limiter = sl
	cl := &countingLimiter{inner: c.limiter}
	c.limiter = cl
	piece := min(bps/8, maxData)
	if s.piece != piece || c.piece != piece {
		t.Fatalf("pieces %d, %d; want %d", s.piece, c.piece, piece)
	}
	if b := s.limiter.(*countingLimiter).inner.(*rate.Limiter).Burst(); b != piece {
		t.Fatalf("burst %d, want %d", b, piece)
	}
	addr := startServer(t, s)

	start := time.Now()
	_, rc, err := c.Do(ctxT(t), addr, Request{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body: %d bytes, %v", len(got), err)
	}
	elapsed := time.Since(start)
	for side, l := range map[string]*countingLimiter{"server": sl, "client": cl} {
		if n := l.tokens.Load(); n != int64(len(body)) {
			t.Errorf("%s limiter: %d tokens for %d bytes", side, n, len(body))
		}
		if m := l.max.Load(); m > int64(piece) {
			t.Errorf("%s limiter: a wait of %d tokens, burst %d", side, m, piece)
		}
	}
	// The bucket starts full (one burst); the rest waits for tokens.
	if min := time.Duration(float64(len(body)-piece) / bps * float64(time.Second)); elapsed < min {
		t.Errorf("1 MiB at 4 MiB/s took %v, less than %v", elapsed, min)
	}
}

// Connections that do not prove themselves are bounded; more are closed at
// once, and proven transfers go on once the slots free.
func TestMaxUnauthenticated(t *testing.T) {
	k := newKey(t, "k1")
	s := &Server{Keys: keyring(t, k), Handler: bytesHandler([]byte("ok")), MaxUnauthenticated: 2}
	ref := watchRefusals(s)
	addr := startServer(t, s)
	var idle []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	if r := ref.next(t); r != "too many unauthenticated connections" {
		t.Fatalf("refusal %q", r)
	}
	readAllFrom(t, idle[2]) // closed by the server
	idle[0].Close()
	idle[1].Close()
	for i := 0; i < 2; i++ {
		if r := ref.next(t); !strings.Contains(r, "TLS handshake") {
			t.Fatalf("refusal %q", r)
		}
	}
	_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), addr, Request{})
	if err != nil {
		t.Fatal(err)
	}
	body.Close()
}

// Cancelling Do's ctx breaks a body being read.
func TestCancelDuringBody(t *testing.T) {
	k := newKey(t, "k1")
	h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
		if _, err := ans.Write([]byte("x")); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	})
	addr := startServer(t, &Server{Keys: keyring(t, k), Handler: h})
	ctx, cancel := context.WithCancel(ctxT(t))
	_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctx, addr, Request{})
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if _, err := io.ReadFull(body, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		cancel()
	}()
	_, err = io.ReadAll(body) // blocked until the cancel breaks it
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAll: %v, want context.Canceled", err)
	}
}

// Under a low rate the sender sends small frames often, so a receiver's
// idle timeout far below the transfer's duration does not fire.
func TestRateLimitKeepsFlowing(t *testing.T) {
	k := newKey(t, "k1")
	const bps = 256 << 10
	body := randomBytes(t, 320<<10)
	addr := startServer(t, &Server{Keys: keyring(t, k), Handler: bytesHandler(body), RateBytesPerSec: bps})
	const idle = 400 * time.Millisecond
	start := time.Now()
	_, rc, err := (&Client{Keys: keyring(t, k), IdleTimeout: idle, RateBytesPerSec: bps}).Do(ctxT(t), addr, Request{})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body: %d bytes, %v", len(got), err)
	}
	if d := time.Since(start); d < 2*idle {
		t.Fatalf("took %v; the test needs a transfer longer than the idle timeout %v", d, idle)
	}
}

// The idle timeout counts time without progress: a large write to a slow
// reader succeeds while each of its TLS records moves in time.
func TestIdleConnProgress(t *testing.T) {
	cert, err := ephemeralCert()
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	const idle = 250 * time.Millisecond
	ic := &idleConn{Conn: a}
	srv := tls.Server(ic, serverTLSConfig(cert))
	cli := tls.Client(b, clientTLSConfig())
	hs := make(chan error, 1)
	go func() { hs <- cli.Handshake() }()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	ic.writeIdle.Store(int64(idle))
	ic.readIdle.Store(int64(idle))

	const size = 256 << 10 // 16 records or more
	read := make(chan error, 1)
	go func() {
		buf := make([]byte, 16<<10)
		for got := 0; got < size; {
			time.Sleep(40 * time.Millisecond)
			n, err := cli.Read(buf)
			if err != nil {
				read <- err
				return
			}
			got += n
		}
		read <- nil
	}()
	start := time.Now()
	if _, err := srv.Write(make([]byte, size)); err != nil {
		t.Fatalf("write to a slow but steady reader: %v", err)
	}
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < idle {
		t.Fatalf("write took %v; the test needs longer than the idle timeout %v", d, idle)
	}

	// A reader that stops: the next write fails within the idle timeout,
	// and so does a read that gets nothing.
	wrote := make(chan error, 1)
	go func() { _, err := srv.Write(make([]byte, 64<<10)); wrote <- err }()
	if err := <-wrote; err == nil || !strings.Contains(err.Error(), "peer took nothing for 250ms") {
		t.Fatalf("write to a stalled reader: %v", err)
	}
	if _, err := srv.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "no data for 250ms") {
		t.Fatalf("read from a silent peer: %v", err)
	}
}

// A request the server's Unbounded names is served while every slot is
// taken by a transfer that does not end until it has been.
func TestUnboundedRequestsTakeNoSlot(t *testing.T) {
	k := newKey(t, "k1")
	release, started := make(chan struct{}), make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
		if req.Op == "fetch" {
			close(started)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		_, err := ans.Write([]byte(req.Op))
		return err
	})
	s := &Server{Keys: keyring(t, k), Handler: h, MaxTransfers: 1, Unbounded: func(r Request) bool { return r.Op == "stat" }}
	addr := startServer(t, s)
	c := &Client{Keys: keyring(t, k)}
	fetched := make(chan error, 1)
	go func() {
		_, body, err := c.Do(ctxT(t), addr, Request{Op: "fetch"})
		if err == nil {
			_, err = io.ReadAll(body)
			body.Close()
		}
		fetched <- err
	}()
	<-started // the fetch holds the only slot until the stats are answered
	var got []byte
	for i := 0; i < 2; i++ {
		_, body, err := (&Client{Keys: keyring(t, k)}).Do(ctxT(t), addr, Request{Op: "stat"})
		if err != nil {
			t.Fatalf("stat while a fetch holds the only slot: %v", err)
		}
		if got, err = io.ReadAll(body); err != nil || string(got) != "stat" {
			t.Fatalf("stat answer %q, %v", got, err)
		}
		body.Close()
	}
	close(release)
	if err := <-fetched; err != nil {
		t.Fatalf("fetch: %v", err)
	}
}

// A handler that prepares longer than the client's idle timeout before its
// header (a point-in-time copy) keeps the client waiting, not failing.
func TestKeepaliveWhileHandlerPrepares(t *testing.T) {
	k := newKey(t, "k1")
	h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
		select {
		case <-time.After(1500 * time.Millisecond): // five idle timeouts
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := ans.Header(map[string]int{"n": 1}); err != nil {
			return err
		}
		_, err := ans.Write([]byte("ready"))
		return err
	})
	addr := startServer(t, &Server{Keys: keyring(t, k), Handler: h, QueueKeepalive: 50 * time.Millisecond})
	c := &Client{Keys: keyring(t, k), IdleTimeout: 300 * time.Millisecond}
	meta, body, err := c.Do(ctxT(t), addr, Request{Op: "fetch"})
	if err != nil {
		t.Fatalf("a handler preparing past the idle timeout: %v", err)
	}
	defer body.Close()
	got, err := io.ReadAll(body)
	if err != nil || string(got) != "ready" || string(meta) != `{"n":1}` {
		t.Fatalf("answer %q %q, %v", meta, got, err)
	}
}
