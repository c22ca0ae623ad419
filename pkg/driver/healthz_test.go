package driver

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// /healthz (and livenessprobe's, from Probe) is on the pod's address, where anyone on the pod network can
// read it: it says whether the driver is ready, and which check failed,
// but never a path on the host or an error's text.
func TestHealthzShowsNoHostPaths(t *testing.T) {
	testutil.RequireRoot(t)
	e := newEnv(t)
	get := func(method string) (int, string) {
		rec := httptest.NewRecorder()
		e.d.HealthzHandler().ServeHTTP(rec, httptest.NewRequest(method, "/healthz", nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get(http.MethodGet); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Fatalf("healthy driver: %d %q", code, body)
	}
	if code, _ := get(http.MethodPost); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", code)
	}
	// The data directory stops taking writes: a read-only bind over it.
	if err := unix.Mount(e.dataDir, e.dataDir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(e.dataDir, unix.MNT_DETACH) })
	if err := unix.Mount("", e.dataDir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	code, body := get(http.MethodGet)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("read-only data directory: %d %q, want 503", code, body)
	}
	if !strings.Contains(body, "data directory") {
		t.Errorf("answer %q does not say which check failed", body)
	}
	// livenessprobe puts Probe's message into its own /healthz answer.
	_, err := e.d.Probe(ctx, &csi.ProbeRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Probe on a read-only data directory: %v, want FailedPrecondition", err)
	}
	for _, answer := range []string{body, status.Convert(err).Message()} {
		for _, secret := range []string{e.dir, "/", "read-only file system"} {
			if strings.Contains(answer, secret) {
				t.Errorf("answer %q shows %q", answer, secret)
			}
		}
	}
}
