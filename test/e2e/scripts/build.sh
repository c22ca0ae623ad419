#!/usr/bin/env bash
# Build (or find cached) everything the end-to-end cluster runs:
# - Kubernetes v$K8S_VERSION and the kubernetes-csi sidecars at the versions
#   named in deploy/kubernetes/components/images, from the Go module proxy;
# - the driver from this checkout, the stand-in sidecars and tools of test/e2e;
# - the driver's root filesystem (Debian packages, as the Dockerfile);
# - an OCI image archive for every image the manifests and examples name.
# Upstream builds, the root filesystem and unchanged images are cached in
# $E2E_CACHE, so a warm run rebuilds only the driver and its image.
set -euo pipefail
source "$(dirname "$0")/env.sh"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
export CGO_ENABLED=0

images_file=$E2E_ROOT/deploy/kubernetes/components/images/kustomization.yaml
tag() { awk -v n="$1" '$1=="-" && $2=="name:" && $3==n {getline; print $2}' "$images_file"; }
need_tag() { local t; t=$(tag "$1"); [ -n "$t" ] || die "no tag for $1 in $images_file"; echo "$t"; }

up=$E2E_ROOT/test/e2e/scripts/build-upstream.sh
mkdir -p "$E2E_BIN"
# One build at a time (.ci/run starts one in the background, cluster-up.sh
# another): a second would remove the first's root filesystem in the making.
exec 9>"$E2E_CACHE/.build.lock"
flock 9
log "Kubernetes $K8S_VERSION"
"$up" "$E2E_BIN" k8s.io/kubernetes "$K8S_VERSION" k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
	k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl
snap=$(need_tag registry.k8s.io/sig-storage/csi-snapshotter)
[ "$snap" = "$(need_tag registry.k8s.io/sig-storage/snapshot-controller)" ] ||
	die "csi-snapshotter and snapshot-controller must have one version (one module builds both)"
log "external-snapshotter $snap"
"$up" "$E2E_BIN" github.com/kubernetes-csi/external-snapshotter/v8 "$snap" \
	github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
	github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
prov=$(need_tag registry.k8s.io/sig-storage/csi-provisioner)
log "external-provisioner $prov"
major=${prov%%.*}
"$up" "$E2E_BIN" "github.com/kubernetes-csi/external-provisioner/$major" "$prov" \
	"github.com/kubernetes-csi/external-provisioner/$major/cmd/csi-provisioner"

log "driver and test tools"
local_bin=$E2E_CACHE/local
mkdir -p "$local_bin"
drv=$(need_tag hostpath-csi/hostpath-plugin)
(cd "$E2E_ROOT" && go build -trimpath -ldflags "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=$drv-e2e" \
	-o "$local_bin/" ./cmd/hostpath-plugin)
# mkimage and rootfs.sh live in hack/: make image uses them too.
(cd "$E2E_ROOT" && go build -trimpath -o "$local_bin/" ./hack/mkimage)
(cd "$E2E_ROOT/test/e2e" && go build -trimpath -o "$local_bin/" ./standins/... ./tools/...)
# The helm command the docs' Helm lines run (_output/bin/helm, as make helm
# makes it for a reader): the helm scenarios install the chart with it.
(cd "$E2E_ROOT" && make --no-print-directory helm >/dev/null)

rootfs=$("$E2E_ROOT/hack/rootfs.sh" "$E2E_CACHE")

