package hostpath

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/quota"
)

// What holds a volume to its size.
const (
	// EnforceQgroup: a directory volume that is a btrfs subvolume with a
	// qgroup limit (writes past it fail with EDQUOT), as earlier versions
	// made them. It does not hold against the pod: see BtrfsNotHeld. Such
	// volumes keep their limit (raised when they grow); new ones get none.
	EnforceQgroup = "btrfs-qgroup"
	// EnforceProject: a directory volume with an ext4/xfs project quota.
	EnforceProject = "project-quota"
	// EnforceImage: a filesystem image or a block device file of the
	// volume's size (writes past it fail with ENOSPC).
	EnforceImage = "image"
	// EnforceNone: nothing; the volume shares the data filesystem and can
	// outgrow its capacity.
	EnforceNone = "none"
)

// Options tune a Backend.
type Options struct {
	// FreezeMarkers is the directory where a copy that freezes an image's
	// filesystem leaves a marker while it is frozen (imagefs.ThawMarked).
	FreezeMarkers string
	// ProjectQuotas holds directory volumes with ext4/xfs project quotas
	// where the kernel has them. Off by default: a project quota holds
	// only against pods in their own user namespace (hostUsers: false),
	// because a file's owner may change its project ID from the host's
	// user namespace (see ProjectNotHeld).
	ProjectQuotas bool
	// SyncSeen, when set (tests only), is told of every sync before it is
	// made: the durability of data before its record is otherwise
	// invisible to a test that does not cut the power.
	SyncSeen func(kind, path string)
}

// ProjectNotHeld says why a project quota does not hold a directory volume
// against the pod inside it: FS_IOC_FSSETXATTR lets a file's owner set the
// file's project ID (the kernel refuses the change only from a user
// namespace other than the host's), so a pod that owns its files moves
// them to a project without a limit and writes on.
const ProjectNotHeld = "a project quota does not hold a directory volume against a pod that runs in the host's user namespace: the owner of a file may change its project ID (FS_IOC_FSSETXATTR); use StorageClass parameter layout: image for sizes that hold, or --project-quotas where every pod runs with hostUsers: false"

// BtrfsNotHeld says why nothing holds a directory volume on btrfs. A qgroup
// limit on the volume's subvolume counts only that subvolume, and any user
// who can write a directory can make a subvolume inside it (btrfs
// subvolume create; a snapshot of a subvolume they own) whose data no limit
// of the volume counts. Simple quotas (btrfs quota enable --simple) put a
// nested subvolume into its parent's higher-level qgroups, but only when
// its maker passes no qgroup inheritance of its own: the kernel takes an
// unprivileged maker's inheritance, an empty one or one naming another
// volume's qgroup (checked on Linux 6.18), so a level-1 qgroup per volume
// would neither hold nor keep one volume's data out of another's count.
// No mount option stops unprivileged subvolume creation
// (user_subvol_rm_allowed is about removal).
const BtrfsNotHeld = "on btrfs a pod can make subvolumes inside its volume (any process that can write a directory may), and their data is outside every qgroup limit the volume has; use StorageClass parameter layout: image for sizes that hold"

// limitProbeSize is the limit the start-up self-test sets; it then writes
// four times as much and expects the write to be refused.
const limitProbeSize = 256 << 10

// probeDirectoryLimits finds what can hold a directory volume to its size on
// this data directory, and proves it by writing past a limit: a limit that
// silently does nothing (quotas set from the wrong mount namespace, a kernel
// without the feature) is worse than none.
func (b *Backend) probeDirectoryLimits(opts Options) {
	b.dirLimit, b.dirLimitWhy = EnforceNone, ""
	b.removeStaleProbes()
	b.reflink = b.probeReflink()
	if b.btrfs {
		b.dirLimitWhy = BtrfsNotHeld
		return
	}
	if err := quota.ProjectQuotaSupport(b.root); err != nil {
		b.dirLimitWhy = err.Error()
		return
	}
	if !opts.ProjectQuotas {
		b.dirLimitWhy = ProjectNotHeld
		return
	}
	if err := b.selfTestProject(); err != nil {
		b.dirLimitWhy = "project quotas are reported but do not hold: " + err.Error()
		return
	}
	b.dirLimit = EnforceProject
}

const probePrefix = ".probe-limit-"

func (b *Backend) removeStaleProbes() {
	names, _ := listDir(b.root)
	for _, n := range names {
		if strings.HasPrefix(n, probePrefix) {
			_ = b.remove(filepath.Join(b.root, n))
		}
	}
}

// probeProjectID is the project the self-test uses; volumes get IDs from
// ProjectIDBase up.
const probeProjectID = ProjectIDBase - 1

// ProjectIDBase is the first project ID given to a volume: far above the
// small IDs administrators number their own projects with.
const ProjectIDBase = 1 << 30

