package powercut

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hostpath-csi/hostpath-csi/test/powercut/proto"
)

// record is the host's knowledge: built only from the guest's intent and
// ack lines that reached the host before the power went.
type record struct {
	vols, snaps  map[string]*proto.Obj // by name
	deletedVols  map[string]string     // ID -> name, for deletes that were acknowledged
	deletedSnaps map[string]string
	damaged      map[string]bool // IDs found listed but unusable (reported once)
	acks         int             // acknowledged calls
	remoteAcks   int             // acknowledged restores across nodes (Src remote:)
}

func newRecord() *record {
	return &record{vols: map[string]*proto.Obj{}, snaps: map[string]*proto.Obj{},
		deletedVols: map[string]string{}, deletedSnaps: map[string]string{}, damaged: map[string]bool{}}
}

// apply takes one intent or ack into the record.
func (r *record) apply(e proto.Event, boot int) {
	objs, deleted := r.vols, r.deletedVols
	if e.Op == proto.OpSnapshot || e.Op == proto.OpDeleteSnp {
		objs, deleted = r.snaps, r.deletedSnaps
	}
	o := objs[e.Name]
	switch {
	case e.Kind == proto.KindIntent && (e.Op == proto.OpCreateVol || e.Op == proto.OpSnapshot):
		if o == nil { // a retry keeps the record of the first call
			objs[e.Name] = &proto.Obj{Name: e.Name, State: proto.Creating, Src: e.Src, Sums: []string{e.Sum}, Boot: boot}
		}
	case e.Kind == proto.KindAck && (e.Op == proto.OpCreateVol || e.Op == proto.OpSnapshot):
		if o == nil {
			o = &proto.Obj{Name: e.Name, Src: e.Src, Boot: boot}
			objs[e.Name] = o
		}
		o.ID, o.State, o.Sums = e.ID, proto.Acked, []string{e.Sum}
		r.acks++
		if strings.HasPrefix(e.Src, "remote:") {
			r.remoteAcks++
		}
	case o == nil:
		// A write or delete of something no longer recorded: its loss was
		// reported when it was found missing.
	case e.Kind == proto.KindIntent && e.Op == proto.OpWrite:
		if !slices.Contains(o.Sums, e.Sum) {
			o.Sums = append(o.Sums, e.Sum)
		}
	case e.Kind == proto.KindAck && e.Op == proto.OpWrite:
		o.Sums = []string{e.Sum}
		r.acks++
	case e.Kind == proto.KindIntent: // a delete
		if o.State == proto.Acked {
			o.State = proto.Deleting
		}
	case e.Kind == proto.KindAck: // a delete
		delete(objs, e.Name)
		deleted[e.ID] = e.Name
		r.acks++
	}
}

// adopt replaces the live objects with the state the guest's load starts
// from, once the check has judged what the power cut left.
func (r *record) adopt(state []proto.Event, boot int) {
	old := map[string]map[string]*proto.Obj{"vol": r.vols, "snap": r.snaps}
	r.vols, r.snaps = map[string]*proto.Obj{}, map[string]*proto.Obj{}
	for _, e := range state {
		objs := r.vols
		if e.Op == "snap" {
			objs = r.snaps
		}
		made := boot
		if prev := old[e.Op][e.Name]; prev != nil {
			made = prev.Boot
		}
		objs[e.Name] = &proto.Obj{Name: e.Name, ID: e.ID, State: proto.Acked, Src: e.Src, Sums: []string{e.Sum}, Boot: made}
	}
}

// plan is what the next boot is told.
func (r *record) plan(boot int, fs string, final bool, workers int) *proto.Plan {
	p := &proto.Plan{Boot: boot, FS: fs, Final: final, Workers: workers}
	for _, name := range slices.Sorted(maps.Keys(r.vols)) {
		p.Vols = append(p.Vols, *r.vols[name])
	}
	for _, name := range slices.Sorted(maps.Keys(r.snaps)) {
		p.Snaps = append(p.Snaps, *r.snaps[name])
	}
	return p
}

// observation is what one boot's check reported.
type observation struct {
	started   bool
	checkDone bool
	dirs      map[string][]string
	dirErrs   map[string]string
	vols      map[string]proto.Event // listed volumes by ID
	snaps     map[string]proto.Event // listed snapshots by ID
	retried   map[string]string      // "vol:"/"snap:" + name -> ID, from retried creates
	seed      *proto.Event           // the sender's seed snapshot
	leftovers map[string]int64       // partial/ before the driver started: entry -> bytes
	rolled    map[string]string      // creates the driver's start-up rolled back: name -> ID
	fails     []string               // what the guest found wrong by itself
	state     []proto.Event
}

func newObservation() *observation {
	return &observation{dirs: map[string][]string{}, dirErrs: map[string]string{}, vols: map[string]proto.Event{},
		snaps: map[string]proto.Event{}, retried: map[string]string{}, leftovers: map[string]int64{}, rolled: map[string]string{}}
}

