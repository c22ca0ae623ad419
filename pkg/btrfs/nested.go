package btrfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// From linux/btrfs.h and linux/btrfs_tree.h.
const (
	iocTreeSearch    = 0xd0009411 // _IOWR(0x94, 17, struct btrfs_ioctl_search_args)
	iocInoLookup     = 0xd0009412 // _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
	iocSnapDestroyV2 = 0x5000943f // _IOW(0x94, 63, struct btrfs_ioctl_vol_args_v2)

	subvolSpecByID = 1 << 4 // BTRFS_SUBVOL_SPEC_BY_ID
	rootTreeObjID  = 1      // BTRFS_ROOT_TREE_OBJECTID
	rootRefKey     = 156    // BTRFS_ROOT_REF_KEY: parent subvolume -> child
	inoLookupPath  = 4080
	searchBufSize  = 4096 - int(unsafe.Sizeof(searchKey{}))
	searchHdrSize  = int(unsafe.Sizeof(searchHeader{}))
)

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 (4096 bytes); id is the
// union's subvolid.
type volArgsV2 struct {
	fd, transid, flags uint64
	_                  [4]uint64
	id                 uint64
	_                  [4040 - 8]byte
}

type inoLookupArgs struct {
	treeID, objectID uint64
	name             [inoLookupPath]byte
}

// searchKey is struct btrfs_ioctl_search_key.
type searchKey struct {
	treeID                   uint64
	minObjectID, maxObjectID uint64
	minOffset, maxOffset     uint64
	minTransID, maxTransID   uint64
	minType, maxType         uint32
	nrItems                  uint32
	_                        uint32
	_                        [4]uint64
}

type searchArgs struct {
	key searchKey
	buf [searchBufSize]byte
}

// searchHeader is struct btrfs_ioctl_search_header.
type searchHeader struct {
	transID, objectID, offset uint64
	typ, len                  uint32
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

// children lists the IDs of the subvolumes made directly inside subvolume
// id (the root tree's ROOT_REF items keyed by id), through any fd on the
// same filesystem. It needs CAP_SYS_ADMIN.
func children(fd int, id uint64) ([]uint64, error) {
	var out []uint64
	var args searchArgs
	next := uint64(0)
	for {
		args.key = searchKey{
			treeID: rootTreeObjID, minObjectID: id, maxObjectID: id,
			minOffset: next, maxOffset: ^uint64(0), maxTransID: ^uint64(0),
			minType: rootRefKey, maxType: rootRefKey, nrItems: 4096,
		}
		if err := ioctl(fd, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
			return nil, fmt.Errorf("search the subvolumes inside subvolume %d: %w", id, err)
		}
		if args.key.nrItems == 0 {
			return out, nil
		}
		pos := 0
		for i := uint32(0); i < args.key.nrItems; i++ {
			if pos+searchHdrSize > len(args.buf) {
				break
			}
			h := searchHeader{
				objectID: binary.NativeEndian.Uint64(args.buf[pos+8:]),
				offset:   binary.NativeEndian.Uint64(args.buf[pos+16:]),
				typ:      binary.NativeEndian.Uint32(args.buf[pos+24:]),
				len:      binary.NativeEndian.Uint32(args.buf[pos+28:]),
			}
			pos += searchHdrSize + int(h.len)
			if h.objectID == id && h.typ == rootRefKey {
				out = append(out, h.offset)
			}
			next = h.offset + 1
		}
		if next == 0 { // wrapped: the last possible ID was seen
			return out, nil
		}
	}
}

// nested lists every subvolume inside subvolume id, at any depth, each
// after the subvolumes inside it (the order in which they can be deleted).
// depth bounds the recursion: a tree of subvolumes deeper than that is not
// one the driver made, nor one a delete must follow to the end at once.
func nested(fd int, id uint64, depth int) ([]uint64, error) {
	if depth == 0 {
		return nil, fmt.Errorf("subvolumes nested more than %d deep inside subvolume %d", maxNesting, id)
	}
	kids, err := children(fd, id)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, k := range kids {
		below, err := nested(fd, k, depth-1)
		if err != nil {
			return nil, err
		}
		out = append(append(out, below...), k)
	}
	return out, nil
}

// maxNesting is how deep DeleteSubvolumeTree follows subvolumes inside
// subvolumes (a path can hold at most a few thousand, one per directory).
const maxNesting = 4096

// deleteByID destroys subvolume id (which must hold no subvolume) through
// fd, any directory on the same filesystem: no path is resolved, so nothing
// a tenant renames meanwhile can point it elsewhere. It needs CAP_SYS_ADMIN.
func deleteByID(fd int, id uint64) error {
	args := volArgsV2{flags: subvolSpecByID, id: id}
	return ioctl(fd, iocSnapDestroyV2, unsafe.Pointer(&args))
}

// DeleteSubvolumeTree destroys the subvolume at path with everything in it,
// subvolumes made inside it included: anyone who can write a directory can
// make a subvolume there (btrfs subvolume create, or a snapshot of a
// subvolume they own), and a subvolume that holds one cannot be destroyed
// (ENOTEMPTY). The inner ones are destroyed by ID, deepest first.
func DeleteSubvolumeTree(path string) error {
	err := DeleteSubvolume(path)
	if !errors.Is(err, unix.ENOTEMPTY) {
		return err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd)
	if err != nil {
		return &os.PathError{Op: "btrfs subvolume delete", Path: path, Err: err}
	}
	// Whoever made the inner subvolumes may still be at it (a pod whose
	// mount outlived the volume's unpublish): try a few rounds.
	for round := 0; ; round++ {
		inner, err := nested(fd, id, maxNesting)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, n := range inner {
			if err := deleteByID(fd, n); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete subvolume %d inside %s: %w", n, path, err)
			}
		}
		err = DeleteSubvolume(path)
		if !errors.Is(err, unix.ENOTEMPTY) || round == 2 {
			return err
		}
	}
}
