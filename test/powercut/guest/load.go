package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/hostpath-csi/hostpath-csi/test/powercut/proto"
)

// remoteWorkers is how many workers make restores across nodes (a tenth
// of their calls): as many as the driver receives at once by default
// (--max-concurrent-transfers), so that a cut finds them transferring
// rather than queued, and a transfer's seconds do not starve the rest of
// the load.
const remoteWorkers = 2

// worker is one load client with the objects it owns.
type worker struct {
	g     *guest
	n     int
	rng   *mrand.Rand
	vols  []item
	snaps []item
}

// work makes calls until the power goes or a call fails. Every call is
// announced (intent, sent out before the call starts) and acknowledged once
// answered; a call the driver refuses while it is up is a failure.
func (g *guest) work(n int, vols, snaps []item) {
	seed := uint64(time.Now().UnixNano())
	w := &worker{g: g, n: n, rng: mrand.New(mrand.NewPCG(seed, uint64(n))), vols: vols, snaps: snaps}
	for i := 0; ; i++ {
		name := fmt.Sprintf("b%d-w%d-%d", g.plan.Boot, n, i)
		r := w.rng.IntN(100)
		// Keep the live sets small, so that each boot's check stays quick.
		switch {
		case len(w.vols) > 5:
			r = 80
		case len(w.snaps) > 3:
			r = 95
		}
		var err error
		switch {
		case len(w.vols) == 0 || r < 14:
			err = w.create(name, nil, "")
		case r < 24 && n < remoteWorkers:
			// A restore across nodes: the sender's seed.
			err = w.create(name, &item{name: "seed", id: g.seed.SnapshotID, sum: g.seed.Sum}, proto.RemoteSeed)
		case r < 43:
			err = w.write(w.pick(w.vols))
		case r < 55:
			err = w.snapshot("s"+name, w.pick(w.vols))
		case r < 65 && len(w.snaps) > 0:
			s := w.pick(w.snaps)
			err = w.create(name, s, "snap:"+s.name)
		case r < 75:
			v := w.pick(w.vols)
			err = w.create(name, v, "vol:"+v.name)
		case r < 88:
			err = w.deleteVolume(w.rng.IntN(len(w.vols)))
		case len(w.snaps) > 0:
			err = w.deleteSnapshot(w.rng.IntN(len(w.snaps)))
		}
		if err != nil {
			g.fail("worker %d: %v (while the driver was up)", n, err)
			return
		}
	}
}

func (w *worker) pick(items []item) *item { return &items[w.rng.IntN(len(items))] }

func (w *worker) intent(e proto.Event) {
	e.Kind, e.Worker = proto.KindIntent, w.n
	w.g.out.emit(e, true)
}

func (w *worker) ack(e proto.Event) {
	e.Kind, e.Worker = proto.KindAck, w.n
	w.g.out.emit(e, false)
}

// create makes an empty volume (src nil), a restore (srcRef "snap:", or
// proto.RemoteSeed across nodes) or a clone ("vol:"); the new volume must
// hold its source's data.
func (w *worker) create(name string, src *item, srcRef string) error {
	sum := proto.None
	req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}}
	if src != nil {
		sum = src.sum
		ids := map[string]string{src.name: src.id}
		if srcRef[0] == 'v' {
			req = w.g.createRequest(name, srcRef, ids, nil)
		} else {
			req = w.g.createRequest(name, srcRef, nil, ids)
		}
	}
	w.intent(proto.Event{Op: proto.OpCreateVol, Name: name, Src: srcRef, Sum: sum})
	r, err := w.g.createVolume(req, srcRef)
	if err != nil {
		return fmt.Errorf("CreateVolume %s from %q: %w", name, srcRef, err)
	}
	id := r.GetVolume().GetVolumeId()
	w.ack(proto.Event{Op: proto.OpCreateVol, Name: name, ID: id, Src: srcRef, Sum: sum})
	w.vols = append(w.vols, item{name: name, id: id, sum: sum})
	return nil
}

// write publishes the volume as a pod would use it and replaces its data
// file the way a careful application does (write a new file, fsync it,
// rename it over the old one, fsync the directory), so that after a power
// cut the volume holds the old data or the new, and the new for certain
// once the write was acknowledged.
func (w *worker) write(v *item) error {
	c, cancel := ctx()
	defer cancel()
	target, err := w.g.mount(c, v.id)
	if err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	buf := make([]byte, 4096+w.rng.IntN(256<<10))
	for i := 0; i+8 <= len(buf); i += 8 {
		u := w.rng.Uint64()
		for j := range 8 {
			buf[i+j] = byte(u >> (8 * j))
		}
	}
	s := sha256.Sum256(buf)
	sum := hex.EncodeToString(s[:])
	w.intent(proto.Event{Op: proto.OpWrite, Name: v.name, ID: v.id, Sum: sum})
	if err := replaceFile(target, "data", buf); err != nil {
		return fmt.Errorf("write into volume %s: %w", v.name, err)
	}
	w.ack(proto.Event{Op: proto.OpWrite, Name: v.name, ID: v.id, Sum: sum})
	v.sum = sum
	if err := w.g.unmount(c, v.id); err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	return nil
}

func replaceFile(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (w *worker) snapshot(name string, v *item) error {
	w.intent(proto.Event{Op: proto.OpSnapshot, Name: name, Src: "vol:" + v.name, Sum: v.sum})
	c, cancel := ctx()
	defer cancel()
	r, err := w.g.ctrl.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: v.id})
	if err != nil {
		return fmt.Errorf("CreateSnapshot %s of %s: %w", name, v.name, err)
	}
	if !r.GetSnapshot().GetReadyToUse() {
		return fmt.Errorf("CreateSnapshot %s answered a snapshot not ready to use", name)
	}
	id := r.GetSnapshot().GetSnapshotId()
	w.ack(proto.Event{Op: proto.OpSnapshot, Name: name, ID: id, Src: "vol:" + v.name, Sum: v.sum})
	w.snaps = append(w.snaps, item{name: name, id: id, sum: v.sum})
	return nil
}

func (w *worker) deleteVolume(i int) error {
	v := w.vols[i]
	w.intent(proto.Event{Op: proto.OpDeleteVol, Name: v.name, ID: v.id})
	c, cancel := ctx()
	defer cancel()
	if _, err := w.g.ctrl.DeleteVolume(c, &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
		return fmt.Errorf("DeleteVolume %s (%s): %w", v.id, v.name, err)
	}
	w.ack(proto.Event{Op: proto.OpDeleteVol, Name: v.name, ID: v.id})
	w.vols = slices.Delete(w.vols, i, i+1)
	return nil
}

func (w *worker) deleteSnapshot(i int) error {
	s := w.snaps[i]
	w.intent(proto.Event{Op: proto.OpDeleteSnp, Name: s.name, ID: s.id})
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := w.g.ctrl.DeleteSnapshot(c, &csi.DeleteSnapshotRequest{SnapshotId: s.id}); err != nil {
		return fmt.Errorf("DeleteSnapshot %s (%s): %w", s.id, s.name, err)
	}
	w.ack(proto.Event{Op: proto.OpDeleteSnp, Name: s.name, ID: s.id})
	w.snaps = slices.Delete(w.snaps, i, i+1)
	return nil
}
