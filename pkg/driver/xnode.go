package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
	"github.com/hostpath-csi/hostpath-csi/internal/peers"
	"github.com/hostpath-csi/hostpath-csi/internal/transfer"
	"github.com/hostpath-csi/hostpath-csi/internal/treestream"
	"github.com/hostpath-csi/hostpath-csi/pkg/state"
)

// Restores and clones across nodes. A hostpath snapshot or volume lives on
// one node's disk. When CreateVolume on another node names it, this node's
// driver asks its peers (internal/peers) which of them holds it ("stat"),
// and fetches it from that one over the transfer channel
// (internal/transfer: mutually authenticated by a shared key, encrypted)
// as a tree stream (internal/treestream: holes, owners, modes, xattrs and
// hard links as the local copy engine keeps them, checked by a digest at
// its end). The stream is received into partial/ and moved into place only
// once complete and on disk, in the same detached job as a local copy, so
// it finishes whatever the caller's deadline; a kill of either side leaves
// nothing half made (partial/ is emptied at start, the record rolled back).
//
// The peer that serves a fetch holds the source as a local copy does: a
// snapshot shared for the whole stream (a delete meanwhile is ABORTED); a
// volume is first copied to a point in time in its partial/ (frozen as a
// local clone freezes it) and that copy is streamed, then removed.

// Operations of the transfer channel.
const (
	opStat  = "stat"
	opFetch = "fetch"
	// Kinds of what is asked for.
	xferSnapshot = "snapshot"
	xferVolume   = "volume"
)

// TransferConfig turns on restores and clones across nodes.
type TransferConfig struct {
	// Listen is the address of this node's transfer server ("" serves
	// none: no peer can fetch from this node).
	Listen string
	// Keys is the file of shared keys (internal/transfer.LoadKeyring).
	Keys string
	// Peers finds the other nodes' drivers (nil: fetch from none).
	Peers peers.Finder
	// MaxTransfers bounds transfers in each direction at once (0: 2).
	MaxTransfers int
	// RateBytesPerSec bounds the bytes per second sent, and those
	// received, by all transfers together (0: no bound).
	RateBytesPerSec int64
	// IdleTimeout fails a transfer whose peer sent nothing for so long
	// (0: the channel's default).
	IdleTimeout time.Duration
}

func (c TransferConfig) enabled() bool { return c.Listen != "" || c.Peers != nil }

// remoteSource is what a peer answers to stat: what CreateVolume needs to
// decide the new volume's kind and size before any data moves.
type remoteSource struct {
	Node      string `json:"node"`
	Capacity  int64  `json:"capacity"`
	Least     int64  `json:"least"`
	Layout    string `json:"layout"`
	FSType    string `json:"fsType,omitempty"`
	Formatted bool   `json:"formatted,omitempty"`
}

func (r remoteSource) kind() volumeKind { return volumeKind{layout: r.Layout, fsType: r.FSType} }

// xnode is this node's side of cross-node copies.
type xnode struct {
	cfg     TransferConfig
	client  *transfer.Client // fetches, bounded
	lookups *transfer.Client // stats, unbounded
	server  *transfer.Server
	addr    string // where server listens
	wg      sync.WaitGroup
}

// TransferAddr is the address this node's transfer server listens at (""
// when it serves none).
func (d *Driver) TransferAddr() string {
	if x := d.hostpath.xnode; x != nil {
		return x.addr
	}
	return ""
}

// startTransfer loads the keys, and starts the transfer server when one is
// configured.
func (d *hostpathDriver) startTransfer() error {
	cfg := d.cfg.Transfer
	if !cfg.enabled() {
		return nil
	}
	if cfg.Keys == "" {
		return fmt.Errorf("cross-node transfers need a key file (--transfer-keys)")
	}
	keys, err := transfer.LoadKeyring(cfg.Keys)
	if err != nil {
		return fmt.Errorf("transfer keys: %w", err)
	}
	if cfg.MaxTransfers <= 0 {
		cfg.MaxTransfers = 2
	}
	x := &xnode{cfg: cfg}
	if cfg.Peers != nil {
		x.client = &transfer.Client{Keys: keys, MaxTransfers: cfg.MaxTransfers, RateBytesPerSec: cfg.RateBytesPerSec, IdleTimeout: cfg.IdleTimeout}
		// Lookups take no transfer slot: a restore's question to its
		// peers must not wait behind other restores' data.
		x.lookups = &transfer.Client{Keys: keys, IdleTimeout: cfg.IdleTimeout}
	}
	if cfg.Listen != "" {
		x.server = &transfer.Server{Keys: keys, Handler: transferHandler{d}, MaxTransfers: cfg.MaxTransfers, RateBytesPerSec: cfg.RateBytesPerSec,
			Unbounded: func(r transfer.Request) bool { return r.Op == opStat }}
		if t := cfg.IdleTimeout; t > 0 && t < 4*transfer.DefaultQueueKeepalive {
			// Peers run with the same flags: keep theirs from timing out.
			x.server.QueueKeepalive = t / 4
		}
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("transfer server: %w", err)
		}
		x.addr = ln.Addr().String()
		x.wg.Add(1)
		go func() {
			defer x.wg.Done()
			if err := x.server.Serve(ln); err != nil && !errors.Is(err, transfer.ErrServerClosed) {
				klog.ErrorS(err, "Transfer server stopped", "address", cfg.Listen)
			}
		}()
		klog.InfoS("Serving snapshots and volumes to the other nodes' drivers", "address", ln.Addr().String(), "maxTransfers", cfg.MaxTransfers, "rateBytesPerSec", cfg.RateBytesPerSec)
	}
	d.xnode = x
	return nil
}

