package btrfs

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
)

// From linux/btrfs.h and linux/btrfs_tree.h.
const (
	iocInoLookup = 0xd0009412 // _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)

	rootTreeObjID = 1   // BTRFS_ROOT_TREE_OBJECTID
	rootRefKey    = 156 // BTRFS_ROOT_REF_KEY: parent subvolume -> child
	inoLookupPath = 4080
)

type inoLookupArgs struct {
	treeID, objectID uint64
	name             [inoLookupPath]byte
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// subvolumeID is the ID of the subvolume whose root directory fd is.
func subvolumeID(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if st.Ino != firstFreeObj {
		return 0, errors.New("not the root of a btrfs subvolume")
	}
	// Tree 0 means "the tree of this fd"; the answer's treeID is its ID.
	args := inoLookupArgs{objectID: firstFreeObj}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("btrfs inode lookup: %w", err)
	}
	return args.treeID, nil
}

// maxTreeSteps bounds the work of one DeleteSubvolumeTree (subvolumes
// moved out and destroyed), not the depth of the tree: a pod still making
// subvolumes while its volume is destroyed cannot keep the call going for
// ever. What is left is in the staging directory, for the next try.
const maxTreeSteps = 1 << 20

// DeleteSubvolumeTree destroys the subvolume at path with everything in it,
// subvolumes made inside it included, at any depth: anyone who can write a
// directory can make a subvolume there (btrfs subvolume create, or a
// snapshot of a subvolume they own), and a subvolume that holds one cannot
// be destroyed (ENOTEMPTY). Nor can one be destroyed by ID deeper than a
// path the kernel can name (PATH_MAX), and a chain of subvolumes each
// inside the last is made in seconds. So the tree is flattened instead:
// each subvolume inside is moved (a subvolume's root may move between
// subvolumes) into staging, a directory of the driver's on the same
// filesystem, as "."+base(path)+".sub"+its ID (a name no volume or snapshot
// ID matches), and each is destroyed once nothing is inside it. A
// read-only flag (which a subvolume's owner may set) is cleared first on
// each. Descriptors and memory are bounded by the number of subvolumes at
// one level, not by the depth.
func DeleteSubvolumeTree(path, staging string) error {
	err := DeleteSubvolume(path)
	if err == nil || !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.EPERM) {
		return err
	}
	sfd, err := unix.Open(staging, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: staging, Err: err}
	}
	defer unix.Close(sfd)
	prefix := "." + filepath.Base(path) + ".sub"
	// Work: directories (relative to the parent of path, or to staging)
	// still to empty of subvolumes; done: emptied, to destroy last first.
	type entry struct {
		dirfd int
		name  string
	}
	pfd, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: filepath.Dir(path), Err: err}
	}
	defer unix.Close(pfd)
	work := []entry{{pfd, filepath.Base(path)}}
	var done []entry
	for steps := 0; len(work) > 0; steps++ {
		if steps >= maxTreeSteps {
			return fmt.Errorf("%s: gave up after moving %d subvolumes out of it (something keeps making them); the rest is retried", path, steps)
		}
		e := work[len(work)-1]
		work = work[:len(work)-1]
		moved, err := moveChildrenOut(e.dirfd, e.name, sfd, prefix)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, m := range moved {
			work = append(work, entry{sfd, m})
		}
		done = append(done, e)
	}
	// Every subvolume is now at the top of staging (or path itself) with
	// none inside: destroy them, the last emptied first. One that got a
	// subvolume inside meanwhile is emptied again.
	for i := len(done) - 1; i >= 0; i-- {
		e := done[i]
		err := destroyAt(e.dirfd, e.name)
		if errors.Is(err, unix.ENOTEMPTY) {
			if _, err := moveChildrenOut(e.dirfd, e.name, sfd, prefix); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			err = destroyAt(e.dirfd, e.name)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s: destroy subvolume %s: %w", path, e.name, err)
		}
	}
	return nil
}

