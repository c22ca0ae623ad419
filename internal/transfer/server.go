package transfer

import (
	"context"
	"crypto/hmac"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Defaults for the zero values of Server and Client fields.
const (
	DefaultHandshakeTimeout   = 10 * time.Second
	DefaultMaxUnauthenticated = 64
	DefaultIdleTimeout        = 60 * time.Second
	DefaultQueueKeepalive     = 5 * time.Second
)

// Request is what a client asks for. The package does not interpret it.
type Request struct {
	Op   string `json:"op"`
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// Handler answers one authenticated request. It calls ans.Header once
// (optional: the first Write sends an empty header) and then streams the
// body with ans.Write. An error returned before the header reaches the
// client as Do's error, one returned after it as the body's Read error; a
// gRPC status error keeps its code and message (others become Unknown). ctx
// ends when the client hangs up or the server closes.
//
// The handler must keep bytes flowing: a client gives up on a connection
// that sends nothing for its IdleTimeout, also before the header.
type Handler interface {
	Handle(ctx context.Context, req Request, ans *Answer) error
}

// HandlerFunc is a function as a Handler.
type HandlerFunc func(ctx context.Context, req Request, ans *Answer) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, req Request, ans *Answer) error {
	return f(ctx, req, ans)
}

// Server serves transfers to peers that prove they hold a key of Keys.
// Set the fields before the first Serve; do not change them after.
type Server struct {
	Keys    *Keyring
	Handler Handler
	// MaxTransfers bounds the transfers served at once; more wait for a
	// slot (and the client with them). 0 is unlimited.
	MaxTransfers int
	// Unbounded, when set, names the requests that need no slot: short
	// answers (a lookup) that must not queue behind long transfers.
	Unbounded func(Request) bool
	// RateBytesPerSec bounds the bytes sent per second, over all transfers
	// together. 0 is unlimited.
	RateBytesPerSec int64
	// HandshakeTimeout bounds TLS handshake, key proof and request of a
	// connection; default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// MaxUnauthenticated bounds the connections not yet past their proof;
	// more are closed at once. Default DefaultMaxUnauthenticated.
	MaxUnauthenticated int
	// IdleTimeout fails a transfer whose peer takes no byte for this long;
	// default DefaultIdleTimeout.
	IdleTimeout time.Duration
	// QueueKeepalive is how often a request waiting for a slot is told it
	// is still queued, so that the client's idle timeout does not fire;
	// default DefaultQueueKeepalive. It must be well below the clients'
	// IdleTimeout.
	QueueKeepalive time.Duration

	initOnce sync.Once
	initErr  error
	tlsConf  *tls.Config
	preauth  chan struct{}
	slots    slots
	limiter  byteLimiter
	piece    int
	ctx      context.Context
	cancel   context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup

	floodLogged   time.Time
	floodUnlogged int

	// Test hooks, nil in use.
	onRefuse func(remote, reason string)
	onQueued func(req Request)
}

// ErrServerClosed is what Serve returns after Close.
var ErrServerClosed = errors.New("transfer: server closed")

func (s *Server) init() error {
	s.initOnce.Do(func() {
		if s.Keys == nil || s.Handler == nil {
			s.initErr = errors.New("transfer: Server needs Keys and Handler")
			return
		}
		cert, err := ephemeralCert()
		if err != nil {
			s.initErr = err
			return
		}
		s.tlsConf = serverTLSConfig(cert)
		n := s.MaxUnauthenticated
		if n <= 0 {
			n = DefaultMaxUnauthenticated
		}
		s.preauth = make(chan struct{}, n)
		s.slots = newSlots(s.MaxTransfers)
		s.limiter, s.piece = newLimiter(s.RateBytesPerSec)
		if s.HandshakeTimeout <= 0 {
			s.HandshakeTimeout = DefaultHandshakeTimeout
		}
		if s.IdleTimeout <= 0 {
			s.IdleTimeout = DefaultIdleTimeout
		}
		if s.QueueKeepalive <= 0 {
			s.QueueKeepalive = DefaultQueueKeepalive
		}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.listeners = map[net.Listener]struct{}{}
		s.conns = map[net.Conn]struct{}{}
	})
	return s.initErr
}

// Serve accepts connections on ln until Close (then it returns
// ErrServerClosed) or until ln fails. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.init(); err != nil {
		ln.Close()
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				klog.ErrorS(err, "Transfer server: accept failed; retrying", "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("transfer: accept: %w", err)
		}
		backoff = 0
		select {
		case s.preauth <- struct{}{}:
		default:
			s.refuseFlood(c.RemoteAddr().String())
			c.Close()
			continue
		}
		if !s.track(c) {
			<-s.preauth
			c.Close()
			return ErrServerClosed
		}
		go s.serveConn(c)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track records c so that Close can break it; false once closed.
func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Close stops accepting, cancels the handlers' contexts, breaks every
// connection (a transfer in flight ends without its end frame, so its
// client sees an error) and waits for the handlers to return.
func (s *Server) Close() error {
	if err := s.init(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.wg.Wait()
		return nil
	}
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) refuse(remote, reason string) {
	klog.InfoS("Transfer connection refused", "remote", remote, "reason", reason)
	if s.onRefuse != nil {
		s.onRefuse(remote, reason)
	}
}

// refuseFlood refuses a connection over MaxUnauthenticated. A flood
// would flood the log too: one line a second at most, with the count of
// those not logged.
func (s *Server) refuseFlood(remote string) {
	const reason = "too many unauthenticated connections"
	if s.onRefuse != nil {
		s.onRefuse(remote, reason)
	}
	s.mu.Lock()
	now := time.Now()
	if now.Sub(s.floodLogged) < time.Second {
		s.floodUnlogged++
		s.mu.Unlock()
		return
	}
	n := s.floodUnlogged
	s.floodLogged, s.floodUnlogged = now, 0
	s.mu.Unlock()
	klog.InfoS("Transfer connection refused", "remote", remote, "reason", reason, "alsoRefusedSinceLastLog", n)
}

func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	defer raw.Close()
	preauth := true
	defer func() {
		if preauth {
			<-s.preauth
		}
	}()
	remote := raw.RemoteAddr().String()
	setKeepAlive(raw)

	ic := &idleConn{Conn: raw}
	tc := tls.Server(ic, s.tlsConf)
	_ = tc.SetDeadline(time.Now().Add(s.HandshakeTimeout))
	if err := tc.HandshakeContext(s.ctx); err != nil {
		s.refuse(remote, "TLS handshake: "+err.Error())
		return
	}
	keyID, reason := s.checkProof(tc)
	if reason != "" {
		s.refuse(remote, reason)
		return
	}
	body, err := readSized(tc, maxRequest)
	if err != nil {
		s.refuse(remote, fmt.Sprintf("reading request of key %q: %v", keyID, err))
		return
	}
	var req Request
	if err := json.Unmarshal(body, &req); err != nil {
		s.refuse(remote, fmt.Sprintf("request of key %q is not valid JSON: %v", keyID, err))
		return
	}
	_ = tc.SetDeadline(time.Time{})
	ic.writeIdle.Store(int64(s.IdleTimeout))
	<-s.preauth
	preauth = false

	// The client sends nothing after its request: a read that returns means
	// it hung up (or the server closed), and the handler's work can stop.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		var b [1]byte
		_, _ = tc.Read(b[:])
		cancel()
	}()
	defer func() {
		raw.Close()
		<-watched
	}()

	ans := &Answer{conn: tc, limiter: s.limiter, piece: s.piece, ctx: ctx, remote: remote}
	if s.Unbounded == nil || !s.Unbounded(req) {
		if err := s.waitSlot(ctx, ans, req); err != nil {
			klog.V(2).InfoS("Transfer not served: no slot", "remote", remote, "op", req.Op, "kind", req.Kind, "id", req.ID, "err", err)
			return
		}
		defer s.slots.release()
	}

	start := time.Now()
	// A handler may prepare for a while before its header (a copy at one
	// point in time, a lock): the client hears it is alive meanwhile.
	prepared := make(chan struct{})
	go func() {
		t := time.NewTicker(s.QueueKeepalive)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if !ans.keepaliveBeforeHeader() {
					return
				}
			case <-prepared:
				return
			}
		}
	}()
	herr := s.callHandler(ctx, req, ans)
	close(prepared)
	werr := ans.finish(herr)
	klog.V(4).InfoS("Transfer served", "remote", remote, "key", keyID, "op", req.Op, "kind", req.Kind, "id", req.ID,
		"bytes", ans.bytes, "duration", time.Since(start), "handlerErr", herr, "writeErr", werr)
	if werr != nil && herr == nil {
		klog.V(2).InfoS("Transfer broken", "remote", remote, "op", req.Op, "kind", req.Kind, "id", req.ID, "err", werr)
	}
}

