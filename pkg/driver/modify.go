package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Mutable parameters: what a VolumeAttributesClass sets on a volume, at its
// CreateVolume (mutable_parameters) and later by ControllerModifyVolume,
// without making the volume again. Each takes effect on the live volume.
// As the spec says, only the keys a call names change; a key it leaves out
// keeps its value.
const (
	// ParamReadAheadKiB is the read-ahead of an image or block volume's
	// device, in KiB: what the kernel reads beyond a sequential read, from
	// the device and so in the files of a filesystem on it. Databases that
	// read at random want it small; streaming readers want it large.
	ParamReadAheadKiB = "readAheadKiB"
	// MaxReadAheadKiB bounds it: 16 MiB ahead of every reader is already
	// more than any published tuning guide asks for.
	MaxReadAheadKiB = 16384
)

// hostpathMutableParameters and nfsMutableParameters are the keys each
// family's volumes take in a VolumeAttributesClass; the csi.storage.k8s.io/
// keys csi-resizer adds with --extra-modify-metadata are accepted and
// ignored.
var (
	hostpathMutableParameters = []string{ParamReadAheadKiB}
	nfsMutableParameters      = []string{ParamOnDelete}
)

// ControllerModifyVolume goes by the volume ID, after the checks every
// family needs.
func (d *Driver) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	if d.cfg.NoModifyVolume {
		return nil, status.Error(codes.Unimplemented, "ControllerModifyVolume is off (--modify-volume=false)")
	}
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is required")
	}
	return d.byVolume(req.GetVolumeId()).ControllerModifyVolume(ctx, req)
}

// checkMutableSize bounds a request's mutable parameters as every other map
// of a request is bounded.
func checkMutableSize(params map[string]string) error {
	if len(params) > maxParams {
		return status.Errorf(codes.InvalidArgument, "too many mutable parameters: %d (at most %d)", len(params), maxParams)
	}
	for k, v := range params {
		if len(k) > maxParamKeyLen || len(v) > maxParamValueLen {
			return status.Errorf(codes.InvalidArgument, "mutable parameter %.64q: key or value too long (key at most %d bytes, value at most %d)", k, maxParamKeyLen, maxParamValueLen)
		}
	}
	return nil
}

// unknownMutable is the InvalidArgument for keys a volume does not take.
func unknownMutable(unknown []string, what string, accepted []string) error {
	sort.Strings(unknown)
	for i, k := range unknown {
		unknown[i] = fmt.Sprintf("%.64q", k)
	}
	if len(unknown) > 5 {
		unknown = append(unknown[:5], fmt.Sprintf("and %d more", len(unknown)-5))
	}
	return status.Errorf(codes.InvalidArgument, "mutable parameter %s cannot be set on %s; it takes: %s",
		strings.Join(unknown, ", "), what, strings.Join(accepted, ", "))
}