// moveChildrenOut opens the subvolume name in dirfd, makes it writable, and
// moves every subvolume directly inside it into sfd as prefix+ID; it
// returns their new names there. It needs CAP_SYS_ADMIN.
func moveChildrenOut(dirfd int, name string, sfd int, prefix string) ([]string, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open subvolume %s: %w", name, err)
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd)
	if err != nil {
		return nil, fmt.Errorf("subvolume %s: %w", name, err)
	}
	if err := clearReadOnly(fd); err != nil {
		return nil, fmt.Errorf("subvolume %s: %w", name, err)
	}
	refs, err := childRefs(fd, id)
	if err != nil {
		return nil, err
	}
	var moved []string
	for _, r := range refs {
		dir, err := dirOf(fd, id, r.dirID)
		if err != nil {
			return nil, fmt.Errorf("subvolume %d inside subvolume %d: %w", r.id, id, err)
		}
		err = func() error {
			defer closeUnless(dir, fd)
			cfd, err := unix.Openat(dir, r.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
			if errors.Is(err, unix.ENOENT) {
				return nil // destroyed or moved since it was listed
			}
			if err != nil {
				return fmt.Errorf("open: %w", err)
			}
			err = clearReadOnly(cfd)
			unix.Close(cfd)
			if err != nil {
				return err
			}
			to := prefix + strconv.FormatUint(r.id, 10)
			if err := unix.Renameat2(dir, r.name, sfd, to, unix.RENAME_NOREPLACE); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("move it out: %w", err)
			}
			moved = append(moved, to)
			return nil
		}()
		if err != nil {
			return nil, fmt.Errorf("subvolume %d (%q) inside subvolume %d: %w", r.id, r.name, id, err)
		}
	}
	return moved, nil
}

func closeUnless(fd, keep int) {
	if fd != keep {
		unix.Close(fd)
	}
}

// destroyAt destroys the subvolume name in dirfd (which holds none).
func destroyAt(dirfd int, name string) error {
	if len(name) > pathNameMax {
		return unix.ENAMETOOLONG
	}
	var args volArgs
	args.fd = -1
	copy(args.name[:], name)
	return ioctl(dirfd, iocSnapDelete, unsafe.Pointer(&args))
}

// childRef is a subvolume inside another: its ID, the directory of the
// parent subvolume that holds it (an inode number there) and its name.
type childRef struct {
	id, dirID uint64
	name      string
}

// childRefs lists the subvolumes directly inside subvolume id, from the
// root tree's ROOT_REF items (struct btrfs_root_ref: dirid, sequence,
// name_len, then the name).
func childRefs(fd int, id uint64) ([]childRef, error) {
	var out []childRef
	k := SearchKey{TreeID: rootTreeObjID, MinObjectID: id, MaxObjectID: id,
		MinType: rootRefKey, MaxType: rootRefKey, MaxOffset: ^uint64(0)}
	err := SearchTree(fd, k, 4096, func(it Item) bool {
		item := it.Data
		if it.ObjectID != id || it.Type != rootRefKey || len(item) < 18 {
			return true
		}
		nameLen := int(binary.LittleEndian.Uint16(item[16:]))
		if 18+nameLen > len(item) {
			return true
		}
		out = append(out, childRef{id: it.Offset, dirID: binary.LittleEndian.Uint64(item), name: string(item[18 : 18+nameLen])})
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("search the subvolumes inside subvolume %d: %w", id, err)
	}
	return out, nil
}

// dirOf opens directory dirID of subvolume id, whose root is fd (fd itself
// for the root), through the path the kernel gives for it, resolved beneath
// fd without following symlinks.
func dirOf(fd int, id, dirID uint64) (int, error) {
	if dirID == firstFreeObj {
		return fd, nil
	}
	args := inoLookupArgs{treeID: id, objectID: dirID}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return -1, fmt.Errorf("find directory %d: %w", dirID, err)
	}
	rel := strings.TrimSuffix(unix.ByteSliceToString(args.name[:]), "/")
	dfd, err := unix.Openat2(fd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return -1, fmt.Errorf("open directory %q: %w", rel, err)
	}
	return dfd, nil
}

// From linux/btrfs.h.
const (
	iocSubvolGetFlags = 0x80089419 // _IOR(0x94, 25, __u64)
	iocSubvolSetFlags = 0x4008941a // _IOW(0x94, 26, __u64)
	subvolRdonly      = 1 << 1     // BTRFS_SUBVOL_RDONLY
)

// clearReadOnly makes the subvolume whose root fd is writable, if its owner
// made it read-only (btrfs property set ro true): a read-only subvolume
// cannot be moved, nor anything in it removed.
func clearReadOnly(fd int) error {
	var flags uint64
	if err := ioctl(fd, iocSubvolGetFlags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("read subvolume flags: %w", err)
	}
	if flags&subvolRdonly == 0 {
		return nil
	}
	flags &^= subvolRdonly
	if err := ioctl(fd, iocSubvolSetFlags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("clear the read-only flag: %w", err)
	}
	return nil
}

// ClearReadOnly makes the subvolume at path writable if it was made
// read-only; path must be the root of a subvolume.
func ClearReadOnly(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if err := clearReadOnly(fd); err != nil {
		return &os.PathError{Op: "btrfs subvolume", Path: path, Err: err}
	}
	return nil
}
