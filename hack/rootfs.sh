#!/usr/bin/env bash
# Make (once) the root filesystem of the driver's image without a container
# engine: Debian 12 minbase plus RUNTIME_PACKAGES from the Dockerfile, the
# same packages at the same versions that the Dockerfile's apt-get installs.
# Used by `make image` when there is no docker or podman, and by the
# end-to-end test (test/e2e/scripts/build.sh). Needs root (debootstrap).
# Cached under CACHEDIR; prints its path.
#   rootfs.sh CACHEDIR
# DEBIAN_MIRROR picks the mirror (default deb.debian.org, which serves only
# the newest version of each package: once Debian supersedes a pinned
# version this fails and says so; the Dockerfile's pins then need updating,
# or DEBIAN_MIRROR can name a snapshot, such as
# http://snapshot.debian.org/archive/debian/20260824T000000Z, the one the
# Dockerfile's base image was made from).
set -euo pipefail
# Absolute: the cleanup below finds leftover mounts by their absolute paths.
cache=$(realpath -m "$1")
here=$(cd "$(dirname "$0")/.." && pwd)
# RUNTIME_PACKAGES: NAME=VERSION words (apt-get's syntax). debootstrap
# takes names only, so the versions are checked once it has installed them.
pins=$(sed -n 's/^ARG RUNTIME_PACKAGES="\(.*\)"$/\1/p' "$here/Dockerfile")
[ -n "$pins" ] || { echo "rootfs.sh: no RUNTIME_PACKAGES in the Dockerfile" >&2; exit 1; }
names=()
for p in $pins; do
	case $p in
	?*=?*) names+=("${p%%=*}") ;;
	*) echo "rootfs.sh: RUNTIME_PACKAGES in the Dockerfile: $p has no =VERSION" >&2; exit 1 ;;
	esac
done
pkgs=${names[*]}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Keyed by the package names; a cached tree whose versions differ from the
# pins is made again.
key=$(echo "bookworm minbase $pkgs" | sha256sum | cut -c1-12)
dir="$cache/rootfs-$key"

# versions_differ DIR: print each pinned package whose installed version in
# DIR is not the pinned one.
versions_differ() {
	local p name want have
	for p in $pins; do
		name=${p%%=*} want=${p#*=}
		have=$(dpkg-query --admindir="$1/var/lib/dpkg" -W -f='${Version}' "$name" 2>/dev/null || true)
		[ "$have" = "$want" ] || echo "$name: installed ${have:-nothing}, the Dockerfile pins $want"
	done
}

if [ -f "$dir/.complete" ]; then
	stale=$(versions_differ "$dir")
	if [ -z "$stale" ]; then
		echo "$dir"
		exit 0
	fi
	echo "rootfs.sh: $dir has other versions than the Dockerfile's; making it again:" >&2
	echo "$stale" >&2
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
echo "rootfs.sh: debootstrap bookworm with: $pins" >&2
debootstrap --variant=minbase --include="${pkgs// /,}" bookworm "$dir.tmp" "$mirror" >&2
stale=$(versions_differ "$dir.tmp")
if [ -n "$stale" ]; then
	echo "rootfs.sh: $mirror serves other versions than the Dockerfile pins:" >&2
	echo "$stale" >&2
	echo "rootfs.sh: update RUNTIME_PACKAGES in the Dockerfile (apt-cache policy NAME), or set DEBIAN_MIRROR to a snapshot.debian.org archive that has the pinned versions" >&2
	rm -rf --one-file-system "$dir.tmp"
	exit 1
fi
# What a runtime image does not need, and what debootstrap brought from this
# host or this day (the runtime mounts its own hostname and resolv.conf).
# The packages' copyright files stay, as in Debian's slim images.
rm -rf "$dir.tmp"/var/cache/apt/archives/*.deb "$dir.tmp"/var/lib/apt/lists/* \
	"$dir.tmp"/usr/share/man "$dir.tmp"/usr/share/locale "$dir.tmp"/dev/* \
	"$dir.tmp"/var/log/* "$dir.tmp"/var/cache/ldconfig/aux-cache
find "$dir.tmp"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find "$dir.tmp"/usr/share/doc -mindepth 1 -type d -empty -delete
: >"$dir.tmp"/etc/hostname
: >"$dir.tmp"/etc/resolv.conf
mv "$dir.tmp" "$dir"
touch "$dir/.complete"
echo "$dir"
