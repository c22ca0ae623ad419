package quota

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// From linux/quota.h, linux/dqblk_xfs.h and linux/fs.h.
const (
	ext4SuperMagic = 0xef53
	xfsSuperMagic  = 0x58465342

	prjQuota    = 2
	qXGetQuota  = 0x5803
	qXSetQLim   = 0x5804
	qXGetQStatV = 0x5808

	fsQuotaPDQAcct = 0x10 // FS_QUOTA_PDQ_ACCT: project usage is counted
	fsQuotaPDQEnfd = 0x20 // FS_QUOTA_PDQ_ENFD: project limits are enforced
	fsQStatVVer1   = 1
	fsDQuotVersion = 1
	fsProjQuota    = 2      // FS_PROJ_QUOTA in fs_disk_quota.d_flags
	fsDQBSoft      = 1 << 2 // FS_DQ_BSOFT
	fsDQBHard      = 1 << 3 // FS_DQ_BHARD

	fsIocGetXattr      = 0x801c581f // FS_IOC_FSGETXATTR
	fsIocSetXattr      = 0x401c5820 // FS_IOC_FSSETXATTR
	fsXflagProjInherit = 0x00000200 // FS_XFLAG_PROJINHERIT

	basicBlock = 512 // fs_disk_quota counts in 512-byte blocks
)

func qcmd(cmd, typ uint32) uint32 { return cmd<<8 | typ&0xff }

// fsxattr is struct fsxattr.
type fsxattr struct {
	xflags, extsize, nextents, projid, cowextsize uint32
	_                                             [8]byte
}

// fsQfilestatv is struct fs_qfilestatv.
type fsQfilestatv struct {
	ino      uint64
	nblks    uint64
	nextents uint32
	_        uint32
}

// fsQuotaStatv is struct fs_quota_statv.
type fsQuotaStatv struct {
	version                            int8
	_                                  uint8
	flags                              uint16
	incoredqs                          uint32
	uquota, gquota, pquota             fsQfilestatv
	btimelimit, itimelimit, rtbtimelim int32
	bwarnlimit, iwarnlimit, rtbwarnlim uint16
	_                                  uint16
	_                                  uint32
	_                                  [7]uint64
}

// fsDiskQuota is struct fs_disk_quota.
type fsDiskQuota struct {
	version      int8
	flags        int8
	fieldmask    uint16
	id           uint32
	blkHardlimit uint64
	blkSoftlimit uint64
	inoHardlimit uint64
	inoSoftlimit uint64
	bcount       uint64
	icount       uint64
	itimer       int32
	btimer       int32
	iwarns       uint16
	bwarns       uint16
	itimerHi     int8
	btimerHi     int8
	rtbtimerHi   int8
	_            int8
	rtbHardlimit uint64
	rtbSoftlimit uint64
	rtbcount     uint64
	rtbtimer     int32
	rtbwarns     uint16
	_            int16
	_            [8]byte
}

// ErrNotSupported is matched (errors.Is) by every error that says project
// quotas cannot enforce a limit on a filesystem; the error's text says why.
var ErrNotSupported = errors.New("project quotas are not available")

// NotSupportedError says why project quotas cannot enforce a limit at Path.
type NotSupportedError struct {
	Path string
	// FS is the filesystem type ("ext4", "xfs", or the statfs magic).
	FS string
	// Kernel is true when the running kernel cannot do it whatever the
	// filesystem's features or mount options; false when the filesystem
	// could, made or mounted differently.
	Kernel bool
	Reason string
}

func (e *NotSupportedError) Error() string {
	where := "not enabled on this filesystem"
	if e.Kernel {
		where = "not supported by this kernel"
	}
	return fmt.Sprintf("project quotas on %s (%s): %s: %s", e.Path, e.FS, where, e.Reason)
}

// Is makes errors.Is(err, ErrNotSupported) true.
func (e *NotSupportedError) Is(target error) bool { return target == ErrNotSupported }

// quotactlFd is quotactl_fd(2) (Linux 5.14): quotactl on the filesystem of
// an open file, so no block device path is needed.
func quotactlFd(fd int, cmd uint32, id uint32, addr unsafe.Pointer) error {
	if _, _, errno := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(fd), uintptr(cmd), uintptr(id), uintptr(addr), 0, 0); errno != 0 {
		return errno
	}
	return nil
}

