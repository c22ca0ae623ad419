#!/usr/bin/env bash
# Copy the VolumeSnapshot and VolumeGroupSnapshot CRDs of the snapshot-controller
# version named in deploy/kubernetes/components/images into
# deploy/kubernetes/overlays/snapshot-controller/crds and the chart's
# charts/hostpath-csi/crds (test/helm compares the two). They ship in the Go
# module github.com/kubernetes-csi/external-snapshotter/client/v8 (config/crd),
# so the Go module proxy is their source. Run it after changing that version.
set -euo pipefail
cd "$(dirname "$0")/.."
ver=$(awk '/name: registry.k8s.io\/sig-storage\/snapshot-controller$/{getline; print $2}' deploy/kubernetes/components/images/kustomization.yaml)
[ -n "$ver" ] || { echo "no snapshot-controller tag in deploy/kubernetes/components/images" >&2; exit 1; }
dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$ver" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
for out in deploy/kubernetes/overlays/snapshot-controller/crds charts/hostpath-csi/crds; do
	rm -f "$out"/*.yaml
	for f in "$dir"/config/crd/*_*.yaml; do
		install -m 0644 "$f" "$out/$(basename "$f")"
	done
	echo "copied the CRDs of external-snapshotter $ver into $out"
done
