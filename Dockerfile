# The driver's image: hostpath-plugin on Debian 12 with the tools it runs on
# a node (mkfs and resize for ext4 and xfs, btrfs-progs, util-linux, and
# mount.nfs from nfs-common for NFS volumes).
#   make image      # docker or podman build -t hostpath-csi/hostpath-plugin:<tag> .
# The end-to-end test (test/e2e) has no container engine: it makes the same
# image from the same Debian packages (RUNTIME_PACKAGES, read from this file)
# and the same binary.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=${VERSION}" -o /hostpath-plugin ./cmd/hostpath-plugin

FROM debian:12-slim
ARG RUNTIME_PACKAGES="e2fsprogs xfsprogs btrfs-progs util-linux nfs-common"
RUN apt-get update && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${RUNTIME_PACKAGES} && \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /hostpath-plugin /hostpath-plugin
ENTRYPOINT ["/hostpath-plugin"]
