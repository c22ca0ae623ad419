package quota

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
)

// From linux/btrfs.h and linux/btrfs_tree.h (numbers checked against the
// headers with a C compiler, and by TestIoctlLayouts for the struct sizes).
const (
	btrfsSuperMagic = 0x9123683e
	firstFreeObj    = 256 // inode number of every subvolume's root directory

	iocInoLookup   = 0xd0009412 // _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
	iocFsInfo      = 0x8400941f // _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)
	iocQuotaCtl    = 0xc0109428 // _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)
	iocQgroupLimit = 0x8030942b // _IOR(0x94, 43, struct btrfs_ioctl_qgroup_limit_args)
	iocRescanWait  = 0x0000942e // _IO(0x94, 46)

	quotaCtlEnable  = 1
	quotaTreeObjID  = 8
	qgroupInfoKey   = 242
	qgroupLimitKey  = 244
	limitMaxRfer    = 1 << 0
	inoLookupPath   = 4080
	fsInfoArgsBytes = 1024
)

type quotaCtlArgs struct {
	cmd, status uint64
}

// qgroupLimit is struct btrfs_qgroup_limit.
type qgroupLimit struct {
	flags, maxRfer, maxExcl, rsvRfer, rsvExcl uint64
}

type qgroupLimitArgs struct {
	qgroupID uint64
	lim      qgroupLimit
}

type inoLookupArgs struct {
	treeID, objectID uint64
	name             [inoLookupPath]byte
}

// ErrNotBtrfs is returned when a qgroup call is made on another filesystem.
var ErrNotBtrfs = errors.New("not on a btrfs filesystem")

// ErrQuotaDisabled is returned when quotas are not enabled on the btrfs
// filesystem, so no qgroup exists to read or limit.
var ErrQuotaDisabled = errors.New("btrfs quotas are not enabled on this filesystem")

// Qgroup is the accounting of one subvolume's level-0 qgroup (0/<subvolume
// ID>), as of the last transaction commit.
type Qgroup struct {
	// SubvolumeID is the subvolume's ID; the qgroup is 0/SubvolumeID.
	SubvolumeID uint64
	// Referenced is the bytes the subvolume reaches, shared or not: what a
	// user of the volume sees as its usage, and what the limit caps.
	Referenced uint64
	// Exclusive is the bytes no other subvolume (snapshot) shares.
	Exclusive uint64
	// MaxReferenced is the referenced-bytes limit; 0 when there is none.
	MaxReferenced uint64
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

func openDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

func checkBtrfs(fd int, path string) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if uint32(st.Type) != btrfsSuperMagic {
		return fmt.Errorf("%s: %w", path, ErrNotBtrfs)
	}
	return nil
}

// EnableQgroups turns on quota accounting for the btrfs filesystem that
// holds path and waits until the kernel has counted what is already there,
// so that the first limit set afterwards is enforced against true numbers.
// Enabling on a filesystem with quotas already on is not an error.
//
// Full qgroup accounting costs CPU at every transaction commit, and more
// with many snapshots; it is what makes a referenced-bytes limit possible.
func EnableQgroups(path string) error {
	fd, err := openDir(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := checkBtrfs(fd, path); err != nil {
		return err
	}
	args := quotaCtlArgs{cmd: quotaCtlEnable}
	if err := ioctl(fd, iocQuotaCtl, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("enable btrfs quotas on %s: %w", path, err)
	}
	// Enabling starts a rescan of existing data; until it ends the numbers
	// (and so the limits) are not trustworthy.
	if err := ioctl(fd, iocRescanWait, nil); err != nil {
		return fmt.Errorf("wait for btrfs quota rescan on %s: %w", path, err)
	}
	return nil
}

// QgroupsEnabled reports whether quota accounting is on for the btrfs
// filesystem that holds path.
func QgroupsEnabled(path string) (bool, error) {
	fd, err := openDir(path)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := checkBtrfs(fd, path); err != nil {
		return false, err
	}
	// The quota tree exists exactly while quotas are on; a search of a
	// missing tree is ENOENT.
	err = btrfs.SearchTree(fd, btrfs.SearchKey{TreeID: quotaTreeObjID, MaxObjectID: ^uint64(0), MaxType: ^uint32(0), MaxOffset: ^uint64(0)},
		1, func(btrfs.Item) bool { return false })
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("search btrfs quota tree on %s: %w", path, err)
	}
	return true, nil
}

