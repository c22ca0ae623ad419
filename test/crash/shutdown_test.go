package crash

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// SIGTERM in the middle of a burst of creates: calls already running finish
// and are answered, calls not yet started are refused (Unavailable), the
// process exits 0 and removes its socket, and after a restart the driver has
// exactly the volumes whose creation was acknowledged.
func TestGracefulShutdown(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	h := &harness{t: t, dir: dir, socket: filepath.Join(dir, "csi.sock"), bin: buildPlugin(t)}
	t.Cleanup(h.kill)
	h.start()

	const n = 400
	ids := make([]string, n)
	codesSeen := make([]codes.Code, n)
	var wg sync.WaitGroup
	startBurst := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-startBurst
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := h.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("burst-%d", i),
				VolumeCapabilities: []*csi.VolumeCapability{rwo}, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
			codesSeen[i] = status.Code(err)
			ids[i] = r.GetVolume().GetVolumeId()
		}(i)
	}
	close(startBurst)
	time.Sleep(20 * time.Millisecond)
	if err := h.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- h.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("driver did not exit within its drain timeout after SIGTERM")
	}
	h.cmd = nil
	wg.Wait()
	h.conn.Close()
	h.logFile.Close()
	if _, err := os.Stat(h.socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}

	acked := map[string]bool{}
	refused := 0
	for i, c := range codesSeen {
		switch c {
		case codes.OK:
			acked[ids[i]] = true
		case codes.Unavailable:
			refused++
		default:
			t.Errorf("create %d during shutdown: code %s, want OK or Unavailable", i, c)
		}
	}
	h.start()
	defer h.stop()
	listed := h.listAll(context.Background())
	if !sameSet(listed, acked) {
		t.Fatalf("after restart %d volumes, %d creates were acknowledged", len(listed), len(acked))
	}
	t.Logf("SIGTERM during %d creates: %d answered OK and exist after restart, %d refused", n, len(acked), refused)
	for id := range acked {
		if _, err := h.ctrl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Error(err)
		}
	}
}