// take files one check-phase event; it reports whether the check is over.
func (o *observation) take(e proto.Event) bool {
	switch e.Kind {
	case proto.KindStarted:
		o.started = true
	case proto.KindSeed:
		o.seed = &e
	case proto.KindLeftover:
		o.leftovers[e.ID] = e.Size
	case proto.KindRolledBack:
		o.rolled[e.Name] = e.ID
	case proto.KindDir:
		o.dirs[e.Dir] = e.Entries
		if e.Err != "" {
			o.dirErrs[e.Dir] = e.Err
		}
	case proto.KindObsVol:
		o.vols[e.ID] = e
	case proto.KindObsSnap:
		o.snaps[e.ID] = e
	case proto.KindAck:
		if e.Retry && e.Op == proto.OpCreateVol {
			o.retried["vol:"+e.Name] = e.ID
		} else if e.Retry && e.Op == proto.OpSnapshot {
			o.retried["snap:"+e.Name] = e.ID
		}
	case proto.KindFail:
		o.fails = append(o.fails, e.Msg)
	case proto.KindState:
		o.state = append(o.state, e)
	case proto.KindCheckDone:
		o.checkDone = true
		return true
	}
	return false
}

// remoteCut is what a boot's check saw of the restores across nodes that
// the last power cut left unanswered.
type remoteCut struct {
	unanswered int   // restores across nodes in the plan with no answer
	rolledBack int   // of them, those the driver's start-up rolled back (its job had begun)
	received   int   // of those, the ones the cut caught mid-transfer: bytes in partial/ at the cut
	bytes      int64 // what those had received at the cut (the last progress report before it)
	onDisk     int64 // what of it the next start found in partial/ (the receive syncs only at its end)
}

// remoteCuts counts, from the plan (the record the last cut left), what
// partial/ held at the cut (the load's last progress report: entry ->
// bytes) and this boot's observation, how the unanswered restores across
// nodes were cut.
func remoteCuts(plan *proto.Plan, atCut map[string]int64, obs *observation) (rc remoteCut) {
	for _, o := range plan.Vols {
		if o.State != proto.Creating || !strings.HasPrefix(o.Src, "remote:") {
			continue
		}
		rc.unanswered++
		id, ok := obs.rolled[o.Name]
		if !ok {
			continue
		}
		rc.rolledBack++
		if n := atCut[id]; n > 0 {
			rc.received++
			rc.bytes += n
			rc.onDisk += obs.leftovers[id]
		}
	}
	return rc
}

var emptySum = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" // sha256 of nothing

// content says what a checksum stands for, in words.
func content(sum string, size int64) string {
	switch sum {
	case proto.None:
		return "no data file"
	case emptySum:
		return "an empty data file"
	case "":
		return "unreadable data"
	}
	if z := sha256.Sum256(make([]byte, size)); sum == hex.EncodeToString(z[:]) {
		return fmt.Sprintf("a data file of %d zero bytes (its size made it to the disk, its data did not)", size)
	}
	return fmt.Sprintf("data sha256 %.12s (%d bytes)", sum, size)
}

func contents(sums []string) string {
	var s []string
	for _, sum := range sums {
		if sum == proto.None {
			s = append(s, "no data file")
		} else {
			s = append(s, "sha256 "+sum[:min(12, len(sum))])
		}
	}
	return strings.Join(s, " or ")
}

func describe(kind string, o proto.Obj) string {
	how := "an empty volume"
	switch {
	case strings.HasPrefix(o.Src, "snap:"):
		how = "restored from snapshot " + strings.TrimPrefix(o.Src, "snap:")
	case strings.HasPrefix(o.Src, "remote:"):
		how = "restored across nodes from " + proto.SenderNode + "'s snapshot " + strings.TrimPrefix(o.Src, "remote:")
	case strings.HasPrefix(o.Src, "vol:") && kind == "snapshot":
		how = "of volume " + strings.TrimPrefix(o.Src, "vol:")
	case strings.HasPrefix(o.Src, "vol:"):
		how = "cloned from volume " + strings.TrimPrefix(o.Src, "vol:")
	}
	state := "acknowledged"
	switch o.State {
	case proto.Creating:
		state = "create unanswered"
	case proto.Deleting:
		state = "delete unanswered"
	}
	return fmt.Sprintf("%s %s (%s, %s, made in boot %d, %s)", kind, o.Name, o.ID, how, o.Boot, state)
}

// Kinds of failure, for the summary.
const (
	catGone       = "acknowledged and gone"
	catData       = "wrong data"
	catUnusable   = "listed but unusable"
	catStray      = "listed but never made, or deleted"
	catDisk       = "disk and listing disagree"
	catLeftovers  = "left in partial, trash or quarantine"
	catCall       = "a call failed"
	catIncomplete = "check incomplete"
)

// failure is one thing a check found wrong.
type failure struct{ cat, msg string }