// SubvolumeID returns the ID of the btrfs subvolume whose root is path. A
// path that is not a subvolume root is an error: its qgroup would be that of
// the enclosing subvolume, and a limit set through it would cap the wrong
// thing.
func SubvolumeID(path string) (uint64, error) {
	fd, err := openDir(path)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return subvolumeID(fd, path)
}

func subvolumeID(fd int, path string) (uint64, error) {
	if err := checkBtrfs(fd, path); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Ino != firstFreeObj {
		return 0, fmt.Errorf("%s is not the root of a btrfs subvolume", path)
	}
	// Tree 0 means "the tree of this fd"; the answer's treeID is its ID.
	args := inoLookupArgs{objectID: firstFreeObj}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("btrfs inode lookup on %s: %w", path, err)
	}
	return args.treeID, nil
}

// SetQgroupLimit caps the bytes the subvolume at path may reference. Writes
// that would go past it fail with EDQUOT ("disk quota exceeded"). A limit of
// 0 removes the cap. Quotas must be enabled (EnableQgroups).
func SetQgroupLimit(path string, maxReferenced uint64) error {
	fd, err := openDir(path)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd, path)
	if err != nil {
		return err
	}
	args := qgroupLimitArgs{qgroupID: id, lim: qgroupLimit{flags: limitMaxRfer, maxRfer: maxReferenced}}
	if maxReferenced == 0 {
		// The kernel clears a limit when given all ones (its CLEAR_VALUE);
		// a limit of 0 with the flag set would refuse every write.
		args.lim.maxRfer = ^uint64(0)
	}
	err = ioctl(fd, iocQgroupLimit, unsafe.Pointer(&args))
	if errors.Is(err, unix.ENOTCONN) {
		return fmt.Errorf("limit qgroup 0/%d at %s: %w", id, path, ErrQuotaDisabled)
	}
	if err != nil {
		return fmt.Errorf("limit qgroup 0/%d at %s to %d bytes: %w", id, path, maxReferenced, err)
	}
	return nil
}

// QgroupUsage returns the accounting of the subvolume at path. The kernel
// updates it at each transaction commit, so it lags the last writes by up to
// the commit interval (30 s by default, or until a sync). It reads sysfs
// when the kernel publishes qgroups there (5.9 and later) and the quota tree
// otherwise.
func QgroupUsage(path string) (*Qgroup, error) {
	fd, err := openDir(path)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd, path)
	if err != nil {
		return nil, err
	}
	fsid, err := fsID(fd, path)
	if err != nil {
		return nil, err
	}
	q, err := qgroupFromSysfs(fsid, id)
	if err == nil {
		return q, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	return qgroupFromTree(fd, path, id)
}

// fsID returns the filesystem's UUID as sysfs names its directory.
func fsID(fd int, path string) (string, error) {
	var args [fsInfoArgsBytes]byte
	if err := ioctl(fd, iocFsInfo, unsafe.Pointer(&args)); err != nil {
		return "", fmt.Errorf("btrfs fs info on %s: %w", path, err)
	}
	u := args[16:32]
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16]), nil
}

// sysfsBtrfs is where the kernel shows each btrfs filesystem's qgroups.
const sysfsBtrfs = "/sys/fs/btrfs"

