# The driver's image: hostpath-plugin on Debian 12 with the tools it runs on
# a node (mkfs and resize for ext4 and xfs, btrfs-progs, util-linux, and
# mount.nfs from nfs-common for NFS volumes).
#   make image      # with a working docker or podman:
#                   #   build -t hostpath-csi/hostpath-plugin:<tag> .
# Without a container engine, `make image` makes this image as an archive
# instead (the pinned packages the same; the rest what Debian 12 serves that day) (hack/image-archive.sh): hack/rootfs.sh installs
# RUNTIME_PACKAGES, read from this file, at these versions with debootstrap,
# and hack/mkimage writes that tree and the binary as one layer with this
# file's entrypoint. The end-to-end test (test/e2e) makes its driver image
# the same way.
#
# The base images are pinned by digest: the multi-platform index digests of
# golang:1.26.8-bookworm and debian:bookworm-20260824-slim (= debian:12-slim
# on 2026-08-24), as docker-library/repo-info records them
# (repos/golang/remote/1.26.8-bookworm.md, repos/debian/remote/
# bookworm-20260824-slim.md). Both are made from the Debian snapshot of
# 2026-08-24 (snapshot.debian.org/archive/debian/20260824T000000Z).
FROM golang:1.26.8-bookworm@sha256:9fdc884aacc3bec89b20ffc69f4bb369c78210e3e4f600387b5128b12c199f81 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=${VERSION}" -o /hostpath-plugin ./cmd/hostpath-plugin

FROM debian:bookworm-20260824-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171
# NAME=VERSION, one word each (hack/rootfs.sh reads this line): the versions
# Debian 12 (bookworm main) serves as of 2026-12-07 (apt-cache policy NAME).
# deb.debian.org keeps only the newest version of a package, so when Debian
# supersedes one of these, both this build and hack/rootfs.sh fail on it
# until the pin is updated.
ARG RUNTIME_PACKAGES="e2fsprogs=1.47.0-2+b2 xfsprogs=6.1.0-1 btrfs-progs=6.2-1+deb12u2 util-linux=2.38.1-5+deb12u3 nfs-common=1:2.6.2-4+deb12u1"
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /hostpath-plugin /hostpath-plugin
ENTRYPOINT ["/hostpath-plugin"]
