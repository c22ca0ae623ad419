package beneath

import (
	"errors"

	"golang.org/x/sys/unix"
)

// RenameNoReplace renames the entry name of d to newName in to unless
// newName exists, which is EEXIST: renameat2 with RENAME_NOREPLACE. NFS
// clients refuse that flag (EINVAL, whatever the server), so where the
// kernel refuses it (or d's root was opened with RefuseRenameFlags) this
// checks that newName is absent and renames with plain renameat. The check
// and the rename are then two steps: callers rename only to names nobody
// else can create (in a directory of the driver's own, or a name no volume
// may have) or hold the lock for, so nothing else creates newName in
// between.
func (d *Dir) RenameNoReplace(name string, to *Dir, newName string) error {
	return renameNoReplace(d.fd, name, to.fd, newName, d.opts.RefuseRenameFlags)
}

func renameNoReplace(olddirfd int, oldname string, newdirfd int, newname string, refuseFlags bool) error {
	var err error
	if refuseFlags {
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
