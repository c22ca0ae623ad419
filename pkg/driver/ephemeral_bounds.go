package driver

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/hostpath"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// What a pod author may ask of an inline volume is bounded by the
// administrator. Anyone who can create a pod can ask for one (PodSecurity
// "restricted" allows csi: volumes), and neither ResourceQuota nor the
// scheduler's capacity tracking sees them: these bounds are all that stands
// between one pod and the node's room.
const (
	// DefaultEphemeralMaxSize is the largest inline volume unless
	// --ephemeral-max-size says otherwise.
	DefaultEphemeralMaxSize int64 = 1 << 30
	// DefaultEphemeralSize is an inline volume's size when its pod names
	// none (--ephemeral-default-size).
	DefaultEphemeralSize int64 = 256 << 20
	// DefaultEphemeralMaxShare is the percentage of the node's room for
	// volumes all inline volumes together may hold (--ephemeral-max-share).
	DefaultEphemeralMaxShare = 10
	// DefaultEphemeralMaxCount is how many inline volumes a node has at
	// most (--ephemeral-max-count).
	DefaultEphemeralMaxCount = 64
	// DefaultEphemeralMaxSharePerNamespace is the percentage of what inline
	// volumes may hold together (--ephemeral-max-share) those of one
	// namespace may hold (--ephemeral-max-share-per-namespace).
	DefaultEphemeralMaxSharePerNamespace = 25
)

// ephemeralAttributeNames are the attributes an inline volume understands;
// a pod may set those the administrator allows.
var ephemeralAttributeNames = []string{AttrSize, ParamMountPermissions, ParamLayout}

// DefaultEphemeralAllowedAttributes are the attributes a pod may set unless
// --ephemeral-allowed-attributes says otherwise.
var DefaultEphemeralAllowedAttributes = []string{AttrSize}

// EphemeralConfig bounds the CSI inline volumes of pods; zero values are the
// defaults.
type EphemeralConfig struct {
	// Disabled refuses every new inline volume (--ephemeral=false); those
	// pods already have are served until their pods go.
	Disabled bool
	// MaxSize is the largest inline volume in bytes; a larger size is
	// INVALID_ARGUMENT.
	MaxSize int64
	// DefaultSize is the size of an inline volume whose pod names none (or
	// may not name one).
	DefaultSize int64
	// MaxSharePercent is how much (1-100) of the node's room for volumes
	// (what is available, as GetCapacity reports, plus what inline volumes
	// hold) all inline volumes together may hold; past it a new one is
	// RESOURCE_EXHAUSTED.
	MaxSharePercent int
	// MaxCount is how many inline volumes the node has at most; past it a
	// new one is RESOURCE_EXHAUSTED.
	MaxCount int
	// MaxSharePerNamespacePercent is how much (1-100) of what inline
	// volumes may hold together (MaxSharePercent of the node's room) the
	// inline volumes of one namespace may hold; 0 is
	// DefaultEphemeralMaxSharePerNamespace.
	MaxSharePerNamespacePercent int
	// MaxCountPerNamespace is how many inline volumes one namespace has on
	// the node at most; 0 is a quarter of MaxCount (at least 1). With 100
	// and MaxCount, namespaces are not bounded apart.
	MaxCountPerNamespace int
	// AllowedAttributes are the volume attributes a pod may set, of size
	// and mountPermissions; nil is DefaultEphemeralAllowedAttributes,
	// empty allows none. An attribute a pod may not set is refused unless
	// it asks what the pod gets anyway.
	AllowedAttributes []string
	// MountPermissions is the mode of an inline volume's root (octal, as
	// the StorageClass parameter) unless its pod may and does set it;
	// "" is DefaultMountPermissions.
	MountPermissions string
	// SweepAfter is how long an inline volume may be without a mount (and
	// without a publish trying) before it is removed (see
	// ephemeral_sweep.go); 0 is DefaultEphemeralSweepAfter. Not a flag.
	SweepAfter time.Duration
}

