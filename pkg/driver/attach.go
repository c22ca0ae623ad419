package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/mountutil"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// What a publication record stands for on the node, by the volume's kind:
//
//	               stage (staging path)               publish (pod's target)
//	directory      bind mount of the volume directory  bind mount of the staging path
//	image          the image's filesystem, mounted      bind mount of the staging path
//	block          a loop device holding the file      bind mount of the device onto a file
//
// inPlace, attach and detach below are the only places that know this, and
// hostpathMounts tells the mount journal (journal.go) with them.

// hostpathMounts are the mounts of hostpath volume v, for the journal.
type hostpathMounts struct {
	d *hostpathDriver
	v *state.Volume
}

func (d *hostpathDriver) mounts(v *state.Volume) hostpathMounts { return hostpathMounts{d: d, v: v} }

func (hostpathMounts) mountPoint(path string) (bool, error) { return hostpathMountPoint(path) }

func (m hostpathMounts) present(_ context.Context, rec *state.Publication) (bool, error) {
	present, err := m.d.inPlace(m.v, rec)
	if err != nil {
		return false, status.Errorf(codes.Internal, "check %s of volume %s at %s: %v", rec.Kind, m.v.ID, rec.Path, err)
	}
	return present, nil
}

func (m hostpathMounts) clear(_ context.Context, rec *state.Publication) error {
	if err := m.d.detach(m.v, rec); err != nil {
		return status.Errorf(codes.Internal, "clear previous %s: %v", rec.Kind, err)
	}
	return nil
}

func (m hostpathMounts) unmount(_ context.Context, pub *state.Publication) error {
	if err := m.d.detach(m.v, pub); err != nil {
		return status.Errorf(codes.Internal, "unmount volume %s at %s: %v", pub.VolumeID, pub.Path, err)
	}
	return nil
}

func (hostpathMounts) mountFailed(pub *state.Publication, err error) error {
	return status.Errorf(codes.Internal, "mount volume %s at %s: %v", pub.VolumeID, pub.Path, err)
}

