package driver

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// A create killed between the mkdir of its subdirectory and the chmod of
// mountPermissions: the retry finds the directory, and since the record
// says the driver was making it (it was not there before), applies the
// mode instead of taking the directory over as retained data.
func TestMountPermissionsAfterACreateKilledBetweenMkdirAndChmod(t *testing.T) {
	t.Parallel()
	e := newNFSEnv(t, 10*time.Second)
	var armed atomic.Bool
	armed.Store(true)
	dir := filepath.Join(e.export, "team-g")
	e.opts.BeforeFileOp = func(export, op string) error {
		if op == "create team-g" && armed.CompareAndSwap(true, false) {
			// What the killed attempt did: the mkdir, not the chmod.
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			return errors.New("killed between mkdir and chmod")
		}
		return nil
	}
	e.restart(t)
	params := nfsParamsFor(ParamSubDir, "team-g", ParamMountPermissions, "0777")
	if _, err := e.d.CreateVolume(ctx, nfsReq("pv-g", params)); err == nil {
		t.Fatal("the interrupted create succeeded")
	}
	if _, err := e.d.CreateVolume(ctx, nfsReq("pv-g", params)); err != nil {
		t.Fatalf("retry of the interrupted create: %v", err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o777 {
		t.Errorf("mode of the subdirectory the driver made, after a create interrupted before its chmod and retried: %04o, want mountPermissions 0777", got)
	}
}
