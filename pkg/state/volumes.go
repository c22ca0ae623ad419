package state

import (
	"maps"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Phase is where a record stands in its life. Creating and Deleting are
// intents: the disk work they announce may or may not have happened.
type Phase string

const (
	// PhaseCreating: the record exists, its data may be partly made.
	PhaseCreating Phase = "creating"
	// PhaseReady: the data is complete and the client may have been told so.
	PhaseReady Phase = "ready"
	// PhaseDeleting: a delete started; the data may be partly removed.
	PhaseDeleting Phase = "deleting"
)

// Volume is one provisioned volume.
type Volume struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	CapacityBytes int64             `json:"capacityBytes"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	// AccessType is "mount" (a filesystem) or "block" (a raw device).
	AccessType string `json:"accessType"`
	// Layout is how a mount volume keeps its data: "directory" (also
	// every volume made before layouts existed, recorded as "") or
	// "image" (a filesystem image). Block volumes are a device file.
	Layout string `json:"layout,omitempty"`
	// FSType is an image volume's filesystem (ext4 or xfs).
	FSType string `json:"fsType,omitempty"`
	// Limit is what holds the volume to its size: btrfs-qgroup,
	// project-quota, image or none ("" for volumes made before sizes were
	// enforced: none).
	Limit string `json:"limit,omitempty"`
	// ProjectID is a directory volume's project, with Limit project-quota.
	ProjectID uint32 `json:"projectID,omitempty"`
	// Formatted is set once an image volume's filesystem exists (after
	// its first stage, or copied from a source): a blank image is
	// formatted, a formatted one never again.
	Formatted bool `json:"formatted,omitempty"`
	// NodeID is the node whose disk holds the data.
	NodeID    string    `json:"nodeID"`
	Phase     Phase     `json:"phase"`
	CreatedAt time.Time `json:"createdAt"`
	// The content the volume was made from, if any (schema 2).
	SourceSnapshotID string `json:"sourceSnapshotID,omitempty"`
	SourceVolumeID   string `json:"sourceVolumeID,omitempty"`
	// SourceNode is the node that held the source, when another node
	// than this one did (a restore or clone across nodes).
	SourceNode string `json:"sourceNode,omitempty"`
	// Ephemeral: a CSI inline volume, made by NodePublishVolume for one pod
	// and removed by its NodeUnpublishVolume. Its name is
	// "csi-ephemeral:" + the kubelet's volume handle.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// PodNamespace is an inline volume's pod's namespace, as the kubelet
	// said it (csi.storage.k8s.io/pod.namespace): inline volumes are
	// bounded per namespace. "" for inline volumes of earlier releases.
	PodNamespace string `json:"podNamespace,omitempty"`
	// GrowingTo is the size an expansion is making the volume, recorded
	// before the disk grows and cleared when the new capacity is: what the
	// volume may fill is set aside while (and if killed, after) it grows.
	GrowingTo int64 `json:"growingTo,omitempty"`
	// RequestedBytes is the size the CO asked for (required_bytes) when
	// the driver made the volume larger (a filesystem image's minimum, a
	// clone of a source larger than asked); 0 when the capacity is what
	// was asked, and after an expansion. A snapshot of the volume restores
	// at a request of this size (see Snapshot.SourceRequested).
	RequestedBytes int64 `json:"requestedBytes,omitempty"`
	// Mutable is what a VolumeAttributesClass set on the volume (the
	// mutable_parameters of its CreateVolume, then of each
	// ControllerModifyVolume, merged key by key): recorded before the
	// driver applies it, and applied again whenever the volume's device is
	// attached.
	Mutable map[string]string `json:"mutable,omitempty"`
}

// HasSource reports whether the volume is made from a snapshot or a volume.
func (v *Volume) HasSource() bool { return v.SourceSnapshotID != "" || v.SourceVolumeID != "" }

// GetVolume returns the volume with this ID, or ErrNotFound.
func (s *Store) GetVolume(id string) (*Volume, error) { return getByID[Volume](s, bucketVolumes, id) }

// GetVolumeByName returns the volume with this name, or ErrNotFound.
func (s *Store) GetVolumeByName(name string) (*Volume, error) {
	return getByName[Volume](s, bucketVolumes, bucketVolumeNames, name)
}

// PutVolume inserts or replaces a volume and its name index entry durably.
// It fails with ErrNameTaken if the name belongs to another volume.
func (s *Store) PutVolume(v *Volume) error {
	rec := *v
	return s.putNamed(bucketVolumes, bucketVolumeNames, "volume", rec.ID, rec.Name, &rec)
}

// SetVolumePhase changes only the phase of an existing volume.
func (s *Store) SetVolumePhase(id string, phase Phase) error {
	return s.modifyVolume(id, func(v *Volume) { v.Phase = phase })
}

// SetVolumeFormatted records that an image volume's filesystem exists.
func (s *Store) SetVolumeFormatted(id string) error {
	return s.modifyVolume(id, func(v *Volume) { v.Formatted = true })
}

// SetVolumeCapacity changes the recorded capacity of an existing volume, and
// ends an expansion in progress (GrowingTo).
// requested is what the CO asked for, recorded as RequestedBytes when it is
// less (a block volume grows in whole sectors; 0: the capacity itself).
func (s *Store) SetVolumeCapacity(id string, bytes, requested int64) error {
	if requested <= 0 || requested >= bytes {
		requested = 0
	}
	return s.modifyVolume(id, func(v *Volume) { v.CapacityBytes, v.GrowingTo, v.RequestedBytes = bytes, 0, requested })
}

// SetVolumeGrowingTo records the size an expansion is about to give a
// volume (0: none in progress).
func (s *Store) SetVolumeGrowingTo(id string, bytes int64) error {
	return s.modifyVolume(id, func(v *Volume) { v.GrowingTo = bytes })
}

// SetVolumeMutable records the mutable parameters of an existing volume
// (replacing those on record).
func (s *Store) SetVolumeMutable(id string, mutable map[string]string) error {
	return s.modifyVolume(id, func(v *Volume) { v.Mutable = maps.Clone(mutable) })
}

func (s *Store) modifyVolume(id string, change func(*Volume)) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVolumes)
		var v Volume
		if err := getJSON(b, id, &v); err != nil {
			return err
		}
		change(&v)
		return putJSON(b, id, &v)
	})
}

// DeleteVolume removes a volume, its name index entry and its publications.
// Deleting a missing volume is not an error.
func (s *Store) DeleteVolume(id string) error {
	return s.update(func(tx *bolt.Tx) error {
		found, err := deleteNamed(tx, bucketVolumes, bucketVolumeNames, id)
		if err != nil || !found {
			return err
		}
		return deletePublicationsOf(tx, id)
	})
}

// ListVolumes returns up to limit volumes (all if limit <= 0) that match keep,
// in ID order, starting at the first ID >= start. next is the ID to start the
// following page at, or "" when there is none.
func (s *Store) ListVolumes(start string, limit int, keep func(*Volume) bool) ([]*Volume, string, error) {
	return list(s, bucketVolumes, start, limit, keep)
}

// VolumeExists reports whether a volume ID is known, in any phase.
func (s *Store) VolumeExists(id string) (bool, error) {
	found := false
	err := s.view(func(tx *bolt.Tx) error {
		found = tx.Bucket(bucketVolumes).Get([]byte(id)) != nil
		return nil
	})
	return found, err
}
