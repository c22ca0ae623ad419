#!/usr/bin/env bash
# Runs the Go benchmarks, then starts a fresh driver under OUT/bench and
# drives it with csictl over its socket. Prints the figures; asserts none.
set -euo pipefail
out=${1:-_output}
bench=$(realpath -m "$out/bench")
sock="$bench/csi.sock"

echo "== machine: $(nproc) cores, $(uname -r), data dir on $(df -T "$out" | awk 'NR==2{print $2}') =="
echo
echo "== Go benchmarks (in-process, no gRPC) =="
go test -run '^$' -bench . -benchtime 4000x ./pkg/state/ ./internal/keylock/ ./pkg/driver/ | grep -E '^(Benchmark|ok|FAIL)'
# What a delete or archive of an NFS volume pays to look for another
# share inside it: per entry, against a plain walk of the same tree.
go test -run '^$' -bench CheckNoShareInside -benchtime 20x ./internal/backend/nfs/ | grep -E '^(Benchmark|ok|FAIL)'

if mount | grep -q " $bench/"; then echo "refusing: mounts left under $bench" >&2; exit 1; fi
rm -rf "$bench"
mkdir -p "$bench"
pid=""
fsmounts=()
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; fi
	for m in "${fsmounts[@]}"; do umount "$m" 2>/dev/null || true; done
}
trap cleanup EXIT

# start_driver SOCKET STATE DATA: a driver in the background, pid in $pid.
start_driver() {
	"$out/hostpath-plugin" --endpoint="unix://$1" --state-dir="$2" --data-dir="$3" \
		--nodeid=bench >>"$bench/plugin.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do [ -S "$1" ] && return; sleep 0.05; done
	echo "driver did not start; see $bench/plugin.log" >&2
	exit 1
}
stop_driver() { kill "$pid"; wait "$pid" || true; pid=""; }

start_driver "$sock" "$bench/state" "$bench/data"
ctl() { "$out/csictl" -endpoint "unix://$sock" "$@"; }

echo
echo "== Load over the gRPC socket (csictl bench) =="
ctl bench create -count 2000 -concurrency 16
ctl bench create -count 2000 -concurrency 16
ctl bench scale -existing 1000,5000 -samples 400
if [ "$(id -u)" = 0 ]; then
	ctl bench publish -count 300 -dir "$bench/mounts"
	echo
	echo "== Pod start per kind of volume: CreateVolume, then NodeStage+NodePublish (1 GiB each) =="
	ctl bench layouts -count 20 -dir "$bench/layouts"
else
	echo "NodeStage+NodePublish: skipped (needs root to mount)"
fi

# Writes through a block volume and an image volume against the same write
# to a plain file beside them (ratio per round; the goal is >= 0.9), and the
# cost of attaching and of making an image volume.
if [ "$(id -u)" = 0 ]; then
	echo
	echo "== Block and image volume writes vs a plain file (256 MiB per round; backing files under $bench) =="
	HOSTPATH_BENCH_DIR="$bench" go test -run '^$' -bench . -benchtime 10x ./internal/loop/ ./internal/imagefs/ | grep -E '^(Benchmark|ok|FAIL)'
	echo
	echo "== Making a 1 GiB image or block file: sparse (before) vs preallocated (now), ext4 and xfs data filesystems; MiB/op is what it takes on disk =="
	go test -run '^$' -bench CreateVolumeFile -benchtime 50x ./internal/backend/hostpath/ | grep -E '^(Benchmark|ok|FAIL)'
fi

# Changed block tracking (the SnapshotMetadata service): the changed blocks
# between two snapshots of a block volume from their extent maps, against
# reading both whole, per data filesystem.
if [ "$(id -u)" = 0 ]; then
	echo
	echo "== Snapshot delta of a 1 GiB and a 16 GiB block volume (10% written, 1% changed): extent maps vs a full compare =="
	HOSTPATH_BENCH_DIR="$bench" go test -run '^$' -bench SnapshotDelta -benchtime 3x -timeout 30m ./internal/extents/ | grep -E '^(Benchmark|ok|FAIL)'
fi

# The copy benchmarks leave gigabytes to write back; they go last, and each
# section starts from a synced disk so it does not pay for the one before.
sync
if [ "$(id -u)" = 0 ]; then
	sync
	echo
	echo "== Copy engine: 1 GiB file + 10000 x 4 KiB, per filesystem (loop images, warm cache) =="
	go test -run '^$' -bench Tree -benchtime 3x ./internal/copytree/ | grep -E '^(Benchmark|ok|FAIL)|mechanism' | sort -u
fi

# A restore across nodes: the tree over the authenticated transfer channel
# (treestream both ways), against GNU tar through plain TLS 1.3 between the
# same loopback endpoints; and the channel alone against plain TLS.
echo
echo "== Transfer between nodes (loopback): tree over the channel vs tar over plain TLS; bytes over the channel vs plain TLS =="
go test -run '^$' -bench 'TreeTransfer|TreePlainTLSTar|Transfer$|PlainTLS$' -benchtime 3x ./internal/transfer/ | grep -E '^(Benchmark|ok|FAIL)'
go test -run '^$' -bench SendReceive -benchtime 3x ./internal/treestream/ | grep -E '^(Benchmark|ok|FAIL)'

# Snapshot, restore and clone of issue 3's reference volume (1 GiB random
# file + 10000 x 4 KiB) with the driver's state and data on each filesystem.
if [ "$(id -u)" = 0 ]; then
	stop_driver
	for spec in "ext4:" "xfs:-m reflink=1" "btrfs:"; do
		fs=${spec%%:*}
		mkfsargs=${spec#*:}
		command -v "mkfs.$fs" >/dev/null || { echo "== $fs: skipped, mkfs.$fs not installed =="; continue; }
		img="$bench/$fs.img"
		mnt="$bench/$fs"
		truncate -s 8G "$img"
		force=""
		[ "$fs" = ext4 ] || force=-f
		# shellcheck disable=SC2086
		"mkfs.$fs" -q $force $mkfsargs "$img" >/dev/null
		mkdir -p "$mnt"
		mount -o loop "$img" "$mnt"
		fsmounts+=("$mnt")
		echo
		echo "== Snapshot, restore, clone on $fs (loop image) =="
		sync
		start_driver "$bench/$fs.sock" "$mnt/state" "$mnt/data"
		"$out/csictl" -endpoint "unix://$bench/$fs.sock" -timeout 10m bench snapshot -dir "$bench/$fs-mounts"
		stop_driver
		umount "$mnt"
		fsmounts=("${fsmounts[@]/$mnt/}")
		rm -f "$img"
	done
fi