// checkProof reads the client's proof and answers it: the server's own
// proof if it holds, a refusal otherwise. reason is "" on success.
func (s *Server) checkProof(tc *tls.Conn) (keyID, reason string) {
	ekm, err := exportEKM(tc)
	if err != nil {
		return "", err.Error()
	}
	var h [2]byte
	if _, err := io.ReadFull(tc, h[:]); err != nil {
		return "", "reading proof: " + err.Error()
	}
	if h[0] != proofVersion {
		return "", fmt.Sprintf("proof version %d, want %d", h[0], proofVersion)
	}
	rest := make([]byte, int(h[1])+macLen)
	if _, err := io.ReadFull(tc, rest); err != nil {
		return "", "reading proof: " + err.Error()
	}
	keyID = string(rest[:h[1]])
	mac := rest[h[1]:]
	keys, err := s.Keys.current()
	if err != nil {
		_, _ = tc.Write([]byte{verdictRefused})
		return keyID, "no usable keys: " + err.Error()
	}
	secret, ok := keys.lookup(keyID)
	if !ok {
		_, _ = tc.Write([]byte{verdictRefused})
		return keyID, fmt.Sprintf("unknown key id %q", keyID)
	}
	if !hmac.Equal(mac, proofMAC(secret, "client", ekm)) {
		_, _ = tc.Write([]byte{verdictRefused})
		return keyID, fmt.Sprintf("wrong proof for key id %q", keyID)
	}
	if _, err := tc.Write(append([]byte{verdictOK}, proofMAC(secret, "server", ekm)...)); err != nil {
		return keyID, "sending proof: " + err.Error()
	}
	return keyID, ""
}

