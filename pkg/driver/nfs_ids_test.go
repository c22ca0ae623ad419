package driver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
)

// A new NFS record never replaces another: a drawn key already on the export
// is drawn again, and a random source that keeps repeating is an error.
func TestDrawUnusedKey(t *testing.T) {
	taken := map[string]bool{"k0": true, "k1": true}
	lookup := func(_ context.Context, key string) error {
		if taken[key] {
			return nil
		}
		return fmt.Errorf("volumes/%s.json: %w", key, nfs.ErrNotFound)
	}
	n := 0
	draw := func() (string, string, error) {
		k := fmt.Sprintf("k%d", n)
		n++
		return "id-" + k, k, nil
	}
	id, key, err := drawUnusedKey(context.Background(), "volume", draw, lookup)
	if err != nil || id != "id-k2" || key != "k2" {
		t.Fatalf("drawUnusedKey = %q, %q, %v; want the first free key k2", id, key, err)
	}

	same := func() (string, string, error) { return "id-k0", "k0", nil }
	_, _, err = drawUnusedKey(context.Background(), "volume", same, lookup)
	wantCode(t, err, codes.Internal)

	broken := errors.New("stale file handle")
	_, _, err = drawUnusedKey(context.Background(), "snapshot", draw, func(context.Context, string) error { return broken })
	if err == nil || status.Code(err) == codes.OK || !strings.Contains(err.Error(), "stale file handle") {
		t.Fatalf("a failing lookup gave %v", err)
	}
}
