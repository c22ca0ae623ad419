package powercut

import (
	"crypto/sha256"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"

	"github.com/hostpath-csi/hostpath-csi/test/powercut/proto"
)

// TestRecordApply: the host's record follows what reached it, and keeps
// both possible contents while a write has no answer.
func TestRecordApply(t *testing.T) {
	r := newRecord()
	for _, e := range []proto.Event{
		{Kind: proto.KindIntent, Op: proto.OpCreateVol, Name: "v", Sum: proto.None},
		{Kind: proto.KindAck, Op: proto.OpCreateVol, Name: "v", ID: "hpv1-1", Sum: proto.None},
		{Kind: proto.KindIntent, Op: proto.OpWrite, Name: "v", ID: "hpv1-1", Sum: "aa"},
		{Kind: proto.KindAck, Op: proto.OpWrite, Name: "v", ID: "hpv1-1", Sum: "aa"},
		{Kind: proto.KindIntent, Op: proto.OpWrite, Name: "v", ID: "hpv1-1", Sum: "bb"}, // no answer
		{Kind: proto.KindIntent, Op: proto.OpSnapshot, Name: "s", Src: "vol:v", Sum: "aa"},
		{Kind: proto.KindAck, Op: proto.OpSnapshot, Name: "s", ID: "hps1-1", Src: "vol:v", Sum: "aa"},
		{Kind: proto.KindIntent, Op: proto.OpCreateVol, Name: "r", Src: "snap:s", Sum: "aa"}, // no answer
		{Kind: proto.KindIntent, Op: proto.OpCreateVol, Name: "d", Sum: proto.None},
		{Kind: proto.KindAck, Op: proto.OpCreateVol, Name: "d", ID: "hpv1-2", Sum: proto.None},
		{Kind: proto.KindIntent, Op: proto.OpDeleteVol, Name: "d", ID: "hpv1-2"},
		{Kind: proto.KindAck, Op: proto.OpDeleteVol, Name: "d", ID: "hpv1-2"},
		{Kind: proto.KindIntent, Op: proto.OpDeleteSnp, Name: "s", ID: "hps1-1"}, // no answer
		{Kind: proto.KindIntent, Op: proto.OpCreateVol, Name: "x", Src: proto.RemoteSeed, Sum: "cc"},
		{Kind: proto.KindAck, Op: proto.OpCreateVol, Name: "x", ID: "hpv1-3", Src: proto.RemoteSeed, Sum: "cc"},
		{Kind: proto.KindIntent, Op: proto.OpCreateVol, Name: "y", Src: proto.RemoteSeed, Sum: "cc"}, // no answer
	} {
		r.apply(e, 1)
	}
	p := r.plan(2, "ext4", false, 4)
	want := &proto.Plan{Boot: 2, FS: "ext4", Workers: 4,
		Vols: []proto.Obj{
			{Name: "r", State: proto.Creating, Src: "snap:s", Sums: []string{"aa"}, Boot: 1},
			{Name: "v", ID: "hpv1-1", State: proto.Acked, Sums: []string{"aa", "bb"}, Boot: 1},
			{Name: "x", ID: "hpv1-3", State: proto.Acked, Src: proto.RemoteSeed, Sums: []string{"cc"}, Boot: 1},
			{Name: "y", State: proto.Creating, Src: proto.RemoteSeed, Sums: []string{"cc"}, Boot: 1},
		},
		Snaps: []proto.Obj{{Name: "s", ID: "hps1-1", State: proto.Deleting, Src: "vol:v", Sums: []string{"aa"}, Boot: 1}},
	}
	if !reflect.DeepEqual(p, want) {
		t.Errorf("plan = %+v\nwant %+v", p, want)
	}
	if r.acks != 6 || r.remoteAcks != 1 || !reflect.DeepEqual(r.deletedVols, map[string]string{"hpv1-2": "d"}) {
		t.Errorf("acks %d (%d across nodes), deleted %v", r.acks, r.remoteAcks, r.deletedVols)
	}
}

func zeros(n int) string {
	s := sha256.Sum256(make([]byte, n))
	return hex.EncodeToString(s[:])
}