// ProjectQuotaSupport says whether the filesystem holding path enforces
// project quota limits now. It returns nil when it does, and otherwise a
// *NotSupportedError that says whether the kernel or the filesystem is
// the reason. Run it at start-up on the data directory, so that a driver
// never sets limits that silently do nothing.
func ProjectQuotaSupport(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	fs, err := projectFS(fd, path)
	if err != nil {
		return err
	}
	st := fsQuotaStatv{version: fsQStatVVer1}
	err = quotactlFd(fd, qcmd(qXGetQStatV, prjQuota), 0, unsafe.Pointer(&st))
	switch {
	case errors.Is(err, unix.ENOSYS):
		return noQuotaops(path, fs)
	case errors.Is(err, unix.ESRCH):
		// No quota of this type is on: same as flags without ACCT.
		st.flags = 0
	case err != nil:
		return fmt.Errorf("quotactl Q_XGETQSTATV on %s: %w", path, err)
	}
	if st.flags&fsQuotaPDQEnfd != 0 {
		return nil
	}
	if st.flags&fsQuotaPDQAcct != 0 {
		return &NotSupportedError{Path: path, FS: fs, Reason: "project usage is counted but limits are not enforced (mounted with pqnoenforce?); remount with prjquota"}
	}
	return notActive(path, fs)
}

// projectFS returns the name of the filesystem at fd, or a
// NotSupportedError when it is not one that has project quotas.
func projectFS(fd int, path string) (string, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return "", fmt.Errorf("statfs %s: %w", path, err)
	}
	switch uint32(sfs.Type) {
	case ext4SuperMagic:
		return "ext4", nil
	case xfsSuperMagic:
		return "xfs", nil
	case btrfsSuperMagic:
		return "", &NotSupportedError{Path: path, FS: "btrfs", Reason: "btrfs has no project quotas; limit subvolumes with qgroups"}
	}
	return "", &NotSupportedError{Path: path, FS: fmt.Sprintf("filesystem type %#x", uint32(sfs.Type)), Reason: "only ext4 and xfs have project quotas"}
}

// noQuotaops explains ENOSYS from quotactl: the kernel has no quotactl, or
// the filesystem registered no quota operations (xfs built without quota).
func noQuotaops(path, fs string) error {
	reason := "quotactl_fd returned ENOSYS"
	switch {
	case fs == "ext4" && kernelConfig("CONFIG_QFMT_V2") == "n":
		return notActive(path, fs)
	case kernelConfig("CONFIG_QUOTACTL") == "n":
		reason = "the kernel has no quotactl (CONFIG_QUOTACTL is not set)"
	case fs == "xfs" && kernelConfig("CONFIG_XFS_QUOTA") == "n":
		reason = "xfs was built without quota support (CONFIG_XFS_QUOTA is not set), so -o prjquota mounts fail"
	case fs == "xfs":
		reason = "xfs offers no quota operations (a kernel without CONFIG_XFS_QUOTA)"
	}
	return &NotSupportedError{Path: path, FS: fs, Kernel: true, Reason: reason}
}

// notActive explains a filesystem with quota operations but no project
// accounting.
func notActive(path, fs string) error {
	if fs == "ext4" && kernelConfig("CONFIG_QFMT_V2") == "n" {
		return &NotSupportedError{Path: path, FS: fs, Kernel: true,
			Reason: "ext4 keeps quotas in quota files that need CONFIG_QFMT_V2, which is not set, so an ext4 made with -O quota,project does not mount"}
	}
	if fs == "ext4" {
		return &NotSupportedError{Path: path, FS: fs, Reason: "project quota is off: make the filesystem with -O quota,project (or tune2fs -O quota,project while unmounted)"}
	}
	return &NotSupportedError{Path: path, FS: fs, Reason: "project quota is off: mount with -o prjquota"}
}

var (
	configOnce sync.Once
	config     map[string]string
)

