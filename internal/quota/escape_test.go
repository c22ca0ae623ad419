package quota

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/btrfs"
	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// From linux/btrfs.h.
const (
	iocSubvolCreateV2   = 0x50009418 // _IOW(0x94, 24, struct btrfs_ioctl_vol_args_v2)
	iocQgroupAssign     = 0x40189429 // _IOW(0x94, 41, struct btrfs_ioctl_qgroup_assign_args)
	iocQgroupCreate     = 0x4010942a // _IOW(0x94, 42, struct btrfs_ioctl_qgroup_create_args)
	iocQuotaRescan      = 0x4040942c // _IOW(0x94, 44, struct btrfs_ioctl_quota_rescan_args)
	quotaCtlEnableSimpl = 4          // BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA
	subvolQgroupInherit = 1 << 2     // BTRFS_SUBVOL_QGROUP_INHERIT
	nobody              = 65534
)

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 with the qgroup inheritance.
type volArgsV2 struct {
	fd, transid, flags uint64
	size               uint64
	inherit            uintptr
	_                  [2]uint64
	name               [4040]byte
}

func level1(n uint64) uint64 { return 1<<48 | n }

// asNobody runs f on an OS thread whose user and group IDs are all 65534,
// with no supplementary groups and so no capabilities: an unprivileged
// process, as in a pod. Credentials are per thread in Linux (the raw
// system calls change this thread's only), so the thread is locked and
// thrown away afterwards.
func asNobody(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		for _, c := range []struct {
			nr         uintptr
			a1, a2, a3 uintptr
		}{{unix.SYS_SETGROUPS, 0, 0, 0}, {unix.SYS_SETRESGID, nobody, nobody, nobody}, {unix.SYS_SETRESUID, nobody, nobody, nobody}} {
			if _, _, e := unix.RawSyscall(c.nr, c.a1, c.a2, c.a3); e != 0 {
				errc <- fmt.Errorf("become uid %d on this thread: %w", nobody, e)
				return
			}
		}
		errc <- f()
	}()
	return <-errc
}

// makeSubvolume makes subvolume name in the directory dirfd, passing the
// kernel a qgroup inheritance of its own when inherit is not nil (as
// btrfs subvolume create -i does; an empty list is allowed).
func makeSubvolume(dirfd int, name string, inherit []uint64) error {
	args := volArgsV2{}
	copy(args.name[:], name)
	var inh []uint64
	if inherit != nil {
		// struct btrfs_qgroup_inherit: flags, num_qgroups,
		// num_ref_copies, num_excl_copies, lim (5 words), qgroups[].
		inh = append([]uint64{0, uint64(len(inherit)), 0, 0, 0, 0, 0, 0, 0}, inherit...)
		args.flags = subvolQgroupInherit
		args.size = uint64(len(inh) * 8)
		args.inherit = uintptr(unsafe.Pointer(&inh[0]))
	}
	err := ioctl(dirfd, iocSubvolCreateV2, unsafe.Pointer(&args))
	runtime.KeepAlive(inh)
	return err
}

// fill writes up to size bytes into a new file name in the directory dirfd
// and returns how many the kernel took, and whether it refused the rest for
// want of room.
func fill(dirfd int, name string, size int) (int, bool, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return 0, errors.Is(err, unix.EDQUOT), err
	}
	defer unix.Close(fd)
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i) | 1
	}
	n := 0
	for n < size {
		w, err := unix.Write(fd, chunk)
		n += max(w, 0)
		if errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC) {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	if err := unix.Fsync(fd); errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC) {
		return n, true, nil
	} else if err != nil {
		return n, false, err
	}
	return n, false, nil
}

