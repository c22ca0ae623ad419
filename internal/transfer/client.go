package transfer

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrAuthentication is wrapped by Do's error when the peer refused this
// process's key or failed to prove it holds one of this process's keys.
var ErrAuthentication = errors.New("authentication failed")

// Client fetches from peers' Servers. Set the fields before the first Do;
// do not change them after. A Client is safe for concurrent use.
type Client struct {
	Keys *Keyring
	// MaxTransfers bounds the transfers this client runs at once (from Do
	// until the body is closed); more wait for a slot. 0 is unlimited.
	MaxTransfers int
	// RateBytesPerSec bounds the body bytes read per second, over all
	// transfers together. 0 is unlimited.
	RateBytesPerSec int64
	// IdleTimeout fails a read that gets no byte for this long, naming the
	// peer; default DefaultIdleTimeout. Keep it well above the servers'
	// QueueKeepalive.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds dial, TLS handshake and key proof; default
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration

	initOnce sync.Once
	tlsConf  *tls.Config
	slots    slots
	limiter  byteLimiter
	piece    int
	idle     time.Duration
	hsTime   time.Duration

	onQueued func() // test hook
}

func (c *Client) init() {
	c.initOnce.Do(func() {
		c.tlsConf = clientTLSConfig()
		c.slots = newSlots(c.MaxTransfers)
		c.limiter, c.piece = newLimiter(c.RateBytesPerSec)
		c.idle = c.IdleTimeout
		if c.idle <= 0 {
			c.idle = DefaultIdleTimeout
		}
		c.hsTime = c.HandshakeTimeout
		if c.hsTime <= 0 {
			c.hsTime = DefaultHandshakeTimeout
		}
	})
}

// Do sends req to the server at addr (host:port) and gives its answer:
// the header's meta and the body. The caller must Close the body; it holds
// one of MaxTransfers until then. The body's Read gives io.EOF only after
// the server's end frame said the handler succeeded; a handler's error
// after the header, a broken connection, a peer idle for IdleTimeout and
// ctx's end all make it fail otherwise. ctx bounds the whole transfer,
// the body's reads included.
//
// When the server's handler refused the request, err is a gRPC status error
// with the handler's code and message. An authentication failure wraps
// ErrAuthentication.
func (c *Client) Do(ctx context.Context, addr string, req Request) (_ json.RawMessage, _ io.ReadCloser, err error) {
	c.init()
	if c.Keys == nil {
		return nil, nil, errors.New("transfer: Client needs Keys")
	}
	reqJSON, err := json.Marshal(req)
	if err != nil {
		return nil, nil, fmt.Errorf("transfer: marshal request: %w", err)
	}
	if len(reqJSON) > maxRequest {
		return nil, nil, fmt.Errorf("transfer: request of %d bytes, limit %d", len(reqJSON), maxRequest)
	}
	if !c.slots.tryAcquire() {
		if c.onQueued != nil {
			c.onQueued()
		}
		if err := c.slots.acquire(ctx); err != nil {
			return nil, nil, fmt.Errorf("transfer from %s: waiting for a transfer slot: %w", addr, err)
		}
	}
	keys, err := c.Keys.current()
	if err != nil {
		c.slots.release()
		return nil, nil, err
	}
	k := keys.first()

	d := net.Dialer{Timeout: c.hsTime, KeepAliveConfig: keepAlive}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		c.slots.release()
		return nil, nil, fmt.Errorf("transfer: %w", err)
	}
	b := &body{c: c, raw: raw, ctx: ctx, addr: addr}
	// ctx's end breaks the connection, whatever is blocked on it.
	b.stop = context.AfterFunc(ctx, func() { raw.Close() })
	defer func() {
		if err != nil {
			b.Close()
			if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				err = fmt.Errorf("%w (%w)", ctx.Err(), err)
			}
		}
	}()

	ic := &idleConn{Conn: raw}
	tc := tls.Client(ic, c.tlsConf)
	_ = tc.SetDeadline(time.Now().Add(c.hsTime))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, nil, fmt.Errorf("transfer: TLS handshake with %s: %w", addr, err)
	}
	if err := clientProof(tc, k, addr); err != nil {
		return nil, nil, err
	}
	if err := writeSized(tc, reqJSON); err != nil {
		return nil, nil, fmt.Errorf("transfer: sending request to %s: %w", addr, err)
	}
	_ = tc.SetDeadline(time.Time{})
	ic.readIdle.Store(int64(c.idle))
	b.r = bufio.NewReaderSize(tc, 64<<10)

	h, err := b.readHeader()
	if err != nil {
		return nil, nil, err
	}
	if !h.OK {
		code := codes.Code(h.Code)
		if code == codes.OK {
			code = codes.Unknown
		}
		return nil, nil, status.Error(code, h.Message)
	}
	return h.Meta, b, nil
}