// stopTransfer stops the transfer server: transfers it serves are cut (the
// peers' receives fail and roll back; their retries start over).
func (d *hostpathDriver) stopTransfer() {
	if d.xnode == nil || d.xnode.server == nil {
		return
	}
	if err := d.xnode.server.Close(); err != nil {
		klog.ErrorS(err, "Stopping the transfer server")
	}
	d.xnode.wg.Wait()
}

// locateRemote asks every peer whether it holds the snapshot or volume id
// (kind xferSnapshot or xferVolume). NOT_FOUND when none does and every
// peer answered; UNAVAILABLE, naming the peers, when one that might hold
// it could not be asked.
func (d *hostpathDriver) locateRemote(ctx context.Context, kind, id string) (peers.Peer, remoteSource, error) {
	what := kind + " " + id
	if d.xnode == nil || d.xnode.client == nil {
		return peers.Peer{}, remoteSource{}, notFound("%s not found on this node (%s), and restores from other nodes are off (--transfer-peers)", what, d.cfg.NodeID)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	list, err := d.xnode.cfg.Peers.Peers(ctx)
	if err != nil {
		return peers.Peer{}, remoteSource{}, status.Errorf(codes.Unavailable, "%s is not on this node (%s), and the other nodes' drivers cannot be listed: %v", what, d.cfg.NodeID, err)
	}
	type answer struct {
		peer peers.Peer
		src  remoteSource
		err  error
	}
	answers := make(chan answer, len(list))
	for _, p := range list {
		go func() {
			if p.Addr == "" {
				answers <- answer{p, remoteSource{}, errors.New("its driver is not running")}
				return
			}
			meta, body, err := d.xnode.lookups.Do(ctx, p.Addr, transfer.Request{Op: opStat, Kind: kind, ID: id})
			var src remoteSource
			if err == nil {
				body.Close()
				if err = json.Unmarshal(meta, &src); err == nil && src.Node != p.Node {
					err = fmt.Errorf("the driver at %s says it is node %q", p.Addr, src.Node)
				}
			}
			answers <- answer{p, src, err}
		}()
	}
	var unreachable []string
	for range list {
		a := <-answers
		switch {
		case a.err == nil:
			cancel() // the others need not answer
			return a.peer, a.src, nil
		case status.Code(a.err) == codes.NotFound:
		case definite(a.err):
			cancel()
			return peers.Peer{}, remoteSource{}, peerError(a.err, fmt.Sprintf("%s is on node %s (%s), which refuses it", what, a.peer.Node, a.peer.Addr))
		default:
			unreachable = append(unreachable, fmt.Sprintf("%s (%s): %v", a.peer.Node, a.peer.Addr, a.err))
		}
	}
	if len(unreachable) > 0 {
		return peers.Peer{}, remoteSource{}, status.Errorf(codes.Unavailable, "%s is not on this node (%s) nor on any node that answered; not asked: %s", what, d.cfg.NodeID, strings.Join(unreachable, "; "))
	}
	return peers.Peer{}, remoteSource{}, notFound("%s is on no node of this driver (asked this node, %s, and %d others)", what, d.cfg.NodeID, len(list))
}

// definite reports whether a peer's answer is its final word on a source
// it holds (FAILED_PRECONDITION for a block volume it cannot copy under
// its pod, say), not a failure to ask it; NOT_FOUND is neither.
func definite(err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.NotFound, codes.Unknown, codes.Unavailable, codes.Canceled, codes.DeadlineExceeded, codes.Internal, codes.Aborted:
		return false
	}
	return true
}