func (b *Backend) selfTestProject() error {
	p := filepath.Join(b.root, probePrefix+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(p, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(p)
	defer quota.SetProjectLimit(b.root, probeProjectID, 0)
	if err := quota.SetProjectID(p, probeProjectID); err != nil {
		return err
	}
	if err := quota.SetProjectLimit(b.root, probeProjectID, limitProbeSize); err != nil {
		return err
	}
	return withoutCapability(unix.CAP_SYS_RESOURCE, func() error { return writePastLimit(p) })
}

// writePastLimit writes four times the probe limit into dir and succeeds
// only if the kernel refuses it with EDQUOT or ENOSPC. Callers run it
// without CAP_SYS_RESOURCE, as a tenant writes (withoutCapability).
func writePastLimit(dir string) error {
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		return err
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for written := 0; written < 4*limitProbeSize; written += len(chunk) {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC) {
				return nil
			}
			return err
		}
	}
	if err := f.Sync(); errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC) {
		return nil
	}
	return fmt.Errorf("wrote %d bytes past a limit of %d: the limit does not hold", 4*limitProbeSize, limitProbeSize)
}

// probeReflink says whether the data filesystem shares blocks between files
// (FICLONE): then a copy of a file is one point in time.
func (b *Backend) probeReflink() bool {
	base := filepath.Join(b.root, probePrefix+"reflink-"+strconv.Itoa(os.Getpid()))
	defer os.Remove(base + "-a")
	defer os.Remove(base + "-b")
	if err := os.WriteFile(base+"-a", make([]byte, 4096), 0o600); err != nil {
		return false
	}
	src, err := os.Open(base + "-a")
	if err != nil {
		return false
	}
	defer src.Close()
	dst, err := os.OpenFile(base+"-b", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false
	}
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil
}

// CanReflink says whether the data filesystem can share blocks between
// files, so that copying an image or a block volume's file is atomic.
func (b *Backend) CanReflink() bool { return b.reflink }

// DirectoryLimit says what holds a directory volume made now to its size
// (EnforceQgroup, EnforceProject or EnforceNone) and, for none, why.
func (b *Backend) DirectoryLimit() (mechanism, why string) { return b.dirLimit, b.dirLimitWhy }

// SetDirectoryLimit holds the directory volume id to capacity bytes with
// mechanism (what DirectoryLimit said when it was made). projectID is its
// project for EnforceProject. A volume restored or cloned from a copy gets
// the project ID on every entry it holds.
func (b *Backend) SetDirectoryLimit(id, mechanism string, capacity int64, projectID uint32) error {
	p := b.Path(id)
	switch mechanism {
	case EnforceQgroup:
		err := quota.SetQgroupLimit(p, uint64(capacity))
		if errors.Is(err, quota.ErrQuotaDisabled) {
			// An administrator turned btrfs quotas off: the volume has
			// no limit left to raise.
			return nil
		}
		if err != nil {
			return fmt.Errorf("set the qgroup limit of volume %s: %w", id, err)
		}
	case EnforceProject:
		if err := setProjectTree(p, projectID); err != nil {
			return fmt.Errorf("set the project of volume %s: %w", id, err)
		}
		if err := quota.SetProjectLimit(b.root, projectID, uint64(capacity)); err != nil {
			return fmt.Errorf("set the project limit of volume %s: %w", id, err)
		}
	case EnforceNone:
		if b.btrfs {
			return clearInheritedQgroupLimit(p)
		}
	}
	return nil
}

// clearInheritedQgroupLimit removes the qgroup limit of the subvolume at p,
// if it has one: with quotas on, a btrfs snapshot takes its source's limit,
// so a volume restored or cloned from one made with a qgroup limit (by an
// earlier version) would be capped at its source's size and not grow with
// its own capacity.
func clearInheritedQgroupLimit(p string) error {
	if sub, err := btrfs.IsSubvolume(p); err != nil || !sub {
		return err
	}
	if on, err := quota.QgroupsEnabled(p); err != nil || !on {
		return err
	}
	if q, err := quota.QgroupUsage(p); err == nil && q.MaxReferenced == 0 {
		return nil
	}
	if err := quota.SetQgroupLimit(p, 0); err != nil && !errors.Is(err, quota.ErrQuotaDisabled) {
		return fmt.Errorf("clear the qgroup limit a snapshot inherited: %w", err)
	}
	return nil
}

// DirectoryUsage reads what an enforced directory volume uses from its
// limit's own accounting (no walk of the tree): used bytes and the limit.
func (b *Backend) DirectoryUsage(id, mechanism string, projectID uint32) (used, limit int64, err error) {
	switch mechanism {
	case EnforceQgroup:
		q, err := quota.QgroupUsage(b.Path(id))
		if errors.Is(err, quota.ErrQuotaDisabled) {
			// Quotas turned off since: no limit, and no accounting.
			u, err := b.Usage(id)
			return u.Bytes, 0, err
		}
		if err != nil {
			return 0, 0, err
		}
		return int64(q.Referenced), int64(q.MaxReferenced), nil
	case EnforceProject:
		u, l, err := quota.ProjectUsage(b.root, projectID)
		return int64(u), int64(l), err
	}
	return 0, 0, fmt.Errorf("volume %s has no limit of its own", id)
}

// setProjectTree gives every directory and regular file under root (a tree
// this backend made: a new volume or a copy in partial/) the project id,
// directories with inheritance so what is made later follows.
func setProjectTree(root string, id uint32) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil // symlinks and special files hold no data blocks
		}
		return quota.SetProjectID(p, id)
	})
}
