package main

// The sender: a second driver on the same disk that holds the seed
// snapshot, which the judged driver restores across nodes (it fetches the
// seed over the authenticated transfer channel, on loopback).

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/test/powercut/proto"
)

// seedInfo is what seedFile keeps: the sender's snapshot and its data.
type seedInfo struct {
	SnapshotID string `json:"snapshotId"`
	Sum        string `json:"sum"`
	Size       int64  `json:"size"`
}

// upLoopback brings the loopback interface up if it is down: the guest is
// a minimal init, and the drivers talk to each other only over loopback.
func upLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("flags of lo: %w", err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	fmt.Printf("guest: brought lo up\n")
	return nil
}

// ensureKeys makes the transfer key file at the first boot (and keeps it
// on the disk for the later ones).
func ensureKeys() error {
	if _, err := os.Stat(keysFile); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	return writeDurable(keysFile, []byte("powercut "+base64.StdEncoding.EncodeToString(k)+"\n"), 0o400)
}

// writeDurable writes a file whole and on disk: a temporary file, fsynced,
// renamed into place, its directory fsynced.
func writeDurable(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
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
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// ensureSeed makes the seed at the first boot: a volume on the sender with
// seedBytes of random data, and a snapshot of it. Later boots read which
// snapshot it is from seedFile and check that the sender still lists it.
func (g *guest) ensureSeed() error {
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := os.ReadFile(seedFile)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &g.seed); err != nil {
			return fmt.Errorf("%s: %w", seedFile, err)
		}
		r, err := g.sender.ctrl.ListSnapshots(c, &csi.ListSnapshotsRequest{SnapshotId: g.seed.SnapshotID})
		if err != nil {
			return fmt.Errorf("the sender's ListSnapshots of the seed %s: %w", g.seed.SnapshotID, err)
		}
		if len(r.GetEntries()) != 1 || !r.GetEntries()[0].GetSnapshot().GetReadyToUse() {
			return fmt.Errorf("the sender does not list the seed %s ready: %v", g.seed.SnapshotID, r.GetEntries())
		}
		g.out.emit(proto.Event{Kind: proto.KindSeed, ID: g.seed.SnapshotID, Sum: g.seed.Sum, Size: g.seed.Size, Msg: "kept"}, false)
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	v, err := g.sender.ctrl.CreateVolume(c, &csi.CreateVolumeRequest{Name: "seed", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * seedBytes}})
	if err != nil {
		return fmt.Errorf("the sender's CreateVolume of the seed: %w", err)
	}
	buf := make([]byte, seedBytes)
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return err
	}
	_, _ = mrand.NewChaCha8(key).Read(buf) // never fails
	sum := sha256.Sum256(buf)
	dir := filepath.Join(senderDir, "data", "volumes", v.GetVolume().GetVolumeId())
	if err := replaceFile(dir, "data", buf); err != nil {
		return fmt.Errorf("write the seed's data: %w", err)
	}
	s, err := g.sender.ctrl.CreateSnapshot(c, &csi.CreateSnapshotRequest{Name: "seed", SourceVolumeId: v.GetVolume().GetVolumeId()})
	if err != nil {
		return fmt.Errorf("the sender's CreateSnapshot of the seed: %w", err)
	}
	if !s.GetSnapshot().GetReadyToUse() {
		return errors.New("the sender's seed snapshot is not ready to use")
	}
	g.seed = seedInfo{SnapshotID: s.GetSnapshot().GetSnapshotId(), Sum: hex.EncodeToString(sum[:]), Size: seedBytes}
	b, err = json.Marshal(g.seed)
	if err != nil {
		return err
	}
	if err := writeDurable(seedFile, b, 0o644); err != nil {
		return fmt.Errorf("record the seed: %w", err)
	}
	g.out.emit(proto.Event{Kind: proto.KindSeed, ID: g.seed.SnapshotID, Sum: g.seed.Sum, Size: g.seed.Size, Msg: "made"}, false)
	return nil
}

// watchPartial reports what the judged driver's partial/ holds, twice a
// second while it changes, so that the host knows which transfers (and
// copies) were under way at the cut and how far they had got: what a
// power cut leaves on the disk of a receive is not that (the driver syncs
// only at its end).
func (g *guest) watchPartial() {
	last := ""
	for ; ; time.Sleep(500 * time.Millisecond) {
		entries, _ := os.ReadDir(filepath.Join(data, "partial"))
		var ev proto.Event
		for _, e := range entries {
			ev.Entries = append(ev.Entries, fmt.Sprintf("%s %d", e.Name(), treeBytes(filepath.Join(data, "partial", e.Name()))))
		}
		if now := fmt.Sprint(ev.Entries); now != last {
			last = now
			ev.Kind = proto.KindProgress
			g.out.emit(ev, false)
		}
	}
}

// treeBytes is the size of the regular files under dir.
func treeBytes(dir string) int64 {
	var size int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				size += info.Size()
			}
		}
		return nil
	})
	return size
}

// reportLeftovers reports what the judged driver's partial/ holds before
// it starts (its start-up empties it): a receive the cut interrupted is
// there with the bytes it had on disk.
func (g *guest) reportLeftovers() {
	dir := filepath.Join(data, "partial")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // the first boot: no data directory yet
	}
	for _, e := range entries {
		g.out.emit(proto.Event{Kind: proto.KindLeftover, Dir: "partial", ID: e.Name(), Size: treeBytes(filepath.Join(dir, e.Name()))}, false)
	}
}

var rolledBack = regexp.MustCompile(`"Rolled back a create that a crash interrupted" volumeID="([^"]*)" name="([^"]*)"`)

// reportRolledBack reports the creates the judged driver's start-up rolled
// back, from its log.
func (g *guest) reportRolledBack() {
	b, err := os.ReadFile(logf)
	if err != nil {
		return
	}
	for _, m := range rolledBack.FindAllStringSubmatch(string(b), -1) {
		g.out.emit(proto.Event{Kind: proto.KindRolledBack, ID: m[1], Name: m[2]}, false)
	}
}

// createVolume calls CreateVolume with the guest's deadline. A restore
// across nodes is repeated as csi-provisioner repeats it: the driver runs
// the transfer detached, so a call that runs out of time (DEADLINE_EXCEEDED)
// or finds it still running (ABORTED) is made again, by name, until it
// answers (for 4 minutes at most).
func (g *guest) createVolume(req *csi.CreateVolumeRequest, src string) (*csi.CreateVolumeResponse, error) {
	if src != proto.RemoteSeed {
		c, cancel := ctx()
		defer cancel()
		return g.ctrl.CreateVolume(c, req)
	}
	c, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for {
		call, cancel := context.WithTimeout(c, time.Minute)
		r, err := g.ctrl.CreateVolume(call, req)
		cancel()
		if code := status.Code(err); (code != codes.Aborted && code != codes.DeadlineExceeded) || c.Err() != nil {
			return r, err
		}
		fmt.Printf("guest: CreateVolume %s from %s: %v; retrying\n", req.GetName(), src, err)
		time.Sleep(200 * time.Millisecond)
	}
}
