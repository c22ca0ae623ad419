package btrfs

import (
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hostpath-csi/hostpath-csi/internal/testutil"
)

// A search goes on from the key after the last item it was given, in the
// order the kernel keeps keys: offset, then type, then objectid, each
// wrapping into the next.
func TestKeyAfter(t *testing.T) {
	const max64, max32 = ^uint64(0), ^uint32(0)
	for _, tc := range []struct {
		name             string
		o                uint64
		typ              uint32
		off              uint64
		wo               uint64
		wt               uint32
		woff             uint64
		wantMore, wantLE bool // wantLE: the next key is at or before (o, typ, max64)
	}{
		{"next offset", 5, 156, 7, 5, 156, 8, true, true},
		{"offset wraps into the type", 5, 156, max64, 5, 157, 0, true, false},
		{"type wraps into the objectid", 5, max32, max64, 6, 0, 0, true, false},
		{"the last key", max64, max32, max64, 0, 0, 0, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, typ, off, more := keyAfter(tc.o, tc.typ, tc.off)
			if o != tc.wo || typ != tc.wt || off != tc.woff || more != tc.wantMore {
				t.Fatalf("keyAfter(%d, %d, %d) = (%d, %d, %d, %v), want (%d, %d, %d, %v)",
					tc.o, tc.typ, tc.off, o, typ, off, more, tc.wo, tc.wt, tc.woff, tc.wantMore)
			}
			if more {
				if le := keyLE(o, typ, off, tc.o, tc.typ, max64); le != tc.wantLE {
					t.Errorf("keyLE(next, (%d, %d, max)) = %v, want %v", tc.o, tc.typ, le, tc.wantLE)
				}
			}
		})
	}
}

// A search that takes one item at a time goes on from each to the next and
// finds every item of the range once, in order: here the ROOT_REF item of
// each subvolume made inside another, keyed by the child's ID.
func TestSearchTreeOneItemAtATime(t *testing.T) {
	mnt := testutil.LoopFS(t, "btrfs", 256)
	vol := filepath.Join(mnt, "vol")
	if err := CreateSubvolume(vol); err != nil {
		t.Fatal(err)
	}
	names := []string{"a", "b", "c", "d", "e"}
	for _, n := range names {
		if err := CreateSubvolume(filepath.Join(vol, n)); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.Open(vol, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd)
	if err != nil {
		t.Fatal(err)
	}
	for _, batch := range []uint32{1, 2, 4096} {
		var ids []uint64
		k := SearchKey{TreeID: rootTreeObjID, MinObjectID: id, MaxObjectID: id,
			MinType: rootRefKey, MaxType: rootRefKey, MaxOffset: ^uint64(0)}
		if err := SearchTree(fd, k, batch, func(it Item) bool { ids = append(ids, it.Offset); return true }); err != nil {
			t.Fatal(err)
		}
		if len(ids) != len(names) || !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
			t.Errorf("batches of %d: child IDs %v, want %d distinct ones in order", batch, ids, len(names))
		}
	}
	refs, err := childRefs(fd, id)
	if err != nil || len(refs) != len(names) {
		t.Fatalf("childRefs: %v %v, want the %d subvolumes inside", refs, err, len(names))
	}
}
