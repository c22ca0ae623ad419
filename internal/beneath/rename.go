package beneath

import (
	"errors"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// RenameNoReplace renames oldname (in olddirfd) to newname (in newdirfd)
// unless newname exists, which is EEXIST: renameat2 with RENAME_NOREPLACE.
// NFS clients refuse that flag (EINVAL, whatever the server), so where the
// kernel refuses it this checks that newname is absent and renames with
// plain renameat. The check and the rename are then two steps: callers
// rename only to names nobody else can create (in a directory of the
// driver's own, or a name no volume may have) or hold the lock for, so
// nothing else creates newname in between.
func RenameNoReplace(olddirfd int, oldname string, newdirfd int, newname string) error {
	var err error
	if refuseFlags.Load() > 0 {
		err = unix.EINVAL
	} else {
		err = unix.Renameat2(olddirfd, oldname, newdirfd, newname, unix.RENAME_NOREPLACE)
	}
	if !errors.Is(err, unix.EINVAL) {
		return err
	}
	var st unix.Stat_t
	switch serr := unix.Fstatat(newdirfd, newname, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case serr == nil:
		return unix.EEXIST
	case !errors.Is(serr, unix.ENOENT):
		return serr
	}
	return unix.Renameat(olddirfd, oldname, newdirfd, newname)
}

// refuseFlags > 0: RenameNoReplace takes the path of a filesystem that
// refuses renameat2 flags.
var refuseFlags atomic.Int32

// RefuseRenameFlags makes RenameNoReplace behave, until undo is called, as
// on a filesystem whose rename refuses every renameat2 flag, as the
// kernel's NFS client does. It is the seam for tests whose NFS exports are
// stood in by local directories (this kernel has no NFS client): with it
// they take the path every rename takes on real NFS.
func RefuseRenameFlags() (undo func()) {
	refuseFlags.Add(1)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			refuseFlags.Add(-1)
		}
	}
}
