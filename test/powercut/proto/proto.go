// Package proto is what the power-cut test's host and its guest program
// say to each other: the plan the host hands the guest on a raw disk at
// each boot, and the events the guest reports, one line each, on its
// second serial port.
package proto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
)

// Object states in the host's record.
const (
	Acked    = "acked"    // the guest's call was answered and the host saw the answer
	Creating = "creating" // a create was started; no answer reached the host
	Deleting = "deleting" // a delete was started; no answer reached the host
)

// None is the Sum of a volume or snapshot without a data file.
const None = "none"

// Obj is one volume or snapshot in the host's record.
type Obj struct {
	Name  string `json:"name"`
	ID    string `json:"id,omitempty"` // empty while a create has no answer
	State string `json:"state"`
	// Src says what a volume or snapshot was made from: "" (an empty
	// volume), "vol:<name>", "snap:<name>" or "remote:<name>" (a restore
	// of a snapshot another node's driver holds, fetched from it; see
	// RemoteSeed).
	Src string `json:"src,omitempty"`
	// Sums are the data checksums the object may hold: one, or two (old
	// and new) after a write whose answer never reached the host.
	Sums []string `json:"sums"`
	// Boot is the boot during which it was made (for messages).
	Boot int `json:"boot"`
}

// Plan is what the guest is told at boot.
type Plan struct {
	Boot    int    `json:"boot"`
	FS      string `json:"fs"`      // ext4 or xfs: the data disk's filesystem
	Final   bool   `json:"final"`   // check, then power off instead of loading
	Workers int    `json:"workers"` // concurrent clients in the load phase
	Vols    []Obj  `json:"vols"`
	Snaps   []Obj  `json:"snaps"`
}

// Op names.
const (
	OpCreateVol = "createvol" // CreateVolume: empty, restore (Src snap:, or remote: across nodes) or clone (Src vol:)
	OpWrite     = "write"     // stage, publish, write data and fsync, unpublish, unstage
	OpSnapshot  = "snapshot"
	OpDeleteVol = "delvol"
	OpDeleteSnp = "delsnap"
)

// Event kinds, in the order a boot sends them.
const (
	KindBoot       = "boot"       // the guest program runs
	KindSeed       = "seed"       // the sender's snapshot restores across nodes fetch: ID, Sum, Size; Msg: made (this boot) or kept
	KindLeftover   = "leftover"   // before the driver starts: an entry of its partial/ (Dir), ID, Size (bytes in it)
	KindStarted    = "started"    // the driver answers Probe; Msg: start-up seconds
	KindRolledBack = "rolledback" // the driver's start-up rolled back the create of Name (ID): its log says so
	KindDir        = "dir"        // Dir: a subdirectory of the data directory; Entries
	KindObsVol     = "obsvol"     // a listed volume: ID, Sum (read through a publish), Size, Health, Err
	KindObsSnap    = "obssnap"    // a listed snapshot: ID, Sum (read from its directory), Size, Ready, Err
	KindIntent     = "intent"     // a call is about to be made (sent out before the call starts)
	KindAck        = "ack"        // the call was answered
	KindState      = "state"      // after the check: Op vol|snap, Name, ID, Sum the load starts from
	KindCheckDone  = "checkdone"  // the check is over
	KindLoadStart  = "loadstart"  // concurrent clients start; the host cuts power from now on
	KindProgress   = "progress"   // in the load, when it changed: what partial/ holds, Entries "<entry> <bytes>"
	KindFail       = "fail"       // something the guest found wrong by itself: Msg
	KindFinal      = "final"      // the final boot's check is over; the guest powers off
)

// RemoteSeed is the Src of a restore across nodes: the guest's second
// driver (node ID SenderNode, the "sender") holds the snapshot "seed", and
// the judged driver fetches it from there.
const (
	RemoteSeed = "remote:seed"
	SenderNode = "node-a"
)

// Event is one line from the guest.
type Event struct {
	Kind    string   `json:"k"`
	Op      string   `json:"op,omitempty"`
	Name    string   `json:"n,omitempty"`
	ID      string   `json:"id,omitempty"`
	Src     string   `json:"src,omitempty"`
	Sum     string   `json:"sum,omitempty"`
	Size    int64    `json:"size,omitempty"`
	Ready   bool     `json:"ready,omitempty"`
	Health  string   `json:"health,omitempty"`
	Err     string   `json:"err,omitempty"`
	Msg     string   `json:"msg,omitempty"`
	Dir     string   `json:"dir,omitempty"`
	Entries []string `json:"entries,omitempty"`
	Retry   bool     `json:"retry,omitempty"` // a call the check phase repeats, as a CO would after a crash
	Worker  int      `json:"w,omitempty"`
}

const linePrefix = "PC "

// Encode makes the line for an event (without its newline): a prefix, the
// CRC-32 of the JSON, the JSON. The checksum lets the host drop a line the
// power cut garbled instead of misreading it.
func Encode(e Event) string {
	b, err := json.Marshal(e)
	if err != nil {
		panic(err) // only strings, ints and bools
	}
	return fmt.Sprintf("%s%08x %s", linePrefix, crc32.ChecksumIEEE(b), b)
}

// Decode reads a line made by Encode; ok is false for anything else.
func Decode(line string) (e Event, ok bool) {
	rest, found := strings.CutPrefix(line, linePrefix)
	if !found || len(rest) < 10 || rest[8] != ' ' {
		return e, false
	}
	var sum uint32
	if _, err := fmt.Sscanf(rest[:8], "%08x", &sum); err != nil {
		return e, false
	}
	payload := rest[9:]
	if crc32.ChecksumIEEE([]byte(payload)) != sum {
		return e, false
	}
	if err := json.Unmarshal([]byte(payload), &e); err != nil || e.Kind == "" {
		return Event{}, false
	}
	return e, true
}

// WritePlan writes the plan as a raw disk image: its length (8 bytes,
// little-endian), then its JSON, then zeros.
func WritePlan(path string, p *Plan) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	buf := binary.LittleEndian.AppendUint64(nil, uint64(len(b)))
	buf = append(buf, b...)
	// A whole number of MiB: the guest sees the image as a disk of whole
	// sectors, and reads the plan through that.
	const mib = 1 << 20
	buf = append(buf, make([]byte, (mib-len(buf)%mib)%mib)...)
	return os.WriteFile(path, buf, 0o600)
}

// ReadPlan reads what WritePlan wrote, from the disk device in the guest.
func ReadPlan(path string) (*Plan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return nil, fmt.Errorf("plan header: %w", err)
	}
	n := binary.LittleEndian.Uint64(hdr[:])
	if n == 0 || n > 64<<20 {
		return nil, errors.New("no plan on the disk")
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	p := &Plan{}
	return p, json.Unmarshal(b, p)
}
