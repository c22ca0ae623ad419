package driver

import (
	"context"
	"slices"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// Listings show hostpath volumes first (IDs hpv1-), then NFS volumes (IDs
// nfs1:) of every export this process has worked on or this node has NFS
// mounts of on record, each part sorted by ID;
// a page token is the first ID of the next page, of either kind. An export
// that does not answer is left out of the listing (and logged), so a dead
// server does not fail the listing of every other volume.

// knownExports are the exports this process has used, and those of the NFS
// mounts this node has on record.
func (d *nfsDriver) knownExports() []ids.NFSSnapshot {
	known := d.exports.Known()
	pubs, err := d.store.AllPublications()
	if err != nil {
		klog.ErrorS(err, "Cannot read the mount records for the NFS exports to list")
		return known
	}
	for _, p := range pubs {
		if p.Backend != backendNFS {
			continue
		}
		v, err := ids.ParseNFSVolumeID(p.VolumeID)
		if err == nil && !slices.ContainsFunc(known, func(k ids.NFSSnapshot) bool { return k.Server == v.Server && k.Share == v.Share }) {
			known = append(known, ids.NFSSnapshot{Server: v.Server, Share: v.Share})
		}
	}
	return known
}

// nfsVolumeRecords lists the ready NFS volumes with IDs >= from.
func (d *nfsDriver) nfsVolumeRecords(ctx context.Context, from string) []*nfs.VolumeRecord {
	var out []*nfs.VolumeRecord
	for _, e := range d.knownExports() {
		x, err := d.exports.Use(ctx, e.Server, e.Share)
		if err != nil {
			klog.ErrorS(err, "Leaving an NFS export out of the volume listing", "export", e.Export())
			continue
		}
		recs, err := x.ListVolumes(ctx)
		x.Release()
		if err != nil {
			klog.ErrorS(err, "Leaving an NFS export out of the volume listing", "export", e.Export())
		}
		for _, r := range recs {
			if r.Phase == nfs.PhaseReady && r.ID >= from {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// nfsSnapshotRecords lists the ready NFS snapshots with IDs >= from that
// keep accepts.
func (d *nfsDriver) nfsSnapshotRecords(ctx context.Context, from string, keep func(*nfs.SnapshotRecord) bool) []*nfs.SnapshotRecord {
	var out []*nfs.SnapshotRecord
	for _, e := range d.knownExports() {
		x, err := d.exports.Use(ctx, e.Server, e.Share)
		if err != nil {
			klog.ErrorS(err, "Leaving an NFS export out of the snapshot listing", "export", e.Export())
			continue
		}
		recs, err := x.ListSnapshots(ctx)
		x.Release()
		if err != nil {
			klog.ErrorS(err, "Leaving an NFS export out of the snapshot listing", "export", e.Export())
		}
		for _, r := range recs {
			if r.Phase == nfs.PhaseReady && r.ID >= from && keep(r) {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// appendNFSVolumes fills a ListVolumes page after its hostpath part: room is
// what max_entries leaves (0: no limit).
func (d *nfsDriver) appendNFSVolumes(ctx context.Context, resp *csi.ListVolumesResponse, from string, room int) {
	recs := d.nfsVolumeRecords(ctx, from)
	for i, r := range recs {
		if room > 0 && i == room {
			resp.NextToken = r.ID
			return
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: nfsCSIVolume(r), Status: &csi.ListVolumesResponse_VolumeStatus{}})
	}
}

// appendNFSSnapshots is appendNFSVolumes for ListSnapshots.
func (d *nfsDriver) appendNFSSnapshots(ctx context.Context, resp *csi.ListSnapshotsResponse, from string, room int, keep func(*nfs.SnapshotRecord) bool) {
	recs := d.nfsSnapshotRecords(ctx, from, keep)
	for i, r := range recs {
		if room > 0 && i == room {
			resp.NextToken = r.ID
			return
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: nfsCSISnapshot(r)})
	}
}

// nfsVolumesAfter ends a ListVolumes page whose hostpath part is complete:
// NFS volumes fill the room left, or the first of them is the next token.
func (d *nfsDriver) nfsVolumesAfter(ctx context.Context, resp *csi.ListVolumesResponse, maxEntries int) {
	if maxEntries > 0 && len(resp.Entries) >= maxEntries {
		if recs := d.nfsVolumeRecords(ctx, ""); len(recs) > 0 {
			resp.NextToken = recs[0].ID
		}
		return
	}
	room := 0
	if maxEntries > 0 {
		room = maxEntries - len(resp.Entries)
	}
	d.appendNFSVolumes(ctx, resp, "", room)
}

// nfsSnapshotsAfter is nfsVolumesAfter for ListSnapshots: the NFS
// snapshots of source volume src, or all of them when src is "" (a
// hostpath volume's are those kept off its node: offnode.go).
func (d *nfsDriver) nfsSnapshotsAfter(ctx context.Context, resp *csi.ListSnapshotsResponse, maxEntries int, src string) {
	all := func(r *nfs.SnapshotRecord) bool { return src == "" || r.SourceVolumeID == src }
	if maxEntries > 0 && len(resp.Entries) >= maxEntries {
		if recs := d.nfsSnapshotRecords(ctx, "", all); len(recs) > 0 {
			resp.NextToken = recs[0].ID
		}
		return
	}
	room := 0
	if maxEntries > 0 {
		room = maxEntries - len(resp.Entries)
	}
	d.appendNFSSnapshots(ctx, resp, "", room, all)
}

// ListVolumes is the NFS part of a listing from an NFS page token (the
// router's merged listing sends here the pages that start among the NFS
// volumes; it has refused a negative max_entries).
func (d *nfsDriver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	token := req.GetStartingToken()
	if token != "" {
		if _, err := ids.ParseNFSVolumeID(token); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %.64q was not issued by this driver; restart the listing without it", token)
		}
	}
	resp := &csi.ListVolumesResponse{}
	d.appendNFSVolumes(ctx, resp, token, int(req.GetMaxEntries()))
	return resp, nil
}

// ListSnapshots answers a ListSnapshots that is about NFS objects alone (the
// router sends here a snapshot ID, a source volume ID or a page token of
// NFS, and has refused a negative max_entries): the snapshot of that ID, or
// a page of the NFS snapshots (of the source volume, when it names one).
func (d *nfsDriver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	id, src, token := req.GetSnapshotId(), req.GetSourceVolumeId(), req.GetStartingToken()
	if id != "" {
		rec, x, err := d.nfsReadySnapshot(ctx, id)
		if err != nil || (src != "" && rec.SourceVolumeID != src) {
			if x != nil {
				x.Release()
			}
			return &csi.ListSnapshotsResponse{}, nil
		}
		x.Release()
		return &csi.ListSnapshotsResponse{Entries: []*csi.ListSnapshotsResponse_Entry{{Snapshot: nfsCSISnapshot(rec)}}}, nil
	}
	if token != "" {
		if _, err := ids.ParseNFSSnapshotID(token); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %.64q was not issued by this driver; restart the listing without it", token)
		}
	}
	if src != "" {
		if v, err := ids.ParseNFSVolumeID(src); err == nil {
			// The source's export, even if this process has not used it yet.
			if x, err := d.exports.Use(ctx, v.Server, v.Share); err == nil {
				x.Release()
			}
		}
	}
	resp := &csi.ListSnapshotsResponse{}
	d.appendNFSSnapshots(ctx, resp, token, int(req.GetMaxEntries()), func(r *nfs.SnapshotRecord) bool {
		return src == "" || r.SourceVolumeID == src
	})
	return resp, nil
}