// judge checks one boot's observation against the record the plan was
// made from (the record before the check's own retries), the deletes
// acknowledged before it, and what earlier checks already found damaged
// (reported once, not at every boot). It returns what is wrong, how many
// checks it made, and the IDs it found damaged.
func judge(plan *proto.Plan, deletedVols, deletedSnaps map[string]string, damaged map[string]bool, obs *observation) (failures []failure, checks int, broken []string) {
	fail := func(cat, format string, args ...any) {
		failures = append(failures, failure{cat, fmt.Sprintf(format, args...)})
	}
	for _, f := range obs.fails {
		fail(catCall, "the guest reports: %s", f)
	}
	checks++
	if !obs.started || !obs.checkDone {
		fail(catIncomplete, "the check did not complete (driver started: %v)", obs.started)
		return failures, checks, nil
	}

	for _, k := range []struct {
		kind    string
		objs    []proto.Obj
		listed  map[string]proto.Event
		deleted map[string]string
		dir     string
	}{
		{"volume", plan.Vols, obs.vols, deletedVols, "volumes"},
		{"snapshot", plan.Snaps, obs.snaps, deletedSnaps, "snapshots"},
	} {
		claimed := map[string]bool{}
		for _, o := range k.objs {
			id := o.ID
			if o.State == proto.Creating {
				id = obs.retried[map[string]string{"volume": "vol:", "snapshot": "snap:"}[k.kind]+o.Name]
				o.ID = id
			}
			claimed[id] = true
			e, listed := k.listed[id]
			checks++
			if !listed {
				if o.State == proto.Acked {
					fail(catGone, "%s is gone after the power cut", describe(k.kind, o))
				}
				continue // an unanswered call that did not happen, or happened only now
			}
			checks += 3
			switch {
			case e.Err != "":
				fail(catUnusable, "%s cannot be read after the power cut: %s", describe(k.kind, o), e.Err)
			case e.Health != "":
				fail(catUnusable, "%s is unhealthy after the power cut: %s", describe(k.kind, o), e.Health)
			case k.kind == "snapshot" && !e.Ready:
				fail(catUnusable, "%s is listed but not ready to use after the power cut", describe(k.kind, o))
			case !slices.Contains(o.Sums, e.Sum):
				// Usable, with the wrong data: the load goes on with it.
				fail(catData, "%s holds %s after the power cut; it must hold %s", describe(k.kind, o), content(e.Sum, e.Size), contents(o.Sums))
			}
		}
		var listed []string
		for _, id := range slices.Sorted(maps.Keys(k.listed)) {
			if damaged[id] {
				continue // reported by an earlier check
			}
			listed = append(listed, id)
			checks++
			e := k.listed[id]
			if name, ok := k.deleted[id]; ok {
				fail(catStray, "%s %s (%s) is listed again after its delete was acknowledged", k.kind, id, name)
			} else if !claimed[id] {
				fail(catStray, "%s %s is listed, holding %s, but no acknowledged or unanswered call made it", k.kind, id, content(e.Sum, e.Size))
			}
			if e.Err != "" || e.Health != "" || (k.kind == "snapshot" && !e.Ready) {
				broken = append(broken, id)
			}
		}
		checks++
		var onDisk []string
		for _, d := range obs.dirs[k.dir] {
			if !damaged[d] {
				onDisk = append(onDisk, d)
			}
		}
		if missing, extra := diff(listed, onDisk); len(missing)+len(extra) > 0 {
			fail(catDisk, "data/%s does not match the %ss listed: listed without a directory %v, a directory but not listed %v", k.dir, k.kind, missing, extra)
		}
	}
	for _, dir := range []string{"partial", "trash", "quarantine"} {
		checks++
		if len(obs.dirs[dir]) > 0 || obs.dirErrs[dir] != "" {
			var what []string
			for _, entry := range obs.dirs[dir] {
				what = append(what, entry+" ("+whose(entry, plan, deletedVols, deletedSnaps)+")")
			}
			fail(catLeftovers, "data/%s is not empty once start-up is done: %s %s", dir, strings.Join(what, ", "), obs.dirErrs[dir])
		}
	}
	return failures, checks, broken
}

// whose says what the record knows of a leftover entry, named by an ID
// and perhaps a ".<suffix>" the driver added.
func whose(entry string, plan *proto.Plan, deletedVols, deletedSnaps map[string]string) string {
	id, _, _ := strings.Cut(entry, ".")
	if name, ok := deletedVols[id]; ok {
		return "volume " + name + ", delete acknowledged"
	}
	if name, ok := deletedSnaps[id]; ok {
		return "snapshot " + name + ", delete acknowledged"
	}
	for _, o := range plan.Vols {
		if o.ID == id {
			return "volume " + o.Name + ", " + o.State
		}
	}
	for _, o := range plan.Snaps {
		if o.ID == id {
			return "snapshot " + o.Name + ", " + o.State
		}
	}
	return "an ID the record does not know: an unanswered create?"
}

// diff returns what is in want but not in got, and what is in got but not
// in want, each sorted.
func diff(want, got []string) (missing, extra []string) {
	for _, w := range want {
		if !slices.Contains(got, w) {
			missing = append(missing, w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			extra = append(extra, g)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	return missing, extra
}
