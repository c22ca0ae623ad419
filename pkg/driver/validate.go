package driver

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
)

// Volume parameters (StorageClass parameters) this driver understands.
const (
	// ParamMountPermissions is the octal mode of the volume's root directory.
	ParamMountPermissions = "mountPermissions"
	// ParamLayout is how a mount volume keeps its data: directory or image.
	ParamLayout = "layout"
	// Keys the external-provisioner adds with --extra-create-metadata; they
	// are kept with the volume so an operator can tell which claim owns it.
	ParamPVCName      = "csi.storage.k8s.io/pvc/name"
	ParamPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	ParamPVName       = "csi.storage.k8s.io/pv/name"
)

// sameClassParameters reports whether asked (the parameters of a
// ValidateVolumeCapabilities: a StorageClass's, as written) are those a
// volume was created with. The csi.storage.k8s.io/ keys are left out on
// both sides: the provisioner adds them to CreateVolume alone (the claim's
// and PV's names) or keeps them for itself, so a class never has the ones
// its volumes were created with.
func sameClassParameters(asked, recorded map[string]string) bool {
	own := func(m map[string]string) map[string]string {
		out := make(map[string]string, len(m))
		for k, v := range m {
			if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
				out[k] = v
			}
		}
		return out
	}
	return maps.Equal(own(asked), own(recorded))
}

// DefaultMountPermissions lets any pod user write to a new volume, as
// local-path-provisioner and csi-driver-host-path do; a StorageClass can
// narrow it with mountPermissions.
const DefaultMountPermissions os.FileMode = 0o777

var knownParameters = []string{ParamLayout, ParamMountPermissions, ParamPVCName, ParamPVCNamespace, ParamPVName}

// Limits on request fields, so a hostile request cannot make the driver
// store or log megabytes.
const (
	maxNameLen       = 253 // a Kubernetes object name; sanity uses 128
	maxParamKeyLen   = 316 // a qualified key with a 253-byte prefix
	maxParamValueLen = 1024
	maxParams        = 64
	maxPathLen       = 4096
)

type volumeParams struct {
	mode   os.FileMode
	layout string // "" when the class names none
}

// parseParameters checks parameters against the known list. An unknown key is
// an InvalidArgument that names it and lists what is accepted.
func parseParameters(params map[string]string) (volumeParams, error) {
	p := volumeParams{mode: DefaultMountPermissions}
	if len(params) > maxParams {
		return p, status.Errorf(codes.InvalidArgument, "too many parameters: %d (at most %d)", len(params), maxParams)
	}
	var unknown []string
	for k, v := range params {
		if len(k) > maxParamKeyLen || len(v) > maxParamValueLen {
			return p, status.Errorf(codes.InvalidArgument, "parameter %.64q: key or value too long (key at most %d bytes, value at most %d)", k, maxParamKeyLen, maxParamValueLen)
		}
		switch k {
		case ParamMountPermissions:
			mode, err := strconv.ParseUint(v, 8, 32)
			if err != nil || mode > 0o7777 {
				return p, status.Errorf(codes.InvalidArgument, "parameter %s=%q: want an octal mode such as 0750", k, v)
			}
			p.mode = os.FileMode(mode&0o777) | unixModeBits(uint32(mode))
		case ParamLayout:
			if v != LayoutDirectory && v != LayoutImage {
				return p, status.Errorf(codes.InvalidArgument, "parameter %s=%.64q: want %s or %s", k, v, LayoutDirectory, LayoutImage)
			}
			p.layout = v
		case ParamPVCName, ParamPVCNamespace, ParamPVName:
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		more := ""
		if len(unknown) > 5 {
			more = fmt.Sprintf(" and %d more", len(unknown)-5)
			unknown = unknown[:5]
		}
		for i, k := range unknown {
			unknown[i] = fmt.Sprintf("%.64q", k)
		}
		return p, status.Errorf(codes.InvalidArgument, "unknown parameter %s%s; this driver accepts: %s",
			strings.Join(unknown, ", "), more, strings.Join(knownParameters, ", "))
	}
	return p, nil
}

// unixModeBits maps setuid/setgid/sticky bits to Go's FileMode bits.
func unixModeBits(m uint32) os.FileMode {
	var fm os.FileMode
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// supportedModes are the access modes a node-local volume can honour.
var supportedModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// checkCapability says why a capability cannot be served, or nil.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability is empty")
	}
	mode := c.GetAccessMode().GetMode()
	if !supportedModes[mode] {
		return fmt.Errorf("access mode %s is not supported: volumes live on one node (use a SINGLE_NODE_* mode, ReadWriteOnce or ReadWriteOncePod)", mode)
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Mount:
		// fs_type is checked against the volume's kind (servesKind).
		if _, err := mountutil.ParseFlags(t.Mount.GetMountFlags()); err != nil {
			return err
		}
	case *csi.VolumeCapability_Block:
	default:
		return fmt.Errorf("volume capability has no access type (mount or block)")
	}
	return nil
}