// TestJudge: each way a power cut can hurt is reported, and what an
// unanswered call may or may not have done is not.
func TestJudge(t *testing.T) {
	basePlan := func() *proto.Plan {
		return &proto.Plan{
			Vols: []proto.Obj{
				{Name: "v", ID: "hpv1-v", State: proto.Acked, Sums: []string{"aa"}},
				{Name: "w", ID: "hpv1-w", State: proto.Acked, Sums: []string{"aa", "bb"}}, // a write without an answer
				{Name: "c", State: proto.Creating, Src: "vol:v", Sums: []string{"aa"}},
				{Name: "d", ID: "hpv1-d", State: proto.Deleting, Sums: []string{proto.None}},
				{Name: "x", ID: "hpv1-x1", State: proto.Acked, Src: proto.RemoteSeed, Sums: []string{"cc"}},
				{Name: "y", State: proto.Creating, Src: proto.RemoteSeed, Sums: []string{"cc"}}, // cut mid-transfer
			},
			Snaps: []proto.Obj{{Name: "s", ID: "hps1-s", State: proto.Acked, Src: "vol:v", Sums: []string{"aa"}}},
		}
	}
	baseObs := func() *observation {
		o := newObservation()
		for _, e := range []proto.Event{
			{Kind: proto.KindStarted},
			{Kind: proto.KindLeftover, Dir: "partial", ID: "hpv1-y0", Size: 3 << 20},
			{Kind: proto.KindStarted},
			{Kind: proto.KindRolledBack, Name: "y", ID: "hpv1-y0"},
			{Kind: proto.KindDir, Dir: "volumes", Entries: []string{"hpv1-v", "hpv1-w", "hpv1-c", "hpv1-x1"}},
			{Kind: proto.KindDir, Dir: "snapshots", Entries: []string{"hps1-s"}},
			{Kind: proto.KindDir, Dir: "partial"}, {Kind: proto.KindDir, Dir: "trash"}, {Kind: proto.KindDir, Dir: "quarantine"},
			{Kind: proto.KindObsVol, ID: "hpv1-v", Sum: "aa"},
			{Kind: proto.KindObsVol, ID: "hpv1-w", Sum: "bb"},
			{Kind: proto.KindObsVol, ID: "hpv1-c", Sum: "aa"},
			{Kind: proto.KindObsVol, ID: "hpv1-x1", Sum: "cc"},
			{Kind: proto.KindObsSnap, ID: "hps1-s", Sum: "aa", Ready: true},
			{Kind: proto.KindAck, Op: proto.OpCreateVol, Name: "c", ID: "hpv1-c", Retry: true},
			{Kind: proto.KindCheckDone},
		} {
			o.take(e)
		}
		return o
	}
	for _, tc := range []struct {
		name   string
		change func(p *proto.Plan, o *observation)
		want   []string // one substring per failure, in order
	}{
		{name: "all well", change: func(*proto.Plan, *observation) {}},
		{name: "the restore across nodes cut short was retried and made", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-y1"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-y1", Sum: "cc"}
			o.dirs["volumes"] = append(o.dirs["volumes"], "hpv1-y1")
			o.retried["vol:y"] = "hpv1-y1"
		}},
		{name: "a restore across nodes without its data", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-x1"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-x1", Sum: zeros(12 << 20), Size: 12 << 20}
		}, want: []string{"volume x (hpv1-x1, restored across nodes from node-a's snapshot seed, made in boot 0, acknowledged) holds a data file of 12582912 zero bytes"}},
		{name: "a restore across nodes cut short is listed", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-y0"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-y0", Sum: zeros(3 << 20), Size: 3 << 20}
			o.dirs["volumes"] = append(o.dirs["volumes"], "hpv1-y0")
		}, want: []string{"volume hpv1-y0 is listed, holding a data file of 3145728 zero bytes"}},
		{name: "the unanswered delete happened, the unanswered create did not", change: func(p *proto.Plan, o *observation) {
			delete(o.vols, "hpv1-c")
			o.dirs["volumes"] = []string{"hpv1-v", "hpv1-w", "hpv1-x1"}
			o.retried["vol:c"] = "hpv1-new" // the retry made it afresh
		}},
		{name: "the unanswered write did not happen", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-w"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-w", Sum: "aa"}
		}},
		{name: "the unanswered delete did not happen", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-d"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-d", Sum: proto.None}
			o.dirs["volumes"] = append(o.dirs["volumes"], "hpv1-d")
		}},
		{name: "acknowledged volume gone", change: func(p *proto.Plan, o *observation) {
			delete(o.vols, "hpv1-v")
			o.dirs["volumes"] = []string{"hpv1-w", "hpv1-c", "hpv1-x1"}
		}, want: []string{"volume v (hpv1-v, an empty volume, made in boot 0, acknowledged) is gone"}},
		{name: "snapshot of zeros", change: func(p *proto.Plan, o *observation) {
			o.snaps["hps1-s"] = proto.Event{Kind: proto.KindObsSnap, ID: "hps1-s", Sum: zeros(4096), Size: 4096, Ready: true}
		}, want: []string{"snapshot s (hps1-s, of volume v, made in boot 0, acknowledged) holds a data file of 4096 zero bytes"}},
		{name: "clone without its data", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-c"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-c", Sum: proto.None}
		}, want: []string{"volume c (hpv1-c, cloned from volume v, made in boot 0, create unanswered) holds no data file after the power cut; it must hold sha256 aa"}},
		{name: "a write neither old nor new", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-w"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-w", Sum: emptySum}
		}, want: []string{"holds an empty data file after the power cut; it must hold sha256 aa or sha256 bb"}},
		{name: "listed without data", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-v"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-v", Err: "NodeStageVolume: no usable data directory", Health: "DATA_LOSS"}
			o.dirs["volumes"] = []string{"hpv1-w", "hpv1-c", "hpv1-x1"}
		}, want: []string{"cannot be read after the power cut: NodeStageVolume", "data/volumes does not match the volumes listed: listed without a directory [hpv1-v], a directory but not listed []"}},
		{name: "unhealthy", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-v"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-v", Sum: "aa", Health: "DATA_LOSS x"}
		}, want: []string{"is unhealthy after the power cut: DATA_LOSS x"}},
		{name: "snapshot not ready", change: func(p *proto.Plan, o *observation) {
			o.snaps["hps1-s"] = proto.Event{Kind: proto.KindObsSnap, ID: "hps1-s", Sum: "aa"}
		}, want: []string{"is listed but not ready to use"}},
		{name: "a volume nobody made", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-x"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-x", Sum: proto.None}
			o.dirs["volumes"] = append(o.dirs["volumes"], "hpv1-x")
		}, want: []string{"volume hpv1-x is listed, holding no data file, but no acknowledged or unanswered call made it"}},
		{name: "a deleted volume back", change: func(p *proto.Plan, o *observation) {
			o.vols["hpv1-old"] = proto.Event{Kind: proto.KindObsVol, ID: "hpv1-old", Sum: proto.None}
			o.dirs["volumes"] = append(o.dirs["volumes"], "hpv1-old")
		}, want: []string{"volume hpv1-old (old) is listed again after its delete was acknowledged"}},
		{name: "leftovers", change: func(p *proto.Plan, o *observation) {
			o.dirs["quarantine"] = []string{"hpv1-q.123"}
			o.dirs["partial"] = []string{"hpv1-old.7"}
			o.dirs["snapshots"] = append(o.dirs["snapshots"], "hps1-orphan")
		}, want: []string{"data/snapshots does not match", "data/partial is not empty once start-up is done: hpv1-old.7 (volume old, delete acknowledged)", "data/quarantine is not empty once start-up is done: hpv1-q.123 (an ID the record does not know: an unanswered create?)"}},
		{name: "a restore across nodes cut short left in partial", change: func(p *proto.Plan, o *observation) {
			o.dirs["partial"] = []string{"hpv1-y0"}
		}, want: []string{"data/partial is not empty once start-up is done: hpv1-y0 (an ID the record does not know"}},
		{name: "driver did not start", change: func(p *proto.Plan, o *observation) {
			*o = *newObservation()
			o.take(proto.Event{Kind: proto.KindFail, Msg: "the driver exited during start-up"})
		}, want: []string{"the guest reports: the driver exited during start-up", "the check did not complete (driver started: false)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, o := basePlan(), baseObs()
			tc.change(p, o)
			got, checks, _ := judge(p, map[string]string{"hpv1-old": "old"}, map[string]string{}, map[string]bool{}, o)
			if checks == 0 {
				t.Error("no checks counted")
			}
			if len(got) != len(tc.want) {
				t.Fatalf("failures:\n%v\nwant %d: %q", got, len(tc.want), tc.want)
			}
			for i := range got {
				if !strings.Contains(got[i].msg, tc.want[i]) {
					t.Errorf("failure %d: %q\nwant it to contain %q", i, got[i].msg, tc.want[i])
				}
			}
		})
	}
}

