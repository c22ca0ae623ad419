package treestream

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
)

// BenchmarkSendReceive sends a tree of 256 MiB of data (four 48 MiB files
// and 1024 files of 64 KiB) through an io.Pipe into a Receive on the same
// filesystem; MB/s is of file data:
//
//	go test -run '^$' -bench SendReceive -benchtime 3x ./internal/treestream/
func BenchmarkSendReceive(b *testing.B) {
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "small"), 0o755); err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 48<<20)
	rand.Read(data)
	for i := 0; i < 4; i++ {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprint("big", i)), data, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 1024; i++ {
		if err := os.WriteFile(filepath.Join(src, "small", fmt.Sprint(i)), data[i<<10:i<<10+64<<10], 0o644); err != nil {
			b.Fatal(err)
		}
	}
	root, err := beneath.OpenRoot(src)
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	b.SetBytes(256 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(dir, fmt.Sprint("dst", i))
		pr, pw := io.Pipe()
		sendErr := make(chan error, 1)
		go func() {
			_, err := Send(context.Background(), root, pw, SendOptions{})
			pw.CloseWithError(err)
			sendErr <- err
		}()
		st, err := Receive(context.Background(), pr, dst, ReceiveOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := <-sendErr; err != nil {
			b.Fatal(err)
		}
		if st.DataBytes != 256<<20 {
			b.Fatalf("stats %+v", st)
		}
		b.StopTimer()
		if err := os.RemoveAll(dst); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