func qgroupFromSysfs(fsid string, id uint64) (*Qgroup, error) {
	dir := filepath.Join(sysfsBtrfs, fsid, "qgroups", "0_"+strconv.FormatUint(id, 10))
	if _, err := os.Stat(dir); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// No qgroups directory at all: quotas are off, or this kernel
			// predates sysfs qgroups; the tree search tells which.
			return nil, err
		}
		return nil, fmt.Errorf("qgroup 0/%d in sysfs: %w", id, err)
	}
	q := &Qgroup{SubvolumeID: id}
	var limitFlags uint64
	for _, f := range []struct {
		name string
		dst  *uint64
	}{
		{"referenced", &q.Referenced},
		{"exclusive", &q.Exclusive},
		{"max_referenced", &q.MaxReferenced},
		{"limit_flags", &limitFlags},
	} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return nil, fmt.Errorf("qgroup 0/%d: %w", id, err)
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("qgroup 0/%d %s %q: %w", id, f.name, b, err)
		}
		*f.dst = v
	}
	if limitFlags&limitMaxRfer == 0 {
		q.MaxReferenced = 0
	}
	return q, nil
}

// qgroupFromTree reads the qgroup's info and limit items from the quota
// tree. Each search asks for one exact key: a range over (objectid, type,
// offset) is lexicographic and would return other qgroups' items too.
func qgroupFromTree(fd int, path string, id uint64) (*Qgroup, error) {
	info, err := searchItem(fd, quotaTreeObjID, 0, qgroupInfoKey, id)
	if errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("qgroup 0/%d at %s: %w", id, path, ErrQuotaDisabled)
	}
	if err != nil {
		return nil, fmt.Errorf("qgroup 0/%d info at %s: %w", id, path, err)
	}
	if len(info) < 40 {
		return nil, fmt.Errorf("qgroup 0/%d at %s: no info item (is the subvolume new since the last commit?)", id, path)
	}
	le := binary.LittleEndian
	q := &Qgroup{SubvolumeID: id, Referenced: le.Uint64(info[8:]), Exclusive: le.Uint64(info[24:])}
	lim, err := searchItem(fd, quotaTreeObjID, 0, qgroupLimitKey, id)
	if err != nil {
		return nil, fmt.Errorf("qgroup 0/%d limit at %s: %w", id, path, err)
	}
	if len(lim) >= 16 && le.Uint64(lim[0:])&limitMaxRfer != 0 {
		q.MaxReferenced = le.Uint64(lim[8:])
	}
	return q, nil
}

// searchItem returns the data of the item with exactly this key in tree, or
// nil when there is none.
func searchItem(fd int, tree, objectID uint64, typ uint32, offset uint64) ([]byte, error) {
	var data []byte
	k := btrfs.SearchKey{TreeID: tree, MinObjectID: objectID, MaxObjectID: objectID,
		MinType: typ, MaxType: typ, MinOffset: offset, MaxOffset: offset}
	err := btrfs.SearchTree(fd, k, 1, func(it btrfs.Item) bool {
		if it.ObjectID == objectID && it.Type == typ && it.Offset == offset {
			data = append([]byte(nil), it.Data...)
		}
		return false
	})
	return data, err
}

// rootRefKey is BTRFS_ROOT_REF_KEY: an item in the root tree for each
// subvolume made inside another, keyed by the parent's subvolume ID.
const (
	rootTreeObjID = 1
	rootRefKey    = 156
)

// HasNestedSubvolumes reports whether the btrfs subvolume at path holds
// other subvolumes. A snapshot of a subvolume leaves nested ones out (they
// come out as empty directories), so a copy of such a volume must not be a
// snapshot: a pod can make a subvolume inside its own volume.
func HasNestedSubvolumes(path string) (bool, error) {
	fd, err := openDir(path)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd, path)
	if err != nil {
		return false, err
	}
	found := false
	k := btrfs.SearchKey{TreeID: rootTreeObjID, MinObjectID: id, MaxObjectID: id,
		MinType: rootRefKey, MaxType: rootRefKey, MaxOffset: ^uint64(0)}
	if err := btrfs.SearchTree(fd, k, 1, func(btrfs.Item) bool { found = true; return false }); err != nil {
		return false, fmt.Errorf("search for subvolumes inside %s: %w", path, err)
	}
	return found, nil
}