// nodeCapability checks the capability of a node call, serves saying why
// the family cannot serve it (checkCapability, nfsCapability). The spec's
// codes differ from the controller's: a missing or malformed capability is
// INVALID_ARGUMENT, one the volume cannot serve is FAILED_PRECONDITION
// ("exceeds capabilities").
func nodeCapability(c *csi.VolumeCapability, serves func(*csi.VolumeCapability) error) error {
	if c == nil || c.GetAccessMode() == nil || c.GetAccessType() == nil {
		return status.Error(codes.InvalidArgument, "volume capability with an access mode and an access type is required")
	}
	if err := serves(c); err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return nil
}

// validated answers a ValidateVolumeCapabilities of a volume created with
// the parameters recorded: not confirmed, with the reason, when serves says
// why the volume cannot serve one of the capabilities, or when the request
// names other class parameters.
func validated(req *csi.ValidateVolumeCapabilitiesRequest, recorded map[string]string, serves func(*csi.VolumeCapability) error) *csi.ValidateVolumeCapabilitiesResponse {
	for _, c := range req.GetVolumeCapabilities() {
		if err := serves(c); err != nil {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}
		}
	}
	if p := req.GetParameters(); len(p) > 0 && !sameClassParameters(p, recorded) {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "the volume was created with other parameters"}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}
}

// validateCapabilities returns InvalidArgument for a missing or unsupported
// capability.
func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return nil
}

// capacityFor picks a volume size from a capacity range: the required bytes,
// or the default (capped by the limit) when only a limit or nothing is given.
func capacityFor(cr *csi.CapacityRange, maxSize int64) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "capacity range has a negative size (required %d, limit %d)", req, lim)
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "capacity range: required bytes %d exceed limit bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = DefaultVolumeSize
		if lim > 0 && lim < size {
			size = lim
		}
	}
	if size > maxSize {
		return 0, status.Errorf(codes.OutOfRange, "requested %d bytes; the largest volume this driver makes is %d bytes (--max-volume-size)", size, maxSize)
	}
	return size, nil
}

func requireName(name string) error {
	if name == "" {
		return status.Error(codes.InvalidArgument, "name is required")
	}
	if len(name) > maxNameLen {
		return status.Errorf(codes.InvalidArgument, "name is %d bytes long; at most %d are accepted", len(name), maxNameLen)
	}
	if strings.ContainsRune(name, 0) {
		return status.Error(codes.InvalidArgument, "name contains a NUL byte")
	}
	return nil
}

// volumeIDOrNotFound checks an ID that must name an existing volume. A
// malformed ID cannot name one, so it is NotFound, never a path.
func volumeIDOrNotFound(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "volume ID is required")
	}
	if err := ids.ValidateVolumeID(id); err != nil {
		return status.Errorf(codes.NotFound, "volume not found: %v", err)
	}
	return nil
}

// requirePath checks a path the CO gives (staging or target): absolute,
// clean, bounded, with no NUL.
func requirePath(p, field string) error {
	if p == "" {
		return status.Errorf(codes.InvalidArgument, "%s is required", field)
	}
	if len(p) > maxPathLen || strings.ContainsRune(p, 0) {
		return status.Errorf(codes.InvalidArgument, "%s is too long or contains a NUL byte", field)
	}
	if !filepath.IsAbs(p) {
		return status.Errorf(codes.InvalidArgument, "%s %q is not an absolute path", field, p)
	}
	if filepath.Clean(p) != p {
		return status.Errorf(codes.InvalidArgument, "%s %q is not a clean path (no '..', '.', '//' or trailing '/')", field, p)
	}
	return nil
}

// snapshotIDOrNotFound checks an ID that must name an existing snapshot; a
// malformed one cannot, so it is NotFound, never a path.
func snapshotIDOrNotFound(id string) error {
	if id == "" {
		return status.Error(codes.InvalidArgument, "snapshot ID is required")
	}
	if err := ids.ValidateSnapshotID(id); err != nil {
		return status.Errorf(codes.NotFound, "snapshot not found: %v", err)
	}
	return nil
}