// remoteContentSource is lockContentSource for a source another node holds.
func (d *hostpathDriver) remoteContentSource(ctx context.Context, kind, id string) (*contentSource, error) {
	peer, rs, err := d.locateRemote(ctx, kind, id)
	if err != nil {
		return nil, err
	}
	k := rs.kind()
	if k.layout != LayoutDirectory && k.layout != LayoutImage && k.layout != layoutBlock {
		return nil, status.Errorf(codes.Internal, "node %s answered an unknown kind %q for %s %s", peer.Node, rs.Layout, kind, id)
	}
	cs := &contentSource{capacity: rs.Capacity, least: rs.Least, kind: k, formatted: rs.Formatted,
		remote: &peer, unlock: func() {}}
	if kind == xferSnapshot {
		cs.snapshotID = id
	} else {
		cs.volumeID = id
	}
	return cs, nil
}

// fetchInto is the copy of a job that makes volume v from a source on
// another node. A source that grew since the call (a clone of a volume
// expanded meanwhile) makes v grow with it, as a local clone does, within
// limit (the request's limit_bytes). What is received is bounded by what
// the source said it holds: a peer cannot fill this node's disk past the
// room set aside for v, and past what is free for a directory volume (one
// not held to its size may hold more than its capacity, and restores on
// one node copy it whole too).
func (d *hostpathDriver) fetchInto(ctx context.Context, src *contentSource, v *state.Volume, limit int64) (int64, error) {
	kind, id := xferSnapshot, src.snapshotID
	if id == "" {
		kind, id = xferVolume, src.volumeID
	}
	from := fmt.Sprintf("node %s (%s)", src.remote.Node, src.remote.Addr)
	meta, body, err := d.xnode.client.Do(ctx, src.remote.Addr, transfer.Request{Op: opFetch, Kind: kind, ID: id})
	if err != nil {
		return 0, peerError(err, fmt.Sprintf("fetch %s %s from %s", kind, id, from))
	}
	defer body.Close()
	var rs remoteSource
	if err := json.Unmarshal(meta, &rs); err != nil || rs.Node != src.remote.Node || rs.kind() != src.kind {
		return 0, status.Errorf(codes.Unavailable, "fetch %s %s from %s: its answer (%s, %v) is not what it said before (%s)", kind, id, from, meta, err, src.kind)
	}
	if err := d.growForSource(v, rs.Capacity, limit); err != nil {
		return 0, err
	}
	bound := v.CapacityBytes
	if src.kind.layout == LayoutDirectory {
		avail, err := d.available()
		if err != nil {
			return 0, err
		}
		bound += max(0, avail)
	}
	var st treestream.Stats
	err = d.vols.ReceiveVolume(ctx, v.ID, func(dst *beneath.Dir) (err error) {
		st, err = treestream.ReceiveInto(ctx, body, dst, treestream.ReceiveOptions{Nice: 10, MaxDataBytes: bound})
		return err
	})
	switch {
	case err == nil:
		return st.Bytes, nil
	case ctx.Err() != nil:
		return 0, err
	case errors.Is(err, treestream.ErrTooLarge):
		return 0, status.Errorf(codes.ResourceExhausted, "receive %s %s from %s: it holds more than the %d bytes the new volume may take here", kind, id, from, bound)
	}
	return 0, peerError(err, fmt.Sprintf("receive %s %s from %s", kind, id, from))
}

// peerError is the answer for a peer's refusal or a broken transfer: a
// peer's own status where it is definite (NOT_FOUND, FAILED_PRECONDITION,
// OUT_OF_RANGE...: what the call would get on that node), UNAVAILABLE for
// what a retry may mend (a peer down, a broken connection, a peer busy).
func peerError(err error, what string) error {
	if definite(err) || status.Code(err) == codes.NotFound {
		st, _ := status.FromError(err)
		return status.Errorf(st.Code(), "%s: %s", what, st.Message())
	}
	return status.Errorf(codes.Unavailable, "%s: %v", what, err)
}

// transferHandler serves this node's snapshots and volumes to its peers.
type transferHandler struct{ d *hostpathDriver }

func (h transferHandler) Handle(ctx context.Context, req transfer.Request, ans *transfer.Answer) error {
	d := h.d
	switch req.Kind {
	case xferSnapshot:
		if err := ids.ValidateSnapshotID(req.ID); err != nil {
			return status.Error(codes.NotFound, err.Error())
		}
	case xferVolume:
		if err := ids.ValidateVolumeID(req.ID); err != nil {
			return status.Error(codes.NotFound, err.Error())
		}
	default:
		return status.Errorf(codes.InvalidArgument, "unknown kind %q", req.Kind)
	}
	if req.Op != opStat && req.Op != opFetch {
		return status.Errorf(codes.InvalidArgument, "unknown operation %q", req.Op)
	}
	lockKind := map[string]string{xferSnapshot: "snap", xferVolume: "vol"}[req.Kind]
	unlock, err := d.rlock(ctx, lockKind, req.ID)
	if err != nil {
		return err
	}
	defer unlock()
	rs, err := d.describeLocal(req.Kind, req.ID)
	if err != nil {
		return err
	}
	if req.Op == opStat {
		return ans.Header(rs)
	}
	// A fetch is a reader of its source, as a local copy is: a delete of
	// the source meanwhile is ABORTED at once rather than queued.
	what := fmt.Sprintf("transfer of %s %s to a peer", req.Kind, req.ID)
	j := d.jobs.startIn(noSlot, "serve/"+ids.NewVolumeID(), "", what, []string{lockKind + "/" + req.ID}, func(jctx context.Context) error {
		// Ends with the peer's connection too.
		jctx, cancel := context.WithCancel(jctx)
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		return d.serveFetch(jctx, req, rs, ans)
	}, nil)
	<-j.done
	d.jobs.forget(j)
	return j.err
}

