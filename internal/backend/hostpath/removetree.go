package hostpath

import (
	"errors"
	"fmt"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
)

// removeTree removes path and everything below it through directory
// descriptors (beneath.RemoveTree: never into a mount, never through a
// symlink, any depth with bounded descriptors). path must be in a directory
// the driver owns (trash/ or partial/), where deep subtrees are moved to be
// removed apart.
func removeTree(path string) error {
	err := beneath.RemoveTree(path)
	if errors.Is(err, beneath.ErrMountInside) {
		return fmt.Errorf("%w: %v", ErrMountedInside, err)
	}
	return err
}
