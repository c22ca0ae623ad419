package beneath

import (
	"errors"

	"golang.org/x/sys/unix"
)

// RenameNoReplace renames oldname (in olddirfd) to newname (in newdirfd)
// unless newname exists, which is EEXIST: renameat2 with RENAME_NOREPLACE.
// NFS clients refuse that flag (EINVAL, whatever the server), so where the
// kernel refuses it this checks that newname is absent and renames with
// plain renameat. The check and the rename are then two steps: callers
// rename only to names they made unique or hold the lock for, so nothing
// else creates newname in between.
func RenameNoReplace(olddirfd int, oldname string, newdirfd int, newname string) error {
	err := unix.Renameat2(olddirfd, oldname, newdirfd, newname, unix.RENAME_NOREPLACE)
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