// Why nothing holds a directory volume on btrfs (hostpath.BtrfsNotHeld),
// tried on this kernel as an unprivileged user inside a 16 MiB volume held
// both by its own qgroup's limit and by a level-1 qgroup of its own with
// the same limit (the layout that simple quotas make hereditary):
//
//   - with full quotas, a plain nested subvolume is in no qgroup of the
//     volume's: it takes 32 MiB;
//   - with simple quotas, a plain nested subvolume joins its parent's
//     level-1 qgroup and is held; but one made with an empty qgroup
//     inheritance of its maker's own escapes, and one made naming another
//     volume's level-1 qgroup has its data charged to that other volume.
//
// If a kernel ever refuses an unprivileged maker's inheritance, this test
// fails: simple quotas with a level-1 qgroup per volume could then hold.
func TestQgroupsDoNotHoldAgainstNestedSubvolumes(t *testing.T) {
	const limit, try = 16 << 20, 32 << 20
	for _, mode := range []struct {
		name string
		cmd  uint64
	}{{"full", quotaCtlEnable}, {"simple", quotaCtlEnableSimpl}} {
		t.Run(mode.name, func(t *testing.T) {
			mnt := testutil.LoopFS(t, "btrfs", 512)
			fd, err := openDir(mnt)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			args := quotaCtlArgs{cmd: mode.cmd}
			if err := ioctl(fd, iocQuotaCtl, unsafe.Pointer(&args)); err != nil {
				testutil.Missing(t, fmt.Sprintf("%s quotas cannot be turned on here: %v", mode.name, err),
					"a kernel with btrfs qgroups (simple quotas since Linux 6.7), as CI's has")
			}
			// Two volumes, each a subvolume in a level-1 qgroup of its
			// own, both levels limited.
			var vols [2]struct {
				fd    int
				group uint64
			}
			for i := range vols {
				p := filepath.Join(mnt, fmt.Sprintf("vol%d", i))
				if err := btrfs.CreateSubvolume(p); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, 0o777); err != nil {
					t.Fatal(err)
				}
				id, err := SubvolumeID(p)
				if err != nil {
					t.Fatal(err)
				}
				g := level1(uint64(i + 1))
				create := [2]uint64{1, g}
				assign := [3]uint64{1, id, g}
				for _, c := range []struct {
					req uintptr
					arg unsafe.Pointer
				}{{iocQgroupCreate, unsafe.Pointer(&create)}, {iocQgroupAssign, unsafe.Pointer(&assign)}} {
					// An assign answers 1 when the numbers need a
					// rescan; these subvolumes are empty.
					if err := ioctl(fd, c.req, c.arg); err != nil {
						t.Fatalf("qgroup ioctl %#x: %v", c.req, err)
					}
				}
				for _, q := range []uint64{id, g} {
					lim := qgroupLimitArgs{qgroupID: q, lim: qgroupLimit{flags: limitMaxRfer, maxRfer: limit}}
					if err := ioctl(fd, iocQgroupLimit, unsafe.Pointer(&lim)); err != nil {
						t.Fatal(err)
					}
				}
				vols[i].group = g
				if vols[i].fd, err = openDir(p); err != nil {
					t.Fatal(err)
				}
				defer unix.Close(vols[i].fd)
			}
			if mode.cmd == quotaCtlEnable {
				var rescan [8]uint64
				if err := ioctl(fd, iocQuotaRescan, unsafe.Pointer(&rescan)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
					t.Fatal(err)
				}
				if err := ioctl(fd, iocRescanWait, nil); err != nil {
					t.Fatal(err)
				}
			}

			type result struct {
				written int
				refused bool
			}
			// The pod makes its subvolumes first (each takes a little of
			// its volume's room for the directory entry), then writes.
			inherits := []struct {
				name    string
				inherit []uint64
			}{{"plain", nil}, {"empty-inheritance", []uint64{}}, {"other-volumes-group", []uint64{vols[1].group}}}
			if err := asNobody(func() error {
				for _, s := range inherits {
					if err := makeSubvolume(vols[0].fd, s.name, s.inherit); err != nil {
						return fmt.Errorf("make subvolume %s: %w", s.name, err)
					}
				}
				return nil
			}); err != nil {
				t.Fatalf("as uid %d: %v", nobody, err)
			}
			tenant := func(dirfd int, name string, size int) (r result) {
				t.Helper()
				err := asNobody(func() error {
					sub, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
					if err != nil {
						return err
					}
					defer unix.Close(sub)
					r.written, r.refused, err = fill(sub, "fill", size)
					return err
				})
				if err != nil {
					t.Fatalf("as uid %d: %v", nobody, err)
				}
				return r
			}
			held := func(r result) bool { return r.refused && r.written <= limit }

			plain := tenant(vols[0].fd, "plain", try)
			t.Logf("a plain nested subvolume took %d MiB of %d (refused: %v)", plain.written>>20, try>>20, plain.refused)
			if mode.cmd == quotaCtlEnable {
				if held(plain) {
					t.Fatalf("with full quotas a plain nested subvolume is held (%d bytes): the kernel now inherits qgroups; revisit hostpath.BtrfsNotHeld", plain.written)
				}
				return
			}
			if !held(plain) {
				t.Fatalf("with simple quotas a plain nested subvolume took %d bytes past a %d-byte level-1 limit; want it held (auto-inheritance)", plain.written, limit)
			}
			// The plain one keeps what it took: the volume's level-1
			// qgroup is full, and what the next one takes is past it.
			empty := tenant(vols[0].fd, "empty-inheritance", try)
			t.Logf("a nested subvolume with an empty inheritance took %d MiB of %d (refused: %v)", empty.written>>20, try>>20, empty.refused)
			if held(empty) || empty.written < limit {
				t.Fatalf("with simple quotas a nested subvolume made with an empty inheritance is held (%d bytes): revisit hostpath.BtrfsNotHeld", empty.written)
			}
			other := tenant(vols[0].fd, "other-volumes-group", limit/2)
			own := tenant(vols[1].fd, ".", limit)
			t.Logf("after a nested subvolume of vol0 named vol1's level-1 qgroup and took %d MiB, vol1's own pod could write %d MiB of its %d", other.written>>20, own.written>>20, limit>>20)
			if other.refused || own.written >= limit-other.written/2 {
				t.Fatalf("a nested subvolume of one volume that named another's level-1 qgroup was not charged to it instead of its own (took %d bytes, refused: %v; the other volume then took %d of %d): revisit hostpath.BtrfsNotHeld", other.written, other.refused, own.written, limit)
			}
		})
	}
}