// noSlot is the slot of a served transfer: the channel bounds those itself.
func noSlot(context.Context) (func(), error) { return func() {}, nil }

// describeLocal answers stat for a ready snapshot or volume of this node.
func (d *hostpathDriver) describeLocal(kind, id string) (remoteSource, error) {
	if kind == xferSnapshot {
		snap, err := d.readySnapshot(id)
		if err != nil {
			return remoteSource{}, err
		}
		k := kindOfSnapshot(snap)
		return remoteSource{Node: d.cfg.NodeID, Capacity: snap.SourceCapacity, Least: snap.RestoreRequest(), Layout: k.layout, FSType: k.fsType, Formatted: snap.SourceFormatted}, nil
	}
	v, err := d.readyVolume(id)
	if err != nil {
		return remoteSource{}, err
	}
	if v.Ephemeral {
		return remoteSource{}, notFound("volume %s not found", id) // an inline volume is no claim's source
	}
	if _, err := d.copyPlan(v); err != nil {
		return remoteSource{}, err
	}
	held := d.heldSize(v)
	least := held
	if r := requestOf(v, held); r > 0 {
		least = r
	}
	k := kindOf(v)
	return remoteSource{Node: d.cfg.NodeID, Capacity: held, Least: least, Layout: k.layout, FSType: k.fsType, Formatted: v.Formatted}, nil
}

// serveFetch streams a snapshot, or a point-in-time copy of a volume.
func (d *hostpathDriver) serveFetch(ctx context.Context, req transfer.Request, rs remoteSource, ans *transfer.Answer) error {
	dir := d.vols.SnapshotPath(req.ID)
	switch {
	case req.Kind != xferVolume:
	case rs.kind().layout == LayoutDirectory && !d.vols.CanReflink():
		// Sent as it is, as a clone on this node copies it: a directory
		// has no point in time to freeze, and a copy of it here first
		// would take its size again from the node's room.
		dir = d.vols.Path(req.ID)
	default:
		var release func()
		err := d.withCopyLocks(ctx, []string{req.ID}, func(vols map[string]*state.Volume, freeze []string) (err error) {
			// What the peer makes is the volume as it is now.
			held := d.heldSize(vols[req.ID])
			rs.Capacity = max(rs.Capacity, held)
			if !d.vols.CanReflink() {
				// A whole copy of an image, here until it is sent.
				if err := d.roomFor(held); err != nil {
					return err
				}
			}
			dir, release, err = d.vols.PointInTimeCopy(ctx, req.ID, freeze)
			return err
		})
		if err != nil {
			return err
		}
		defer release()
	}
	root, err := beneath.OpenRoot(dir)
	if err != nil {
		return diskError("open the transfer's source", err)
	}
	defer root.Close()
	if err := ans.Header(rs); err != nil {
		return err
	}
	start := time.Now()
	st, err := treestream.Send(ctx, root, ans, treestream.SendOptions{Nice: 10})
	if err != nil {
		if errors.Is(err, io.ErrClosedPipe) || ctx.Err() != nil {
			return err
		}
		return diskError("send "+req.Kind+" "+req.ID, err)
	}
	klog.InfoS("Sent to a peer", "kind", req.Kind, "id", req.ID, "files", st.Files, "bytes", st.Bytes, "dataBytes", st.DataBytes, "duration", time.Since(start))
	return nil
}

// roomFor refuses a temporary copy of n bytes that the node's room for
// volumes does not have (what is available once what volumes may still
// fill is set aside).
func (d *hostpathDriver) roomFor(n int64) error {
	d.roomMu.Lock()
	defer d.roomMu.Unlock()
	avail, err := d.available()
	if err != nil {
		return err
	}
	if n > avail {
		return status.Errorf(codes.ResourceExhausted, "a point-in-time copy of the volume on this node (to send it elsewhere) needs %d bytes, and node %s has %d bytes available for volumes", n, d.cfg.NodeID, avail)
	}
	return nil
}
