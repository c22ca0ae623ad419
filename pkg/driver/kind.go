package driver

import (
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Layouts of a mount volume (StorageClass parameter layout).
const (
	// LayoutDirectory: a directory (a btrfs subvolume on btrfs) on the
	// data filesystem, held to its size by a project quota where the data
	// filesystem has one (a qgroup does not hold: hostpath.BtrfsNotHeld).
	LayoutDirectory = "directory"
	// LayoutImage: a filesystem image (fsType ext4 or xfs) on a loop
	// device, mounted at the staging path: its size holds on any data
	// filesystem, and a snapshot of it is one point in time.
	LayoutImage = "image"
	// layoutBlock is what a volume with the block access type is: a file
	// attached to a loop device. Not a parameter value: the claim's
	// volumeMode: Block asks for it.
	layoutBlock = "block"
)

// Keys of the volume context a created volume carries (a PV's
// volumeAttributes): what it is and what holds it to its size.
const (
	ContextLayout = "hostpath-csi.github.io/layout"
	ContextLimit  = "hostpath-csi.github.io/size-limit"
)

// DefaultImageFSType is an image volume's filesystem when the class names
// none (csi.storage.k8s.io/fstype) and --image-fstype does not either.
const DefaultImageFSType = hostpath.ImageExt4

// volumeKind is what a volume is: a directory, a filesystem image or a block
// device file.
type volumeKind struct {
	layout string // LayoutDirectory, LayoutImage or layoutBlock
	fsType string // an image's filesystem
}

func (k volumeKind) block() bool { return k.layout == layoutBlock }

func (k volumeKind) String() string {
	if k.fsType != "" {
		return k.layout + " (" + k.fsType + ")"
	}
	return k.layout
}

// kindOf is the kind of a recorded volume. Volumes made before layouts have
// no layout on record: directories.
func kindOf(v *state.Volume) volumeKind {
	switch {
	case v.AccessType == "block":
		return volumeKind{layout: layoutBlock}
	case v.Layout == LayoutImage:
		return volumeKind{layout: LayoutImage, fsType: v.FSType}
	}
	return volumeKind{layout: LayoutDirectory}
}

// kindOfSnapshot is the kind of the volume a snapshot was taken of.
func kindOfSnapshot(s *state.Snapshot) volumeKind {
	return kindOf(&state.Volume{AccessType: s.SourceAccessType, Layout: s.SourceLayout, FSType: s.SourceFSType})
}

// kindFor decides what CreateVolume makes from its capabilities and the
// layout parameter: all capabilities must agree on the access type, and an
// fs_type asks for an image of that filesystem.
func kindFor(caps []*csi.VolumeCapability, layout, defaultFSType string) (volumeKind, error) {
	var block, mount bool
	fsType := ""
	for _, c := range caps {
		switch {
		case c.GetBlock() != nil:
			block = true
		case c.GetMount() != nil:
			mount = true
			if f := c.GetMount().GetFsType(); f != "" {
				if fsType != "" && f != fsType {
					return volumeKind{}, status.Errorf(codes.InvalidArgument, "capabilities ask for two filesystems, %q and %q", fsType, f)
				}
				fsType = f
			}
		}
	}
	switch {
	case block && mount:
		return volumeKind{}, status.Error(codes.InvalidArgument, "capabilities ask for both block and mount access; a volume is one or the other")
	case block:
		if layout != "" {
			return volumeKind{}, status.Errorf(codes.InvalidArgument, "parameter %s=%q does not apply to a block volume (volumeMode: Block is a device file)", ParamLayout, layout)
		}
		return volumeKind{layout: layoutBlock}, nil
	case layout == LayoutImage:
		if fsType == "" {
			fsType = defaultFSType
		}
		if fsType != hostpath.ImageExt4 && fsType != hostpath.ImageXFS {
			return volumeKind{}, status.Errorf(codes.InvalidArgument, "fs_type %q: an image volume holds ext4 or xfs", fsType)
		}
		return volumeKind{layout: LayoutImage, fsType: fsType}, nil
	case fsType != "":
		return volumeKind{}, status.Errorf(codes.InvalidArgument, "fs_type %q cannot be chosen for a directory volume, which has the data directory's filesystem; set the class parameter %s: %s for a volume with a filesystem of its own", fsType, ParamLayout, LayoutImage)
	}
	return volumeKind{layout: LayoutDirectory}, nil
}

// servesKind says why capability c cannot be served by a volume of kind k,
// or nil.
func servesKind(k volumeKind, c *csi.VolumeCapability) error {
	if err := checkCapability(c); err != nil {
		return err
	}
	switch {
	case k.block() && c.GetBlock() == nil:
		return fmt.Errorf("volume is a block volume; it has no filesystem to mount")
	case !k.block() && c.GetBlock() != nil:
		return fmt.Errorf("volume is a %s volume, not a block device", k.layout)
	case c.GetMount() != nil && c.GetMount().GetFsType() != "" && c.GetMount().GetFsType() != k.fsType:
		if k.fsType == "" {
			return fmt.Errorf("fs_type %q: a directory volume has the data directory's filesystem", c.GetMount().GetFsType())
		}
		return fmt.Errorf("fs_type %q: the volume holds %s", c.GetMount().GetFsType(), k.fsType)
	}
	return nil
}

// minSize is the smallest volume of kind k: an image must hold its
// filesystem's minimum.
func (k volumeKind) minSize() int64 {
	switch k.layout {
	case LayoutImage:
		n, err := hostpath.ImageMinSize(k.fsType)
		if err == nil {
			return n
		}
	case layoutBlock:
		n, _ := hostpath.ImageMinSize("")
		return n
	}
	return 1
}

// sizeForKind raises a size to what kind k needs, within the request's
// limit: CSI lets a volume be larger than required.
func sizeForKind(size int64, k volumeKind, cr *csi.CapacityRange) (int64, error) {
	minimum := k.minSize()
	if k.block() && size%minimum != 0 {
		minimum = (size/minimum + 1) * minimum // whole sectors
	}
	if size >= minimum {
		return size, nil
	}
	if lim := cr.GetLimitBytes(); lim > 0 && lim < minimum {
		return 0, status.Errorf(codes.OutOfRange, "a %s volume needs at least %d bytes; the limit is %d", k, minimum, lim)
	}
	return minimum, nil
}
