package btrfs

import (
	"encoding/binary"
	"unsafe"
)

// From linux/btrfs.h.
const (
	iocTreeSearch = 0xd0009411 // _IOWR(0x94, 17, struct btrfs_ioctl_search_args)
	searchBufSize = 4096 - int(unsafe.Sizeof(searchKey{}))
	searchHdrSize = int(unsafe.Sizeof(searchHeader{}))
)

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

// SearchKey is a range of the item keys of one tree. A key (objectid,
// type, offset) is ordered as one number, objectid first: the range is
// every key from (MinObjectID, MinType, MinOffset) to (MaxObjectID,
// MaxType, MaxOffset), not the keys whose every field lies in its own
// bounds. A search for the items of one type of one object sets both
// bounds of both fields to them.
type SearchKey struct {
	TreeID                   uint64
	MinObjectID, MaxObjectID uint64
	MinType, MaxType         uint32
	MinOffset, MaxOffset     uint64
}

// Item is an item a tree search found. Data is the item's own bytes, valid
// only during the call of fn that is given it.
type Item struct {
	ObjectID, Offset uint64
	Type             uint32
	Data             []byte
}

// SearchTree calls fn for each item of the tree whose key lies in k, in key
// order, until fn returns false or the range ends. It asks the kernel
// (BTRFS_IOC_TREE_SEARCH, which needs CAP_SYS_ADMIN) for up to batch items
// at a time: 1 to stop at the first. The error is the ioctl's own, for the
// caller to say what it searched (ENOENT: there is no such tree).
func SearchTree(fd int, k SearchKey, batch uint32, fn func(Item) bool) error {
	var args searchArgs
	for {
		args.key = searchKey{
			treeID: k.TreeID, minObjectID: k.MinObjectID, maxObjectID: k.MaxObjectID,
			minOffset: k.MinOffset, maxOffset: k.MaxOffset, maxTransID: ^uint64(0),
			minType: k.MinType, maxType: k.MaxType, nrItems: batch,
		}
		if err := ioctl(fd, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
			return err
		}
		if args.key.nrItems == 0 {
			return nil
		}
		pos := 0
		for i := uint32(0); i < args.key.nrItems && pos+searchHdrSize <= len(args.buf); i++ {
			it := Item{
				ObjectID: binary.NativeEndian.Uint64(args.buf[pos+8:]),
				Offset:   binary.NativeEndian.Uint64(args.buf[pos+16:]),
				Type:     binary.NativeEndian.Uint32(args.buf[pos+24:]),
			}
			data := pos + searchHdrSize
			pos = data + int(binary.NativeEndian.Uint32(args.buf[pos+28:]))
			// The kernel never cuts an item short; one it did would be
			// passed over.
			if pos <= len(args.buf) {
				it.Data = args.buf[data:pos]
				if !fn(it) {
					return nil
				}
			}
			var more bool
			if k.MinObjectID, k.MinType, k.MinOffset, more = keyAfter(it.ObjectID, it.Type, it.Offset); !more {
				return nil
			}
		}
		if !keyLE(k.MinObjectID, k.MinType, k.MinOffset, k.MaxObjectID, k.MaxType, k.MaxOffset) {
			return nil // the range is done: no search past its end
		}
	}
}

// keyAfter is the key that follows (objectID, typ, offset); more is false
// after the last key there is.
func keyAfter(objectID uint64, typ uint32, offset uint64) (uint64, uint32, uint64, bool) {
	switch {
	case offset != ^uint64(0):
		return objectID, typ, offset + 1, true
	case typ != ^uint32(0):
		return objectID, typ + 1, 0, true
	case objectID != ^uint64(0):
		return objectID + 1, 0, 0, true
	}
	return 0, 0, 0, false
}

// keyLE reports whether key a is at or before key b.
func keyLE(ao uint64, at uint32, aoff uint64, bo uint64, bt uint32, boff uint64) bool {
	if ao != bo {
		return ao < bo
	}
	if at != bt {
		return at < bt
	}
	return aoff <= boff
}
