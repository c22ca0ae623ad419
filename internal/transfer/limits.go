package transfer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// slots bounds how many transfers run at once; nil is unlimited.
type slots chan struct{}

func newSlots(n int) slots {
	if n <= 0 {
		return nil
	}
	return make(slots, n)
}

// tryAcquire takes a slot if one is free now.
func (s slots) tryAcquire() bool {
	if s == nil {
		return true
	}
	select {
	case s <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s slots) acquire(ctx context.Context) error {
	if s == nil {
		return nil
	}
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slots) release() {
	if s != nil {
		<-s
	}
}

// byteLimiter is what a transfer takes its tokens from, one per byte. It is
// *rate.Limiter in use; tests wrap it to count.
type byteLimiter interface {
	WaitN(ctx context.Context, n int) error
}

// newLimiter gives the shared limiter for a rate, and the largest piece
// (data frame on the sending side, read on the receiving side) a transfer
// asks tokens for at once. The piece is at most an eighth of a second's
// worth of bytes, so that under a low rate bytes still flow several times a
// second, well inside any idle timeout, even with several transfers sharing
// the bucket. Its burst is that piece: a Wait never asks for more than the
// bucket holds.
func newLimiter(bytesPerSec int64) (byteLimiter, int) {
	if bytesPerSec <= 0 {
		return nil, maxData
	}
	piece := chunkFor(bytesPerSec)
	return rate.NewLimiter(rate.Limit(bytesPerSec), piece), piece
}

func chunkFor(bytesPerSec int64) int {
	if bytesPerSec <= 0 {
		return maxData
	}
	c := bytesPerSec / 8
	if c > maxData {
		c = maxData
	}
	if c < 1 {
		c = 1
	}
	return int(c)
}

// TCP keep-alive: a peer that vanished (power off, network cut) is noticed
// in about Idle+Interval*Count even when nobody reads.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3}

func setKeepAlive(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(keepAlive)
	}
}

// idleConn puts a fresh deadline on each read or write of the raw
// connection once enabled, so the idle timeout measures time without
// progress (one TLS record at most), not the time a large frame or a rate
// limited peer takes in all.
type idleConn struct {
	net.Conn
	readIdle  atomic.Int64 // nanoseconds; 0 is off
	writeIdle atomic.Int64
}

func (c *idleConn) Read(p []byte) (int, error) {
	d := time.Duration(c.readIdle.Load())
	if d > 0 {
		_ = c.Conn.SetReadDeadline(time.Now().Add(d))
	}
	n, err := c.Conn.Read(p)
	if err != nil && d > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("no data for %s: %w", d, err)
	}
	return n, err
}

func (c *idleConn) Write(p []byte) (int, error) {
	d := time.Duration(c.writeIdle.Load())
	if d > 0 {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(d))
	}
	n, err := c.Conn.Write(p)
	if err != nil && d > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("peer took nothing for %s: %w", d, err)
	}
	return n, err
}
