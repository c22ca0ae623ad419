package driver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The classes the Kubernetes storage e2e suite and csi-snapshotter make must
// work; a typo in a user's class must be refused by name. Each case goes
// through the real CreateSnapshot and CreateVolumeGroupSnapshot.
func TestSnapshotClassParameters(t *testing.T) {
	metadata := map[string]string{
		"csi.storage.k8s.io/volumesnapshot/name":        "snap",
		"csi.storage.k8s.io/volumesnapshot/namespace":   "default",
		"csi.storage.k8s.io/volumesnapshotcontent/name": "snapcontent-1",
	}
	groupMetadata := map[string]string{
		"csi.storage.k8s.io/volumegroupsnapshot/name":        "group",
		"csi.storage.k8s.io/volumegroupsnapshot/namespace":   "default",
		"csi.storage.k8s.io/volumegroupsnapshotcontent/name": "groupsnapcontent-1",
	}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for mk, mv := range m {
			out[mk] = mv
		}
		return out
	}
	cases := []struct {
		name   string
		group  bool
		params map[string]string
		want   codes.Code
		names  string // a refusal's message must name this key
	}{
		{name: "no parameters", params: nil, want: codes.OK},
		{name: "csi-snapshotter metadata", params: metadata, want: codes.OK},
		{name: "e2e suite's deletionPolicy Delete", params: with(metadata, "deletionPolicy", "Delete"), want: codes.OK},
		{name: "e2e suite's deletionPolicy Retain", params: map[string]string{"deletionPolicy": "Retain"}, want: codes.OK},
		{name: "typo of a key", params: with(metadata, "deletionPolicyy", "Delete"), want: codes.InvalidArgument, names: "deletionPolicyy"},
		{name: "a storage class parameter", params: map[string]string{"layout": "image"}, want: codes.InvalidArgument, names: "layout"},
		{name: "lower-case deletionpolicy", params: map[string]string{"deletionpolicy": "Delete"}, want: codes.InvalidArgument, names: "deletionpolicy"},
		{name: "group metadata on a snapshot", params: groupMetadata, want: codes.InvalidArgument, names: "volumegroupsnapshot"},

		{name: "group: no parameters", group: true, params: nil, want: codes.OK},
		{name: "group: csi-snapshotter metadata", group: true, params: groupMetadata, want: codes.OK},
		{name: "group: e2e suite's deletionPolicy", group: true, params: with(groupMetadata, "deletionPolicy", "Delete"), want: codes.OK},
		{name: "group: typo of a key", group: true, params: with(groupMetadata, "deletionPolcy", "Delete"), want: codes.InvalidArgument, names: "deletionPolcy"},
		{name: "group: snapshot metadata on a group", group: true, params: metadata, want: codes.InvalidArgument, names: "csi.storage.k8s.io/volumesnapshot"},
	}
	e := newEnv(t)
	a, b := e.create(t, "a"), e.create(t, "b")
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var err error
			if c.group {
				_, err = e.d.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{
					Name: fmt.Sprint("group-", i), SourceVolumeIds: []string{a, b}, Parameters: c.params})
			} else {
				_, err = e.d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
					Name: fmt.Sprint("snap-", i), SourceVolumeId: a, Parameters: c.params})
			}
			if got := status.Code(err); got != c.want {
				t.Fatalf("code %v (%v), want %v", got, err, c.want)
			}
			if c.names != "" && !strings.Contains(status.Convert(err).Message(), c.names) {
				t.Fatalf("message %q does not name %q", status.Convert(err).Message(), c.names)
			}
		})
	}
}