// kernelConfig returns "y", "m", "n" (for "is not set") or "" (unknown)
// for a kernel option, from /proc/config.gz when the kernel provides it. It
// only refines error messages; detection never depends on it.
func kernelConfig(name string) string {
	configOnce.Do(func() {
		config = map[string]string{}
		f, err := os.Open("/proc/config.gz")
		if err != nil {
			return
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return
		}
		sc := bufio.NewScanner(zr)
		for sc.Scan() {
			line := sc.Text()
			if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") {
				config[k] = v
			} else if k, ok := strings.CutPrefix(line, "# "); ok {
				if k, ok := strings.CutSuffix(k, " is not set"); ok {
					config[k] = "n"
				}
			}
		}
	})
	return config[name]
}

// SetProjectID gives dir (or a regular file) the project ID id and marks a
// directory so that everything
// created inside inherits the ID: the whole tree below a volume's directory
// is then counted against the volume's project. Files already inside keep
// their old ID (a new volume's directory is empty).
//
// xfs stores project IDs whether or not quotas are on; ext4 only with the
// project feature (EOPNOTSUPP otherwise).
func SetProjectID(dir string, id uint32) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	var fa fsxattr
	if err := ioctl(fd, fsIocGetXattr, unsafe.Pointer(&fa)); err != nil {
		return fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", dir, err)
	}
	fa.projid = id
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		fa.xflags |= fsXflagProjInherit // only directories take it
	}
	if err := ioctl(fd, fsIocSetXattr, unsafe.Pointer(&fa)); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("set project ID %d on %s: the filesystem stores no project IDs (ext4 needs -O project): %w", id, dir, err)
		}
		return fmt.Errorf("set project ID %d on %s: %w", id, dir, err)
	}
	return nil
}

// ProjectID returns the project ID of path.
func ProjectID(path string) (uint32, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var fa fsxattr
	if err := ioctl(fd, fsIocGetXattr, unsafe.Pointer(&fa)); err != nil {
		return 0, fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", path, err)
	}
	return fa.projid, nil
}

// SetProjectLimit sets the hard (and soft) block limit of project id on the
// filesystem holding path, in bytes rounded up to 512-byte blocks; 0 removes
// the limit. Writes past it fail with EDQUOT.
//
// Not tested on the development machine: its kernel has no ext4 or xfs
// quota support, and there this returns an error matching ErrNotSupported.
func SetProjectLimit(path string, id uint32, bytes uint64) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	fs, err := projectFS(fd, path)
	if err != nil {
		return err
	}
	blocks := (bytes + basicBlock - 1) / basicBlock
	dq := fsDiskQuota{version: fsDQuotVersion, flags: fsProjQuota, fieldmask: fsDQBSoft | fsDQBHard,
		id: id, blkHardlimit: blocks, blkSoftlimit: blocks}
	err = quotactlFd(fd, qcmd(qXSetQLim, prjQuota), id, unsafe.Pointer(&dq))
	switch {
	case errors.Is(err, unix.ENOSYS):
		return noQuotaops(path, fs)
	case errors.Is(err, unix.ESRCH):
		return notActive(path, fs)
	case err != nil:
		return fmt.Errorf("set project %d limit to %d bytes on %s: %w", id, bytes, path, err)
	}
	return nil
}

// ProjectUsage returns the bytes project id uses on the filesystem holding
// path and its hard limit (0 = none), as the quota subsystem counts them:
// at once, without walking the tree.
//
// Not tested on the development machine (see SetProjectLimit).
func ProjectUsage(path string, id uint32) (used, limit uint64, err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	fs, err := projectFS(fd, path)
	if err != nil {
		return 0, 0, err
	}
	var dq fsDiskQuota
	err = quotactlFd(fd, qcmd(qXGetQuota, prjQuota), id, unsafe.Pointer(&dq))
	switch {
	case errors.Is(err, unix.ENOSYS):
		return 0, 0, noQuotaops(path, fs)
	case errors.Is(err, unix.ESRCH):
		return 0, 0, notActive(path, fs)
	case errors.Is(err, unix.ENOENT):
		return 0, 0, nil // no usage and no limit recorded for this ID yet
	case err != nil:
		return 0, 0, fmt.Errorf("read project %d quota on %s: %w", id, path, err)
	}
	return dq.bcount * basicBlock, dq.blkHardlimit * basicBlock, nil
}