// check fills in the defaults and says what is wrong, naming the flags.
// maxVolume is --max-volume-size, fsType the image filesystem.
func (c *EphemeralConfig) check(maxVolume int64, fsType string) []string {
	var problems []string
	if c.MaxSize == 0 {
		c.MaxSize = min(DefaultEphemeralMaxSize, maxVolume)
	}
	if c.DefaultSize == 0 {
		c.DefaultSize = min(DefaultEphemeralSize, c.MaxSize)
	}
	if c.MaxSharePercent == 0 {
		c.MaxSharePercent = DefaultEphemeralMaxShare
	}
	if c.MaxCount == 0 {
		c.MaxCount = DefaultEphemeralMaxCount
	}
	if c.MaxSharePerNamespacePercent == 0 {
		c.MaxSharePerNamespacePercent = DefaultEphemeralMaxSharePerNamespace
	}
	if c.MaxCountPerNamespace == 0 {
		c.MaxCountPerNamespace = max(1, c.MaxCount/4)
	}
	if c.AllowedAttributes == nil {
		c.AllowedAttributes = DefaultEphemeralAllowedAttributes
	}
	if c.MountPermissions == "" {
		c.MountPermissions = fmt.Sprintf("%04o", uint32(DefaultMountPermissions))
	}
	switch {
	case c.MaxSize < 0:
		problems = append(problems, "--ephemeral-max-size is negative")
	case c.MaxSize > maxVolume:
		problems = append(problems, fmt.Sprintf("--ephemeral-max-size (%d bytes) is larger than --max-volume-size (%d bytes)", c.MaxSize, maxVolume))
	}
	if least, err := hostpath.ImageMinSize(fsType); err == nil && c.MaxSize < least {
		problems = append(problems, fmt.Sprintf("--ephemeral-max-size (%d bytes) is below the least %s image (%d bytes, --image-fstype): every inline volume would be larger", c.MaxSize, fsType, least))
	}
	if c.DefaultSize < 0 || c.DefaultSize > c.MaxSize {
		problems = append(problems, fmt.Sprintf("--ephemeral-default-size (%d bytes) is not between 1 and --ephemeral-max-size (%d bytes)", c.DefaultSize, c.MaxSize))
	}
	if c.MaxSharePercent < 0 || c.MaxSharePercent > 100 {
		problems = append(problems, fmt.Sprintf("--ephemeral-max-share is %d; want a percentage from 1 to 100", c.MaxSharePercent))
	}
	if c.MaxCount < 0 {
		problems = append(problems, "--ephemeral-max-count is negative")
	}
	if c.MaxSharePerNamespacePercent < 0 || c.MaxSharePerNamespacePercent > 100 {
		problems = append(problems, fmt.Sprintf("--ephemeral-max-share-per-namespace is %d; want a percentage (1-100) of --ephemeral-max-share", c.MaxSharePerNamespacePercent))
	}
	if c.MaxCountPerNamespace < 0 || c.MaxCountPerNamespace > c.MaxCount {
		problems = append(problems, fmt.Sprintf("--ephemeral-max-count-per-namespace (%d) is not between 1 and --ephemeral-max-count (%d)", c.MaxCountPerNamespace, c.MaxCount))
	}
	for _, a := range c.AllowedAttributes {
		switch a {
		case AttrSize, ParamMountPermissions:
		case ParamLayout:
			problems = append(problems, "--ephemeral-allowed-attributes: layout is no choice: an inline volume is always an image, and any pod may say layout: image")
		default:
			problems = append(problems, fmt.Sprintf("--ephemeral-allowed-attributes: unknown attribute %q; a pod may be allowed to set %s, %s", a, AttrSize, ParamMountPermissions))
		}
	}
	if _, err := parseParameters(map[string]string{ParamMountPermissions: c.MountPermissions}); err != nil {
		problems = append(problems, fmt.Sprintf("--ephemeral-mount-permissions=%q: want an octal mode such as 0770", c.MountPermissions))
	}
	return problems
}

func (c *EphemeralConfig) allows(attr string) bool { return slices.Contains(c.AllowedAttributes, attr) }

// allowedFlag names the flag and its value, for messages.
func (c *EphemeralConfig) allowedFlag() string {
	return "--ephemeral-allowed-attributes=" + strings.Join(c.AllowedAttributes, ",")
}

