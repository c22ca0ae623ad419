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
		default:
			unreachable = append(unreachable, fmt.Sprintf("%s (%s): %v", a.peer.Node, a.peer.Addr, a.err))
		}
	}
	if len(unreachable) > 0 {
		return peers.Peer{}, remoteSource{}, status.Errorf(codes.Unavailable, "%s is not on this node (%s) nor on any node that answered; not asked: %s", what, d.cfg.NodeID, strings.Join(unreachable, "; "))
	}
	return peers.Peer{}, remoteSource{}, notFound("%s is on no node of this driver (asked this node, %s, and %d others)", what, d.cfg.NodeID, len(list))
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

// fetchInto is the copy of a job that makes volume id from a source on
// another node.
func (d *hostpathDriver) fetchInto(ctx context.Context, src *contentSource, volumeID string) (int64, error) {
	kind, id := xferSnapshot, src.snapshotID
	if id == "" {
		kind, id = xferVolume, src.volumeID
	}
	_, body, err := d.xnode.client.Do(ctx, src.remote.Addr, transfer.Request{Op: opFetch, Kind: kind, ID: id})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return 0, err
		}
		return 0, status.Errorf(codes.Unavailable, "fetch %s %s from node %s (%s): %v", kind, id, src.remote.Node, src.remote.Addr, err)
	}
	defer body.Close()
	var st treestream.Stats
	err = d.vols.ReceiveVolume(ctx, volumeID, func(dst *beneath.Dir) (err error) {
		st, err = treestream.ReceiveInto(ctx, body, dst, treestream.ReceiveOptions{})
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return 0, err
		}
		return 0, status.Errorf(codes.Unavailable, "receive %s %s from node %s (%s): %v", kind, id, src.remote.Node, src.remote.Addr, err)
	}
	return st.Bytes, nil
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
	if req.Kind == xferVolume {
		var release func()
		err := d.withCopyLocks(ctx, []string{req.ID}, func(vols map[string]*state.Volume, freeze []string) (err error) {
			// What the peer makes is the volume as it is now.
			held := d.heldSize(vols[req.ID])
			rs.Capacity = max(rs.Capacity, held)
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