// TestRemoteCuts: the restores across nodes a cut left unanswered are
// told apart by what the next start found of them.
func TestRemoteCuts(t *testing.T) {
	plan := &proto.Plan{Vols: []proto.Obj{
		{Name: "a", ID: "hpv1-a", State: proto.Acked, Src: proto.RemoteSeed},
		{Name: "b", State: proto.Creating, Src: proto.RemoteSeed}, // never begun
		{Name: "c", State: proto.Creating, Src: proto.RemoteSeed}, // begun, nothing received yet
		{Name: "d", State: proto.Creating, Src: proto.RemoteSeed}, // mid-transfer
		{Name: "e", State: proto.Creating, Src: "snap:s"},         // a local restore
		{Name: "f", ID: "hpv1-f", State: proto.Deleting, Src: proto.RemoteSeed},
	}}
	o := newObservation()
	for _, e := range []proto.Event{
		{Kind: proto.KindLeftover, Dir: "partial", ID: "hpv1-c", Size: 0},
		{Kind: proto.KindLeftover, Dir: "partial", ID: "hpv1-d", Size: 5 << 20},
		{Kind: proto.KindLeftover, Dir: "partial", ID: "hpv1-e", Size: 1 << 20},
		{Kind: proto.KindRolledBack, Name: "c", ID: "hpv1-c"},
		{Kind: proto.KindRolledBack, Name: "d", ID: "hpv1-d"},
		{Kind: proto.KindRolledBack, Name: "e", ID: "hpv1-e"},
	} {
		o.take(e)
	}
	atCut := map[string]int64{"hpv1-c": 0, "hpv1-d": 7 << 20, "hpv1-e": 1 << 20}
	if got, want := remoteCuts(plan, atCut, o), (remoteCut{unanswered: 3, rolledBack: 2, received: 1, bytes: 7 << 20, onDisk: 5 << 20}); got != want {
		t.Errorf("remoteCuts = %+v, want %+v", got, want)
	}
}