// parseHostpathMutable checks the mutable parameters of a hostpath volume
// of kind k and returns those the driver keeps (the csi.storage.k8s.io/
// keys left out).
func parseHostpathMutable(params map[string]string, k volumeKind) (map[string]string, error) {
	if err := checkMutableSize(params); err != nil {
		return nil, err
	}
	out := map[string]string{}
	var unknown []string
	for key, v := range params {
		switch {
		case strings.HasPrefix(key, "csi.storage.k8s.io/"):
		case key == ParamReadAheadKiB:
			if k.layout == LayoutDirectory {
				return nil, status.Errorf(codes.InvalidArgument, "mutable parameter %s is for image and block volumes, whose data is a device of their own; a directory volume's data is the data directory's filesystem, shared with every other volume", key)
			}
			if _, err := parseReadAhead(v); err != nil {
				return nil, status.Errorf(codes.InvalidArgument, "mutable parameter %s=%.64q: %v", key, v, err)
			}
			out[key] = v
		default:
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 {
		return nil, unknownMutable(unknown, "a "+k.String()+" volume", hostpathMutableParameters)
	}
	return out, nil
}

func parseReadAhead(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > MaxReadAheadKiB {
		return 0, fmt.Errorf("want a whole number of KiB from 0 to %d", MaxReadAheadKiB)
	}
	if page := uint64(os.Getpagesize() / 1024); n%page != 0 {
		// The kernel keeps read-ahead in pages and would drop the rest.
		return 0, fmt.Errorf("want a multiple of %d (the kernel reads ahead in %d KiB pages)", page, page)
	}
	return uint32(n), nil
}

func (d *hostpathDriver) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := volumeIDOrNotFound(id); err != nil {
		return nil, err
	}
	// The volume stays while it changes (a delete waits), and its node
	// calls wait too: a stage attaching the device reads what is recorded
	// here and applies it, so the two never cross.
	unlock, err := d.lockForNode(ctx, id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := d.store.GetVolume(id)
	if errors.Is(err, state.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist", id)
	}
	if err != nil {
		return nil, stateError(err)
	}
	if v.Phase != state.PhaseReady {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is %s, not ready", id, v.Phase)
	}
	if v.Ephemeral {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is an inline volume of one pod; only a claim's volume takes a VolumeAttributesClass", id)
	}
	asked, err := parseHostpathMutable(req.GetMutableParameters(), kindOf(v))
	if err != nil {
		return nil, err
	}
	merged := maps.Clone(v.Mutable)
	if merged == nil {
		merged = map[string]string{}
	}
	maps.Copy(merged, asked)
	// Recorded first: a kill after this line leaves the new values on
	// record, applied by the retry the CO makes (it had no answer) and by
	// every later attach.
	if !maps.Equal(merged, v.Mutable) {
		if err := d.store.SetVolumeMutable(id, merged); err != nil {
			return nil, stateError(err)
		}
		v.Mutable = merged
	}
	if h := d.dataHealth(v); len(h) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s: %s", id, h[0].GetMessage())
	}
	var stage *state.Publication
	pubs, err := d.store.PublicationsOf(id)
	if err != nil {
		return nil, stateError(err)
	}
	for _, p := range pubs {
		if p.Kind == state.KindStage && p.NodeID == d.cfg.NodeID && p.Phase == state.PhaseMounted {
			stage = p
		}
	}
	n, changed, err := d.applyMutable(v, stage)
	if changed {
		if perr := d.store.PutPublication(stage); perr != nil {
			return nil, stateError(perr)
		}
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	klog.V(2).InfoS("Volume modified", "volumeID", id, "mutable", merged, "devicesChanged", n)
	return &csi.ControllerModifyVolumeResponse{}, nil
}

// applyMutable makes what v has on record true of each device its data is
// attached to now (none while no pod on this node uses it): the next attach
// applies it then. stage is the volume's stage record on this node, if any:
// the device's read-ahead before the first change goes there (the caller
// saves it when changed reports so), for the unstage to put back. It
// returns how many devices it changed.
func (d *hostpathDriver) applyMutable(v *state.Volume, stage *state.Publication) (n int, changed bool, err error) {
	ra, ok := v.Mutable[ParamReadAheadKiB]
	if !ok || kindOf(v).layout == LayoutDirectory {
		return 0, false, nil
	}
	kib, err := parseReadAhead(ra)
	if err != nil {
		return 0, false, fmt.Errorf("recorded %s=%q: %w", ParamReadAheadKiB, ra, err)
	}
	if stage != nil && stage.ReadAheadBefore == nil {
		before, attached, err := d.vols.ReadAhead(v.ID)
		if err != nil {
			return 0, false, fmt.Errorf("read the read-ahead of %s: %w", v.ID, err)
		}
		if attached {
			stage.ReadAheadBefore, changed = &before, true
		}
	}
	n, err = d.vols.SetReadAhead(v.ID, kib)
	return n, changed, err
}

// restoreReadAhead puts back the read-ahead a stage found on the volume's
// device, before the stage is undone. A failure is logged: it costs the
// device's next user speed, never data.
func (d *hostpathDriver) restoreReadAhead(v *state.Volume, stage *state.Publication) {
	if stage.ReadAheadBefore == nil {
		return
	}
	if _, err := d.vols.SetReadAhead(v.ID, *stage.ReadAheadBefore); err != nil {
		klog.ErrorS(err, "Cannot put back the read-ahead of a volume's device; its next user reads ahead as this volume did", "volumeID", v.ID)
	}
}

// parseNFSMutable checks the mutable parameters of an NFS volume.
func parseNFSMutable(params map[string]string) (map[string]string, error) {
	if err := checkMutableSize(params); err != nil {
		return nil, err
	}
	out := map[string]string{}
	var unknown []string
	for k, v := range params {
		switch {
		case strings.HasPrefix(k, "csi.storage.k8s.io/"):
		case k == ParamOnDelete:
			if err := checkOnDelete("mutable parameter", v); err != nil {
				return nil, err
			}
			out[k] = v
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		return nil, unknownMutable(unknown, "an NFS volume", nfsMutableParameters)
	}
	return out, nil
}

func (d *nfsDriver) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	id := req.GetVolumeId()
	v, err := ids.ParseNFSVolumeID(id)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist: %v", id, err)
	}
	asked, err := parseNFSMutable(req.GetMutableParameters())
	if err != nil {
		return nil, err
	}
	// Exclusive, as a delete is: the delete reads onDelete from the record
	// this call rewrites.
	unlock, err := d.lock(ctx, "vol", id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	x, err := d.useExport(ctx, v.Server, v.Share)
	if err != nil {
		return nil, err
	}
	defer x.Release()
	rec, err := x.GetVolume(ctx, v.Key)
	if errors.Is(err, nfs.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist on %s", id, x.Name())
	}
	if err != nil {
		return nil, nfsError("read volume record", err)
	}
	if rec.ID != id {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist on %s (its record names %s)", id, x.Name(), rec.ID)
	}
	if rec.Phase != nfs.PhaseReady {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is %s, not ready", id, rec.Phase)
	}
	if od, ok := asked[ParamOnDelete]; ok && od != rec.OnDelete {
		was := rec.OnDelete
		rec.OnDelete = od
		// One record, replaced whole (written aside and renamed): a kill
		// leaves the old one or the new one.
		if err := x.PutVolume(ctx, rec, v.Key); err != nil {
			return nil, nfsError("write volume record", err)
		}
		klog.V(2).InfoS("NFS volume modified", "volumeID", id, "onDelete", od, "was", was)
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}
