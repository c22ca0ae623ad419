package transfer

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/treestream"
)

// benchTree writes what a restore moves: a database's worth of files (256
// MiB in 64 files of 4 MiB) and 2000 small ones.
func benchTree(b *testing.B) (dir string, bytes int64) {
	dir = filepath.Join(b.TempDir(), "src")
	data := make([]byte, 4<<20)
	rand.Read(data)
	for _, sub := range []string{"db", "many"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 64; i++ {
		data[0] = byte(i)
		if err := os.WriteFile(filepath.Join(dir, "db", strconv.Itoa(i)), data, 0o600); err != nil {
			b.Fatal(err)
		}
		bytes += int64(len(data))
	}
	for i := 0; i < 2000; i++ {
		if err := os.WriteFile(filepath.Join(dir, "many", strconv.Itoa(i)), data[i:i+1024], 0o644); err != nil {
			b.Fatal(err)
		}
		bytes += 1024
	}
	return dir, bytes
}

// BenchmarkTreeTransfer: a restore's data path between two endpoints over
// loopback: treestream.Send of the tree into a transfer answer, received
// and made by treestream.Receive, a new authenticated connection each time.
func BenchmarkTreeTransfer(b *testing.B) {
	klog.SetOutput(io.Discard)
	src, n := benchTree(b)
	k := newKey(b, "k1")
	h := HandlerFunc(func(ctx context.Context, req Request, ans *Answer) error {
		root, err := beneath.OpenRoot(src)
		if err != nil {
			return err
		}
		defer root.Close()
		if err := ans.Header(nil); err != nil {
			return err
		}
		_, err = treestream.Send(ctx, root, ans, treestream.SendOptions{})
		return err
	})
	addr := startServer(b, &Server{Keys: keyring(b, k), Handler: h})
	c := &Client{Keys: keyring(b, k)}
	out := b.TempDir()
	b.SetBytes(n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, body, err := c.Do(context.Background(), addr, Request{Op: "fetch"})
		if err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(out, strconv.Itoa(i))
		if _, err := treestream.Receive(context.Background(), body, dst, treestream.ReceiveOptions{}); err != nil {
			b.Fatal(err)
		}
		body.Close()
		b.StopTimer()
		os.RemoveAll(dst)
		b.StartTimer()
	}
}

// BenchmarkTreePlainTLSTar: the baseline, a plain encrypted copy of the
// same tree between the same endpoints: GNU tar (with --sparse, --xattrs,
// --acls, numeric owners, as one would copy a volume by hand) through a
// TLS 1.3 connection, extracted by tar on the other end.
func BenchmarkTreePlainTLSTar(b *testing.B) {
	if _, err := exec.LookPath("tar"); err != nil {
		b.Skip("no tar")
	}
	src, n := benchTree(b)
	cert, err := ephemeralCert()
	if err != nil {
		b.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLSConfig(cert))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				cmd := exec.Command("tar", "-C", src, "--sparse", "--xattrs", "--acls", "--numeric-owner", "-cf", "-", ".")
				cmd.Stdout = conn
				_ = cmd.Run()
			}()
		}
	}()
	out := b.TempDir()
	b.SetBytes(n)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			b.Fatal(err)
		}
		dst := filepath.Join(out, strconv.Itoa(i))
		if err := os.Mkdir(dst, 0o700); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("tar", "-C", dst, "--xattrs", "--acls", "--numeric-owner", "-xpf", "-")
		cmd.Stdin = conn
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("tar x: %v: %s", err, out)
		}
		conn.Close()
		b.StopTimer()
		os.RemoveAll(dst)
		b.StartTimer()
	}
}