// waitSlot takes a transfer slot, telling the client every QueueKeepalive
// that it is queued.
func (s *Server) waitSlot(ctx context.Context, ans *Answer, req Request) error {
	if s.slots.tryAcquire() {
		return nil
	}
	if s.onQueued != nil {
		s.onQueued(req)
	}
	t := time.NewTicker(s.QueueKeepalive)
	defer t.Stop()
	for {
		select {
		case s.slots <- struct{}{}:
			return nil
		case <-t.C:
			if err := ans.frame(frameKeepalive, nil); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Server) callHandler(ctx context.Context, req Request, ans *Answer) (err error) {
	defer func() {
		if r := recover(); r != nil {
			klog.ErrorS(nil, "Transfer handler panicked", "op", req.Op, "kind", req.Kind, "id", req.ID, "panic", r)
			err = status.Errorf(codes.Internal, "transfer handler panicked: %v", r)
		}
	}()
	return s.Handler.Handle(ctx, req, ans)
}

// Answer is how a Handler answers: a header, then the body's bytes. Its
// methods may be called from several goroutines, but a body written from
// several at once is interleaved in no useful order.
type Answer struct {
	conn    *tls.Conn
	limiter byteLimiter
	piece   int
	ctx     context.Context
	remote  string

	mu         sync.Mutex
	headerSent bool
	done       bool
	err        error // sticky: the connection is broken
	buf        []byte
	bytes      int64
}

// errAnswerDone is what writes after the handler returned get.
var errAnswerDone = errors.New("transfer: answer already finished")

// Header sends the answer's header with meta (marshalled as JSON; nil sends
// none). It may be called once, before any Write.
func (a *Answer) Header(meta any) error {
	var raw json.RawMessage
	if meta != nil {
		b, err := json.Marshal(meta)
		if err != nil {
			return fmt.Errorf("transfer: marshal answer meta: %w", err)
		}
		if len(b) > maxHeader-1024 {
			return fmt.Errorf("transfer: answer meta of %d bytes, limit %d", len(b), maxHeader-1024)
		}
		raw = b
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.headerSent {
		return errors.New("transfer: answer header sent twice")
	}
	return a.header(answerHeader{OK: true, Meta: raw})
}

// header sends h; a.mu is held.
func (a *Answer) header(h answerHeader) error {
	if a.done {
		return errAnswerDone
	}
	b, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("transfer: marshal answer header: %w", err)
	}
	a.headerSent = true
	return a.frameLocked(frameHeader, b)
}

// Write sends p as part of the body, at the server's rate. It sends an
// empty header first if Header was not called.
func (a *Answer) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.headerSent {
		if err := a.header(answerHeader{OK: true}); err != nil {
			return 0, err
		}
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), a.piece)
		if a.limiter != nil {
			if err := a.limiter.WaitN(a.ctx, n); err != nil {
				return written, fmt.Errorf("transfer to %s: %w", a.remote, err)
			}
		}
		if err := a.frameLocked(frameData, p[:n]); err != nil {
			return written, err
		}
		written += n
		a.bytes += int64(n)
		p = p[n:]
	}
	return written, nil
}