// TestJudgeReportsDamageOnce: a volume listed without usable data is
// reported by the check that finds it, and not again by later ones.
func TestJudgeReportsDamageOnce(t *testing.T) {
	plan := &proto.Plan{Vols: []proto.Obj{{Name: "v", ID: "hpv1-v", State: proto.Acked, Sums: []string{"aa"}}}}
	o := newObservation()
	for _, e := range []proto.Event{
		{Kind: proto.KindStarted},
		{Kind: proto.KindDir, Dir: "volumes"},
		{Kind: proto.KindObsVol, ID: "hpv1-v", Err: "no usable data directory", Health: "DATA_LOSS"},
		{Kind: proto.KindCheckDone},
	} {
		o.take(e)
	}
	damaged := map[string]bool{}
	first, _, broken := judge(plan, nil, nil, damaged, o)
	if len(first) != 2 || first[0].cat != catUnusable || first[1].cat != catDisk || !reflect.DeepEqual(broken, []string{"hpv1-v"}) {
		t.Fatalf("first check: %v, broken %v", first, broken)
	}
	for _, id := range broken {
		damaged[id] = true
	}
	// The next boot: the guest no longer counts it among its volumes.
	if again, _, _ := judge(&proto.Plan{}, nil, nil, damaged, o); len(again) != 0 {
		t.Errorf("second check reports it again: %v", again)
	}
}
