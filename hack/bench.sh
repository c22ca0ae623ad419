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
go test -run '^$' -bench . -benchtime 4000x ./pkg/state/ ./pkg/keylock/ ./pkg/driver/ | grep -E '^(Benchmark|ok|FAIL)'

if [ "$(id -u)" = 0 ]; then
	echo
	echo "== Copy engine: 1 GiB file + 10000 x 4 KiB, per filesystem (loop images, warm cache) =="
	go test -run '^$' -bench Tree -benchtime 3x ./pkg/copytree/ | grep -E '^(Benchmark|ok|FAIL)|mechanism' | sort -u
fi

if mount | grep -q " $bench/"; then echo "refusing: mounts left under $bench" >&2; exit 1; fi
rm -rf "$bench"
mkdir -p "$bench"
"$out/hostpath-plugin" --endpoint="unix://$sock" --state-dir="$bench/state" --data-dir="$bench/data" \
	--nodeid=bench >"$bench/plugin.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
ctl() { "$out/csictl" -endpoint "unix://$sock" "$@"; }

echo
echo "== Load over the gRPC socket (csictl bench) =="
ctl bench create -count 2000 -concurrency 16
ctl bench create -count 2000 -concurrency 16
ctl bench scale -existing 1000,5000 -samples 400
if [ "$(id -u)" = 0 ]; then
	ctl bench publish -count 300 -dir "$bench/mounts"
else
	echo "NodeStage+NodePublish: skipped (needs root to mount)"
fi