func (a *Answer) frame(typ byte, payload []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frameLocked(typ, payload)
}

func (a *Answer) frameLocked(typ byte, payload []byte) error {
	if a.err != nil {
		return a.err
	}
	if a.done {
		return errAnswerDone
	}
	var err error
	a.buf, err = writeFrame(a.conn, a.buf, typ, payload)
	if err != nil {
		if a.ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", a.ctx.Err(), err)
		}
		a.err = fmt.Errorf("transfer to %s: %w", a.remote, err)
		return a.err
	}
	return nil
}

// finish sends the handler's outcome: a refusing header if no header went
// out yet, else the end frame. Later writes fail.
func (a *Answer) finish(herr error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var err error
	switch {
	case herr != nil && !a.headerSent:
		st := statusOf(herr)
		err = a.header(answerHeader{OK: false, Code: uint32(st.Code()), Message: st.Message()})
	case herr != nil:
		st := statusOf(herr)
		err = a.endLocked(endStatus{OK: false, Code: uint32(st.Code()), Message: st.Message()})
	default:
		if !a.headerSent {
			if err = a.header(answerHeader{OK: true}); err != nil {
				break
			}
		}
		err = a.endLocked(endStatus{OK: true})
	}
	a.done = true
	return err
}

// keepaliveBeforeHeader sends a keepalive frame if no header went out yet;
// false once one did (or the connection broke).
func (a *Answer) keepaliveBeforeHeader() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.headerSent || a.done {
		return false
	}
	return a.frameLocked(frameKeepalive, nil) == nil
}

func (a *Answer) endLocked(e endStatus) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return a.frameLocked(frameEnd, b)
}

// statusOf gives err's gRPC status; context errors become Canceled or
// DeadlineExceeded, other errors Unknown. A status of OK (a handler
// returning status.Error(codes.OK, ...)) would read as success: Unknown.
func statusOf(err error) *status.Status {
	st, ok := status.FromError(err)
	if !ok {
		st = status.FromContextError(err)
	}
	if st.Code() == codes.OK {
		st = status.New(codes.Unknown, err.Error())
	}
	return st
}