log "images"
img=$E2E_CACHE/images
mkdir -p "$img"
mkimage=$local_bin/mkimage
# image FILE NAME INPUTS... -- MKIMAGE-ARGS: (re)make FILE (in $img unless
# absolute) when an input is newer.
image() {
	local file=$1 name=$2; shift 2
	[[ $file = /* ]] || file=$img/$file
	local stale=false inputs=()
	while [ "$1" != -- ]; do inputs+=("$1"); shift; done; shift
	[ -f "$file" ] || stale=true
	for i in "${inputs[@]}"; do [ "$i" -nt "$file" ] && stale=true; done
	# The name and how it is made: a changed recipe remakes the image.
	local recipe; recipe="$name $(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
	[ -f "$file.name" ] && [ "$(cat "$file.name")" = "$recipe" ] || stale=true
	if $stale; then
		"$mkimage" -name "$name" -o "$file" "$@"
		echo "$recipe" >"$file.name"
	fi
}
sidecar() { # FILE BINARY IMAGE
	local t; t=$(need_tag "$3")
	image "$1" "$3:$t" "$2" -- -file "$2:/$(basename "$2"):0755" -entrypoint "/$(basename "$2")"
}
image driver.tar "docker.io/hostpath-csi/hostpath-plugin:$drv" "$local_bin/hostpath-plugin" "$rootfs/.complete" -- \
	-rootfs "$rootfs" -file "$local_bin/hostpath-plugin:/hostpath-plugin:0755" -entrypoint /hostpath-plugin \
	-env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
sidecar provisioner.tar "$E2E_BIN/csi-provisioner" registry.k8s.io/sig-storage/csi-provisioner
sidecar snapshotter.tar "$E2E_BIN/csi-snapshotter" registry.k8s.io/sig-storage/csi-snapshotter
sidecar snapshot-controller.tar "$E2E_BIN/snapshot-controller" registry.k8s.io/sig-storage/snapshot-controller
# Stand-ins for the sidecars the module proxy does not serve, under the real
# images' names (see docs/testing.md).
sidecar resizer.tar "$local_bin/csi-resizer" registry.k8s.io/sig-storage/csi-resizer
sidecar registrar.tar "$local_bin/csi-node-driver-registrar" registry.k8s.io/sig-storage/csi-node-driver-registrar
sidecar livenessprobe.tar "$local_bin/livenessprobe" registry.k8s.io/sig-storage/livenessprobe
image pause.tar registry.k8s.io/pause:3.10 "$local_bin/pause" -- -file "$local_bin/pause:/pause:0755" -entrypoint /pause
# busybox for the examples and test pods: Debian's busybox-static, its version.
command -v busybox >/dev/null && busybox --list >/dev/null 2>&1 || {
	log "installing busybox-static"
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static) >&2
}
bb=$(readlink -f "$(command -v busybox)")
links=()
for a in $(busybox --list); do [ "$a" = busybox ] || links+=(-symlink "/bin/busybox:/bin/$a"); done
image busybox.tar docker.io/library/busybox:1.35 "$bb" -- -file "$bb:/bin/busybox:0755" "${links[@]}" \
	-env PATH=/bin -cmd sh

# make conformance: the Kubernetes e2e suite (e2e.test, ginkgo) and what it
# runs in its pods, under the names it asks for. agnhost is built from
# Kubernetes' own source with busybox for its shell tools (the real image
# adds Alpine's); the suite's busybox and its nginx (which the storage specs
# use only to run a shell command) are Debian's busybox, glibc-dns-testing
# the driver image's Debian root filesystem. None of these images is
# pulled: they are imported.
if [ "${E2E_CONFORMANCE:-}" = 1 ]; then
	log "Kubernetes $K8S_VERSION e2e suite: e2e.test, ginkgo, agnhost"
	"$up" "$E2E_BIN" k8s.io/kubernetes "$K8S_VERSION" test:k8s.io/kubernetes/test/e2e \
		github.com/onsi/ginkgo/v2/ginkgo k8s.io/kubernetes/test/images/agnhost
	cimg=$E2E_CACHE/images-conformance
	mkdir -p "$cimg"
	suite_busybox() { # FILE NAME
		image "$cimg/$1" "$2" "$bb" -- -file "$bb:/bin/busybox:0755" "${links[@]}" -env PATH=/bin -cmd sh
	}
	suite_busybox busybox.tar registry.k8s.io/e2e-test-images/busybox:1.37.0-2
	suite_busybox nginx.tar registry.k8s.io/e2e-test-images/nginx:1.27.0-2
	# glibc-dns-testing: a glibc userland with GNU coreutils, whose dd the
	# multiVolume specs write with (oflag=nocache, which busybox's dd
	# lacks): the driver image's Debian root filesystem.
	image "$cimg/glibc-dns-testing.tar" registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1 "$rootfs/.complete" -- \
		-rootfs "$rootfs" -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -cmd sh
	image "$cimg/agnhost.tar" registry.k8s.io/e2e-test-images/agnhost:2.66.1 "$E2E_BIN/agnhost" "$bb" -- \
		-file "$E2E_BIN/agnhost:/agnhost:0755" -file "$bb:/bin/busybox:0755" "${links[@]}" \
		-symlink "/agnhost:/agnhost-2" -env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		-entrypoint /agnhost -cmd pause
	image "$cimg/pause.tar" registry.k8s.io/pause:3.10.2 "$local_bin/pause" -- -file "$local_bin/pause:/pause:0755" -entrypoint /pause
fi
log "built; images in $img"
