#!/usr/bin/env bash
# Make the driver's image without a container engine, as an archive that
# kind load image-archive, minikube image load and k3s ctr images import
# take (an OCI image layout that is a Docker archive too: hack/mkimage).
# The Dockerfile's image: Debian 12 minbase with RUNTIME_PACKAGES at the
# Dockerfile's versions (the other packages: what Debian 12 serves today) (hack/rootfs.sh, cached in
# OUT/image), the binary built as the Dockerfile builds it, the same
# entrypoint and PATH. Needs root (debootstrap, and reading the tree's
# root-only files). make image runs it when there is no docker or podman.
#   image-archive.sh OUT IMAGE TAG VERSION    # writes OUT/hostpath-plugin-TAG.oci.tar
set -euo pipefail
[ $# -eq 4 ] || { echo "usage: $0 OUT IMAGE TAG VERSION" >&2; exit 2; }
out=$1 image=$2 tag=$3 version=$4
cd "$(dirname "$0")/.."
[ -n "$tag" ] || { echo "image-archive.sh: no image tag" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
	echo "image-archive.sh: needs root: debootstrap makes the image's Debian root filesystem (or use docker or podman: make image)" >&2
	exit 1
fi
# The name as docker and containerd normalize it: docker.io/ before a name
# without a registry (library/ too without a namespace).
case ${image%%/*} in
*.* | *:* | localhost) full=$image ;;
*) if [[ $image == */* ]]; then full=docker.io/$image; else full=docker.io/library/$image; fi ;;
esac
work=$out/image
mkdir -p "$work"
rootfs=$(./hack/rootfs.sh "$work")
# As the Dockerfile's build stage does.
CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=$version" \
	-o "$work/hostpath-plugin" ./cmd/hostpath-plugin
go build -trimpath -o "$work/mkimage" ./hack/mkimage
archive=$out/hostpath-plugin-$tag.oci.tar
"$work/mkimage" -name "$full:$tag" -o "$archive" -rootfs "$rootfs" \
	-file "$work/hostpath-plugin:/hostpath-plugin:0755" -entrypoint /hostpath-plugin \
	-env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"$work/mkimage" -check "$archive" -name "$full:$tag" -entrypoint /hostpath-plugin
echo "wrote $archive ($(du -h "$archive" | cut -f1)); load it with:"
echo "  kind load image-archive $archive"
echo "  minikube image load $archive"
echo "  sudo k3s ctr images import $archive"