// clientProof proves k to the server and checks the server's proof of the
// same key, both bound to this TLS session.
func clientProof(tc *tls.Conn, k key, addr string) error {
	ekm, err := exportEKM(tc)
	if err != nil {
		return fmt.Errorf("transfer: %s: %w", addr, err)
	}
	msg := make([]byte, 0, 2+len(k.id)+macLen)
	msg = append(msg, proofVersion, byte(len(k.id)))
	msg = append(msg, k.id...)
	msg = append(msg, proofMAC(k.secret, "client", ekm)...)
	if _, err := tc.Write(msg); err != nil {
		return fmt.Errorf("transfer: sending key proof to %s: %w", addr, err)
	}
	var v [1]byte
	if _, err := io.ReadFull(tc, v[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("transfer: %s: %w: the peer closed the connection instead of answering the proof of key %q: %w", addr, ErrAuthentication, k.id, err)
		}
		return fmt.Errorf("transfer: %s: waiting for the answer to the key proof: %w", addr, err)
	}
	if v[0] != verdictOK {
		return fmt.Errorf("transfer: %s: %w: the peer refused key %q", addr, ErrAuthentication, k.id)
	}
	mac := make([]byte, macLen)
	if _, err := io.ReadFull(tc, mac); err != nil {
		return fmt.Errorf("transfer: %s: %w: reading the peer's proof: %w", addr, ErrAuthentication, noEOF(err))
	}
	if !hmac.Equal(mac, proofMAC(k.secret, "server", ekm)) {
		return fmt.Errorf("transfer: %s: %w: the peer's proof of key %q is wrong; not trusting it", addr, ErrAuthentication, k.id)
	}
	return nil
}

var errBodyClosed = errors.New("transfer: read on closed body")

// body is a transfer's answer body.
type body struct {
	c    *Client
	raw  net.Conn
	r    *bufio.Reader
	ctx  context.Context
	addr string
	stop func() bool

	remain int   // bytes left in the current data frame
	err    error // sticky: io.EOF after a good end, else the failure

	closeOnce sync.Once
	closed    atomic.Bool
}

// fail records err as the body's end, with the peer named and ctx's end
// (which broke the connection) preferred as the cause.
func (b *body) fail(what string, err error) error {
	err = noEOF(err)
	if cerr := b.ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%w)", cerr, err)
	}
	b.err = fmt.Errorf("transfer from %s: %s: %w", b.addr, what, err)
	return b.err
}

func (b *body) readHeader() (*answerHeader, error) {
	for {
		typ, n, err := readFrameHdr(b.r)
		if err != nil {
			return nil, b.fail("reading answer header", err)
		}
		switch typ {
		case frameKeepalive:
			if n != 0 {
				return nil, b.fail("protocol", fmt.Errorf("keepalive frame of %d bytes", n))
			}
			continue
		case frameHeader:
		default:
			return nil, b.fail("protocol", fmt.Errorf("frame type %d before the header", typ))
		}
		if n > maxHeader {
			return nil, b.fail("protocol", fmt.Errorf("header of %d bytes, limit %d", n, maxHeader))
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(b.r, p); err != nil {
			return nil, b.fail("reading answer header", err)
		}
		var h answerHeader
		if err := json.Unmarshal(p, &h); err != nil {
			return nil, b.fail("protocol", fmt.Errorf("answer header: %w", err))
		}
		return &h, nil
	}
}

// Read reads the body. It gives io.EOF only after the server's end frame
// reported success.
func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.closed.Load() {
		return 0, errBodyClosed
	}
	for b.remain == 0 {
		typ, n, err := readFrameHdr(b.r)
		if err != nil {
			return 0, b.fail("connection lost before the end of the stream", err)
		}
		switch typ {
		case frameData:
			if n > maxData {
				return 0, b.fail("protocol", fmt.Errorf("data frame of %d bytes, limit %d", n, maxData))
			}
			b.remain = n
		case frameEnd:
			return 0, b.end(n)
		default:
			return 0, b.fail("protocol", fmt.Errorf("frame type %d in the body", typ))
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := min(len(p), b.remain, b.c.piece)
	n, err := b.r.Read(p[:n])
	b.remain -= n
	if err != nil {
		return n, b.fail("connection lost before the end of the stream", err)
	}
	if b.c.limiter != nil {
		if err := b.c.limiter.WaitN(b.ctx, n); err != nil {
			return n, b.fail("rate limit", err)
		}
	}
	return n, nil
}

func (b *body) end(n int) error {
	if n > maxHeader {
		return b.fail("protocol", fmt.Errorf("end frame of %d bytes, limit %d", n, maxHeader))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(b.r, p); err != nil {
		return b.fail("reading the end of the stream", err)
	}
	var e endStatus
	if err := json.Unmarshal(p, &e); err != nil {
		return b.fail("protocol", fmt.Errorf("end frame: %w", err))
	}
	if e.OK {
		b.err = io.EOF
		b.Close()
		return io.EOF
	}
	code := codes.Code(e.Code)
	if code == codes.OK {
		code = codes.Unknown
	}
	// The handler's own status, code and message as it sent them.
	b.err = status.Error(code, e.Message)
	return b.err
}

// Close ends the transfer (breaking it if not read to its end) and frees
// its slot.
func (b *body) Close() error {
	b.closeOnce.Do(func() {
		b.stop()
		b.raw.Close()
		b.closed.Store(true)
		b.c.slots.release()
	})
	return nil
}