// perNamespace reports whether namespaces are bounded apart.
func (c *EphemeralConfig) perNamespace() bool {
	return c.MaxSharePerNamespacePercent < 100 || c.MaxCountPerNamespace < c.MaxCount
}

// ephemeralUse is what inline volumes on record hold: on the node, and of
// one namespace.
type ephemeralUse struct {
	count, nsCount int
	held, nsHeld   int64
}

// admitEphemeral records v, a new inline volume of capacity bytes of the
// pod namespace v.PodNamespace, if the node's bounds and the namespace's
// leave room for it: the counts and the shares are read from the records
// and the new record is written under one lock, so concurrent publishes
// cannot together pass a bound, and a restart counts exactly what is on
// record.
func (d *hostpathDriver) admitEphemeral(v *state.Volume, capacity int64) (*state.Volume, error) {
	d.ephemeralMu.Lock()
	defer d.ephemeralMu.Unlock()
	use, err := d.ephemeralInUse(v.PodNamespace)
	if err != nil {
		return nil, err
	}
	pol := d.cfg.Ephemeral
	ns := v.PodNamespace
	if pol.perNamespace() && use.nsCount >= pol.MaxCountPerNamespace {
		return nil, status.Errorf(codes.ResourceExhausted, "namespace %q already has %d inline volumes on this node, the most one namespace may have (--ephemeral-max-count-per-namespace=%d); retry once other inline volumes of the namespace are gone, or use a PersistentVolumeClaim", ns, use.nsCount, pol.MaxCountPerNamespace)
	}
	if use.count >= pol.MaxCount {
		return nil, status.Errorf(codes.ResourceExhausted, "this node already has %d inline volumes, the most it allows (--ephemeral-max-count=%d); retry once other pods' inline volumes are gone, or use a PersistentVolumeClaim", use.count, pol.MaxCount)
	}
	// The node's room is what volumes could have if there were no inline
	// ones: what is available (the capacity the scheduler reads) plus
	// what inline volumes hold. Inline volumes take at most the share of
	// it, so claims always keep the rest, however full the node is; and
	// one namespace's take at most its part of the share, so the others
	// keep theirs.
	avail, err := d.available()
	if err != nil {
		return nil, err
	}
	share := (avail + use.held) / 100 * int64(pol.MaxSharePercent)
	if nsShare := share / 100 * int64(pol.MaxSharePerNamespacePercent); pol.perNamespace() && use.nsHeld+capacity > nsShare {
		return nil, status.Errorf(codes.ResourceExhausted, "an inline volume of %d bytes does not fit: inline volumes of namespace %q on this node hold %d bytes of the %d one namespace may hold (%d%% of what inline volumes may hold together, --ephemeral-max-share-per-namespace); ask for less, retry once other inline volumes of the namespace are gone, or use a PersistentVolumeClaim", capacity, ns, use.nsHeld, nsShare, pol.MaxSharePerNamespacePercent)
	}
	if use.held+capacity > share {
		return nil, status.Errorf(codes.ResourceExhausted, "an inline volume of %d bytes does not fit: inline volumes on this node hold %d bytes of the %d they may hold together (%d%% of the node's room for volumes, --ephemeral-max-share); ask for less, retry once other pods' inline volumes are gone, or use a PersistentVolumeClaim", capacity, use.held, share, pol.MaxSharePercent)
	}
	return d.recordNewVolume(v, capacity, nil)
}

// ephemeralInUse counts the inline volumes on record, but those being
// removed, and what they hold: all of them, and those of namespace ns (an
// inline volume of an earlier release has none, and counts on the node
// alone). It reads their records alone, by name.
func (d *hostpathDriver) ephemeralInUse(ns string) (use ephemeralUse, err error) {
	vols, err := d.store.VolumesNamed(ephemeralNamePrefix)
	if err != nil {
		return use, stateError(err)
	}
	for _, v := range vols {
		if v.Ephemeral && v.Phase != state.PhaseDeleting {
			size := d.heldSize(v)
			use.count++
			use.held += size
			if ns != "" && v.PodNamespace == ns {
				use.nsCount++
				use.nsHeld += size
			}
		}
	}
	return use, nil
}
