package transfer

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"k8s.io/klog/v2"
)

// benchBytes go through per iteration, in writes of benchWrite.
const (
	benchBytes = 256 << 20
	benchWrite = 1 << 20
)

func sendBench(w io.Writer, buf []byte) error {
	for sent := 0; sent < benchBytes; sent += len(buf) {
		if _, err := w.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

func receiveBench(b *testing.B, r io.Reader, buf []byte) {
	n, err := io.CopyBuffer(io.Discard, r, buf)
	if err != nil {
		b.Fatal(err)
	}
	if n != benchBytes {
		b.Fatalf("received %d bytes, want %d", n, benchBytes)
	}
}

// BenchmarkTransfer: 256 MiB through the channel over loopback (a new
// connection, handshake and proofs per iteration).
func BenchmarkTransfer(b *testing.B) {
	klog.SetOutput(io.Discard)
	k := newKey(b, "k1")
	src := randomBytes(b, benchWrite)
	h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
		return sendBench(ans, src)
	})
	addr := startServer(b, &Server{Keys: keyring(b, k), Handler: h})
	c := &Client{Keys: keyring(b, k)}
	buf := make([]byte, 256<<10)
	b.SetBytes(benchBytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, body, err := c.Do(context.Background(), addr, Request{Op: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		receiveBench(b, body, buf)
		body.Close()
	}
}

// BenchmarkPlainTLS: the same bytes over a bare TLS 1.3 connection between
// the same kind of endpoints, the baseline for BenchmarkTransfer.
func BenchmarkPlainTLS(b *testing.B) {
	cert, err := ephemeralCert()
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(cert))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	src := randomBytes(b, benchWrite)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				_ = sendBench(c, src)
				_ = c.(*tls.Conn).CloseWrite()
				io.Copy(io.Discard, c)
			}(c)
		}
	}()
	buf := make([]byte, 256<<10)
	b.SetBytes(benchBytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := tls.Dial("tcp", ln.Addr().String(), clientTLSConfig())
		if err != nil {
			b.Fatal(err)
		}
		receiveBench(b, c, buf)
		c.Close()
	}
}