// hostpathMountPoint reports whether path is a mount point; it sees bind
// mounts of a directory of the same filesystem. A path that does not exist
// is not one.
func hostpathMountPoint(path string) (bool, error) {
	mounted, err := mountutil.IsMountPoint(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return mounted, err
}

// inPlace reports whether what pub records is really there.
func (d *hostpathDriver) inPlace(v *state.Volume, pub *state.Publication) (bool, error) {
	if kindOf(v).block() && pub.Kind == state.KindStage {
		devs, err := d.vols.BlockDevices(v.ID)
		if err != nil {
			return false, err
		}
		for _, dev := range devs {
			if dev.Path == pub.Device {
				return true, nil
			}
		}
		return false, nil
	}
	return hostpathMountPoint(pub.Path)
}

// detach undoes what pub records (whatever part of it is there) and removes
// a publish target, which the driver made.
func (d *hostpathDriver) detach(v *state.Volume, pub *state.Publication) error {
	switch {
	case pub.Kind == state.KindPublish && v.Ephemeral && kindOf(v).layout == LayoutImage:
		// An inline image volume is mounted at its target itself.
		if err := d.vols.UnmountImage(v.ID, pub.Path); err != nil {
			return err
		}
		return mountutil.Unmount(pub.Path, true)
	case pub.Kind == state.KindPublish:
		return mountutil.Unmount(pub.Path, true)
	case kindOf(v).block():
		d.restoreReadAhead(v, pub)
		return d.vols.DetachBlock(v.ID)
	case kindOf(v).layout == LayoutImage:
		d.restoreReadAhead(v, pub)
		return d.vols.UnmountImage(v.ID, pub.Path)
	}
	return mountutil.Unmount(pub.Path, false)
}

// stage makes pub (a stage record of v, already recorded as mounting)
// real: it binds a directory, mounts an image (formatting it the first time,
// with the class's mountPermissions on its root) or attaches a block file.
func (d *hostpathDriver) stage(v *state.Volume, pub *state.Publication) error {
	k := kindOf(v)
	if !k.block() {
		if err := os.MkdirAll(pub.Path, 0o750); err != nil {
			return fmt.Errorf("create staging path: %w", err)
		}
	}
	switch k.layout {
	case layoutBlock:
		dev, err := d.vols.AttachBlock(v.ID, false)
		if err != nil {
			return err
		}
		pub.Device = dev.Path
		if _, _, err := d.applyMutable(v, pub); err != nil {
			d.restoreReadAhead(v, pub)
			_ = d.vols.DetachBlock(v.ID)
			return err
		}
		return nil
	case LayoutImage:
		if err := d.mountImage(v, pub.Path, pub.MountFlags, false); err != nil {
			return err
		}
		if _, _, err := d.applyMutable(v, pub); err != nil {
			d.restoreReadAhead(v, pub)
			_ = d.vols.UnmountImage(v.ID, pub.Path)
			return err
		}
		return nil
	}
	return mountutil.Bind(d.vols.Path(v.ID), pub.Path, false, tenantFlags)
}

// mountImage mounts an image volume's filesystem at path; the first mount
// formats it and gives its root the class's mountPermissions. A blank image
// asked read-only (an inline volume with readOnly: true) cannot be formatted
// through a read-only device nor have its root's mode set on a read-only
// mount: it is formatted read-write first, then mounted read-only.
func (d *hostpathDriver) mountImage(v *state.Volume, path string, flags []string, readOnly bool) error {
	if readOnly && !v.Formatted {
		if err := d.mountImage(v, path, flags, false); err != nil {
			return err
		}
		if err := d.vols.UnmountImage(v.ID, path); err != nil {
			return fmt.Errorf("unmount the new filesystem to mount it read-only: %w", err)
		}
	}
	m, err := d.vols.MountImage(v.ID, path, kindOf(v).fsType, flags, readOnly, v.Formatted)
	if err != nil {
		return err
	}
	if m.Formatted || !v.Formatted {
		params, _ := parseParameters(v.Parameters)
		if err := os.Chmod(path, params.mode); err != nil {
			_ = d.vols.UnmountImage(v.ID, path)
			return fmt.Errorf("set the mode of the new filesystem's root: %w", err)
		}
		if err := d.store.SetVolumeFormatted(v.ID); err != nil {
			_ = d.vols.UnmountImage(v.ID, path)
			return err
		}
		v.Formatted = true
	}
	return nil
}

// publish makes pub (a publish record, recorded as mounting) real: a bind
// mount of the staging path, or of a block volume's device onto a file at
// the target.
func (d *hostpathDriver) publish(v *state.Volume, pub *state.Publication, stage *state.Publication) error {
	if !kindOf(v).block() {
		if err := os.MkdirAll(pub.Path, 0o750); err != nil {
			return fmt.Errorf("create target path: %w", err)
		}
		return mountutil.Bind(pub.StagingPath, pub.Path, pub.ReadOnly, withTenantFlags(pub.MountFlags))
	}
	// The kubelet names a file for a block volume: the device node is bound
	// onto it.
	if err := os.MkdirAll(filepath.Dir(pub.Path), 0o750); err != nil {
		return fmt.Errorf("create target directory: %w", err)
	}
	f, err := os.OpenFile(pub.Path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return fmt.Errorf("create target file: %w", err)
	}
	f.Close()
	if stage.Device == "" {
		return status.Errorf(codes.FailedPrecondition, "block volume %s is staged without a device; unstage and stage it again", v.ID)
	}
	if err := mountutil.Bind(stage.Device, pub.Path, pub.ReadOnly, nil); err != nil {
		_ = os.Remove(pub.Path)
		return err
	}
	return nil
}

// reattachBlock gives a block volume's stage record, whose device is gone
// (the node rebooted, or someone detached it), a device again: a volume
// state knows as staged is attached.
func (d *hostpathDriver) reattachBlock(v *state.Volume, pub *state.Publication) error {
	dev, err := d.vols.AttachBlock(v.ID, false)
	if err != nil {
		return err
	}
	save := false
	if dev.Path != pub.Device {
		klog.InfoS("Attached a staged block volume again", "volumeID", v.ID, "device", dev.Path, "was", pub.Device)
		// Another device (after a reboot): what it read ahead before is
		// its own.
		pub.Device, pub.ReadAheadBefore, save = dev.Path, nil, true
	}
	_, changed, err := d.applyMutable(v, pub)
	if save || changed {
		if perr := d.store.PutPublication(pub); perr != nil {
			return perr
		}
	}
	return err
}
