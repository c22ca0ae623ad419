#!/usr/bin/env bash
# check-test-deps.sh: does this machine have what `make test` runs (make
# test calls it first)? Checked for the machines CI runs on: Debian 12, as
# root, with loop devices. It names the Debian packages to apt-get install.
#
# With HOSTPATH_TEST_REQUIRE_ALL=1 (CI sets it) anything missing is an
# error: the tests would fail on it anyway (internal/testutil.Missing).
# Otherwise it only warns: a developer without root or without some tools
# can still run the tests, which then skip what they cannot do.
#
#   hack/check-test-deps.sh             check, and say what to install
#   hack/check-test-deps.sh --packages  print the packages, one a line
set -euo pipefail

# package:command, for every command the tests and the code they drive run
# (keep in step with .ci/run's need line, the README's Quick start and
# internal/testutil's debianPackage, which a test checks against this list).
deps=(
	e2fsprogs:mkfs.ext4 e2fsprogs:e2fsck
	xfsprogs:mkfs.xfs
	btrfs-progs:mkfs.btrfs btrfs-progs:btrfs
	mount:mount mount:losetup
	util-linux:fsfreeze util-linux:setpriv util-linux:unshare util-linux:blkdiscard util-linux:fallocate util-linux:fstrim
	coreutils:id coreutils:dd
	udev:udevadm
	lvm2:pvcreate lvm2:pvs
	cpio:cpio
	# the VM tests (power cuts, the NFS mount): Debian's kernel, fetched
	# with apt-get download, unpacked with dpkg-deb, its modules indexed
	# with depmod, booted by qemu with a static busybox as init; xz
	# unpacks the kernel so that it boots faster (PVH).
	kmod:depmod
	qemu-system-x86:qemu-system-x86_64
	busybox-static:busybox
	xz-utils:xz
	dpkg:dpkg-deb
	apt:apt-get apt:apt-cache
	# test/docs: the docs' transcripts run in bash, start the driver with
	# make, find it with pgrep and ask its HTTP endpoint with curl.
	bash:bash make:make procps:pgrep curl:curl
	# hack/mkimage: the image archive make image writes is imported into a
	# throw-away containerd with ctr, as kind, minikube and k3s import it.
	containerd:containerd containerd:ctr
)

if [ "${1:-}" = --packages ]; then
	for d in "${deps[@]}"; do echo "${d%%:*}"; done | awk '!seen[$0]++'
	exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--packages]" >&2; exit 2; }

missing_pkgs=() missing_cmds=() problems=() off_path=()
add_pkg() {
	local p
	for p in "${missing_pkgs[@]}"; do [ "$p" = "$1" ] && return 0; done
	missing_pkgs+=("$1")
}
for d in "${deps[@]}"; do
	pkg=${d%%:*} cmd=${d#*:}
	if ! path=$(command -v "$cmd"); then
		if sbin=$(PATH=/usr/sbin:/sbin command -v "$cmd"); then
			off_path+=("$sbin") # installed: the tests look on PATH
		else
			add_pkg "$pkg"
			missing_cmds+=("$cmd")
		fi
	elif [ "$cmd" = busybox ] && ldd "$path" >/dev/null 2>&1; then
		# The VM has no libraries: its init must be linked statically.
		add_pkg "$pkg"
		missing_cmds+=("a static busybox ($path is dynamically linked)")
	fi
done

if [ ${#off_path[@]} -gt 0 ]; then
	problems+=("not on PATH, which the tests search: ${off_path[*]} (add /usr/sbin to PATH)")
fi
if [ "$(id -u)" != 0 ]; then
	problems+=("not root: the tests that mount, attach loop devices or boot a VM need root")
fi
if [ ! -e /dev/loop-control ]; then
	problems+=("no /dev/loop-control: load the loop module (modprobe loop)")
fi
# The VM tests fetch the kernel and the NFS programs once into this cache;
# without it apt needs its package lists to find them.
cache=${HOSTPATH_VM_CACHE:-/var/cache/hostpath-csi/vm}
if ! ls "$cache"/*/hostpath-csi-complete >/dev/null 2>&1 ||
	! ls "$cache"/userland/*/hostpath-csi-complete >/dev/null 2>&1; then
	if command -v apt-cache >/dev/null && ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
		problems+=("apt has no package lists, so the VM tests cannot fetch Debian's kernel: run apt-get update")
	fi
fi

if [ ${#missing_pkgs[@]} -eq 0 ] && [ ${#problems[@]} -eq 0 ]; then
	echo "check-test-deps: everything make test needs is here"
	exit 0
fi
if [ "${HOSTPATH_TEST_REQUIRE_ALL:-}" = 1 ]; then
	echo "check-test-deps: make test cannot run every test here (HOSTPATH_TEST_REQUIRE_ALL=1):" >&2
else
	echo "check-test-deps: warning: the tests that need the following will skip:" >&2
fi
if [ ${#missing_pkgs[@]} -gt 0 ]; then
	echo "  missing: ${missing_cmds[*]}" >&2
	echo "  install: apt-get install ${missing_pkgs[*]}" >&2
fi
for p in "${problems[@]}"; do echo "  $p" >&2; done
if [ "${HOSTPATH_TEST_REQUIRE_ALL:-}" = 1 ]; then
	exit 1
fi
exit 0
