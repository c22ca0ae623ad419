#!/usr/bin/env bash
# Make (once) the root filesystem of the driver's image for the end-to-end
# test: Debian 12 minbase plus RUNTIME_PACKAGES from the Dockerfile, the same
# packages `make image` installs. Cached outside the repository; prints its
# path.
#   rootfs.sh CACHEDIR
set -euo pipefail
cache=$1
here=$(cd "$(dirname "$0")/../../.." && pwd)
pkgs=$(sed -n 's/^ARG RUNTIME_PACKAGES="\(.*\)"$/\1/p' "$here/Dockerfile")
[ -n "$pkgs" ] || { echo "rootfs.sh: no RUNTIME_PACKAGES in the Dockerfile" >&2; exit 1; }
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=$(echo "bookworm minbase $pkgs" | sha256sum | cut -c1-12)
dir="$cache/rootfs-$key"
if [ -f "$dir/.complete" ]; then
	echo "$dir"
	exit 0
fi
command -v debootstrap >/dev/null || {
	echo "rootfs.sh: installing debootstrap" >&2
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap) >&2
}
# A debootstrap cut short leaves its proc and sys mounted in the tree.
for m in $(awk -v d="$dir.tmp" '{ if (index($5, d "/")==1) print $5 }' /proc/self/mountinfo | sort -r); do
	umount "$m" 2>/dev/null || umount -l "$m"
done
rm -rf --one-file-system "$dir" "$dir.tmp"
mkdir -p "$cache"
echo "rootfs.sh: debootstrap bookworm with: $pkgs" >&2
debootstrap --variant=minbase --include="${pkgs// /,}" bookworm "$dir.tmp" "$mirror" >&2
# What a runtime image does not need.
rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/* \
	"$dir.tmp"/usr/share/doc "$dir.tmp"/usr/share/man "$dir.tmp"/usr/share/locale "$dir.tmp"/dev/*
mv "$dir.tmp" "$dir"
touch "$dir/.complete"
echo "$dir"
