// Package report is what the NFS end-to-end test's guest program tells the
// host: one JSON line per event on the guest's second serial port.
package report

import (
	"encoding/json"
	"strings"
)

// Kinds of lines.
const (
	KindStart = "start" // the guest program runs; Secs: the guest's uptime
	KindReady = "ready" // the driver answers Probe; Secs: uptime
	KindCheck = "check" // a check's result: Name, OK, Msg, Secs (how long it took)
	KindDone  = "done"  // the scenario is over; Secs: uptime
)

// Line is one report.
type Line struct {
	Kind string  `json:"k"`
	Name string  `json:"n,omitempty"`
	OK   bool    `json:"ok,omitempty"`
	Msg  string  `json:"msg,omitempty"`
	Secs float64 `json:"s,omitempty"`
}

const prefix = "NFSE2E "

// Encode makes the line (without its newline).
func Encode(l Line) string {
	b, err := json.Marshal(l)
	if err != nil {
		panic(err) // strings, a bool and a float
	}
	return prefix + string(b)
}

// Decode reads a line Encode made; ok is false for any other line.
func Decode(s string) (l Line, ok bool) {
	rest, found := strings.CutPrefix(s, prefix)
	if !found || json.Unmarshal([]byte(rest), &l) != nil || l.Kind == "" {
		return Line{}, false
	}
	return l, true
}

// Checks are the guest's checks, in the order it makes them; the host
// requires every one of them to be reported and to have passed.
var Checks = []string{
	"driver-ready",
	"reject-unknown-parameter",
	"create-templated-subdir",
	"create-idempotent",
	"stage-publish-two-targets-v4.2",
	"rwx-write-one-read-other",
	"data-on-server",
	"volume-stats",
	"publish-readonly",
	"snapshot",
	"snapshot-on-server",
	"modify-after-snapshot",
	"restore-from-snapshot",
	"clone-from-volume",
	"restored-data-through-mount",
	"v3-stage-publish-write",
	"unpublish-unstage",
	"hostpath-snapshot-kept-off-node",
	"controller-moved-create-idempotent",
	"controller-moved-lists",
	"hostpath-snapshot-restored-on-another-node",
	"hostpath-snapshot-deleted-from-another-node",
	"delete-ondelete-delete",
	"delete-idempotent",
	"delete-ondelete-retain",
	"delete-ondelete-archive",
	"delete-snapshot",
	"root-squash-mountpermissions-0777",
	"root-squash-default-mode-denies-nonroot",
	"stale-handle-made-stale",
	"stale-handle-restage-remounts",
	"stale-handle-unpublish-unstage",
	"stale-handle-controller-works",
}

// Outages are the guest's ways of taking the NFS server away.
var Outages = []string{"hung", "stopped"}

// OutageChecks are the checks of one outage, in order.
func OutageChecks(outage string) []string {
	var out []string
	for _, c := range []string{"hostpath-create-not-blocked", "volume-stats-fails", "create-fails", "mount-process-gone", "unpublish-unstage", "back-create-works"} {
		out = append(out, outage+"-server-"+c)
	}
	return out
}

func init() {
	for _, o := range Outages {
		Checks = append(Checks, OutageChecks(o)...)
	}
}
