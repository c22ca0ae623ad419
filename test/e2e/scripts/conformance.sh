#!/usr/bin/env bash
# make conformance: the Kubernetes "External Storage" e2e suite (e2e.test of
# the cluster's Kubernetes version, built from the Go module proxy) against
# hostpath-csi deployed on the project's cluster (cluster-up.sh, as make e2e
# deploys it), once per definition file in test/e2e/conformance, then the
# [Serial] specs in a pass of their own. Prints Ran/Passed/Failed/Skipped of
# each pass with its JUnit file, and fails when a spec failed or none ran.
# Always tears the cluster down.
#
#   CONFORMANCE_DRIVERS   definition files to run (default: directory image block)
#   CONFORMANCE_SUBSET    full (default): every spec but [Disruptive];
#                         patterns: a spec of every test suite in every
#                         test pattern, no [Serial] pass (what CI runs); with all
#                         three files, each pattern must still name a spec
#                         that ran (speccheck), or the run fails
#   CONFORMANCE_FOCUS     a regular expression: only the specs it matches
#                         too, and no [Serial] pass (to re-run a few; a
#                         file in which it matches none fails: pick the
#                         files with CONFORMANCE_DRIVERS)
#   CONFORMANCE_PROCS     ginkgo's parallel processes (default 4)
#   CONFORMANCE_OUT       where reports go (default _output/conformance)
set -uo pipefail
source "$(dirname "$0")/env.sh"
[ "$(id -u)" = 0 ] || { echo "make conformance needs root (it runs a kubelet, mounts, and makes network interfaces)"; exit 1; }
started=$SECONDS
drivers=${CONFORMANCE_DRIVERS:-directory image block}
subset=${CONFORMANCE_SUBSET:-full}
procs=${CONFORMANCE_PROCS:-4}
out=${CONFORMANCE_OUT:-$E2E_ROOT/_output/conformance}
conf=$E2E_ROOT/test/e2e/conformance
case $subset in full|patterns) ;; *) echo "CONFORMANCE_SUBSET: full or patterns, not $subset"; exit 2 ;; esac
for d in $drivers; do
	[ -f "$conf/driver-$d.yaml" ] || { echo "no definition file $conf/driver-$d.yaml"; exit 2; }
done
if [ -e "$E2E_DIR" ]; then
	log "error: $E2E_DIR exists: a cluster is up (or was not torn down); run make e2e-down first"
	exit 1
fi
# Ctrl-C or SIGTERM ends the run (ginkgo exits on SIGINT, and the next pass
# would start); the teardown then runs with SIGINT ignored, to its end.
trap '"$E2E_ROOT/test/e2e/scripts/cluster-down.sh"' EXIT
trap 'trap "" INT; exit 130' INT TERM
E2E_CONFORMANCE=1 "$E2E_ROOT/test/e2e/scripts/cluster-up.sh" >/dev/null || exit 1
for f in "$E2E_CACHE"/images-conformance/*.tar; do
	$CTR images import --no-unpack=false "$f" >/dev/null || { log "error: import $f"; exit 1; }
done
log "cluster up in $((SECONDS - started)) s; the suite's images imported"
rm -rf "$out"
mkdir -p "$out"

# The specs of this driver, of the definition file given with
# -storage.testdriver (the suite names them by the driver's name).
focus='External.Storage \[Driver: hostpath-csi\.github\.io\]'
# [Disruptive] specs restart the kubelet through systemd on the node or
# reboot it; this cluster's kubelet is a process with no service manager.
skip='\[Disruptive\]'
# "any volume data source" runs kubernetes-csi's hello-populator image,
# which is built from a module the Go module proxy does not serve.
skip="$skip|provisioning should provision storage with any volume data source"
# patterns: per test suite its quickest spec that still writes and reads
# data through a pod, so that every test pattern (Dynamic PV default fs,
# ext4, xfs, block; snapshots dynamic, pre-provisioned and ephemeral, with
# either deletion policy; clones; CSI inline and generic ephemeral volumes;
# group snapshots) runs at least one spec of each suite that applies.
patterns=(
	'volumes should store data'
	'volumes should allow exec of files on the volume'
	'provisioning should provision storage with pvc data source$'
	'provisioning should provision storage with snapshot data source \[Feature'
	'subPath should support non-existent path'
	'ephemeral should create read/write inline ephemeral volume'
	'snapshottable .*should check snapshot fields, check restore correctly works, check deletion \(ephemeral\)'
	'volume-expand should resize volume when PVC is edited while pod is using it'
	'capacity provides storage capacity information'
	'topology should provision a volume and schedule a pod with AllowedTopologies'
	'fsgroupchangepolicy \(OnRootMismatch\).*pod created with an initial fsgroup, new pod fsgroup applied'
	'read-write-once-pod should block a second pod'
	'volumegroupsnapshottable .*should create snapshots for StatefulSet volumes'
	'volumeMode should not mount / map unused volumes in a pod'
	'multiVolume should access to two volumes with the same volume mode and retain data across pod recreation on the same node'
	'volumeIO should write files of various sizes'
)
patterns_re=$(IFS='|'; echo "${patterns[*]}")

rc=0
sums=()
jsons=()
# pass NAME DEFINITION SERIAL: one ginkgo run; its report in $out/NAME.xml.
pass() {
	local name=$1 def=$2 serial=$3 f=$focus s=$skip p=$procs
	case $def in
	block)
		f="$f \\[Testpattern: [^]]*\\(block volmode\\)"
		# The driver refuses to copy a block volume a pod has published
		# where the data filesystem cannot reflink, as this cluster's (ext4)
		# cannot: a copy of a device being written would be torn. This spec
		# clones one while a pod uses it.
		s="$s|multiVolume should concurrently access the volume and its clone from pods on the same node"
		;;
	# The other files say block: false so that the block patterns run once,
	# in the block pass (every class makes block volumes for block claims,
	# the same kind of volume whatever the class). This spec asserts the
	# opposite of that capability: that a block claim stays pending.
	*) s="$s|volumeMode should fail in binding dynamic provisioned PV to PVC" ;;
	esac
	if [ "$serial" = serial ]; then f="$f.*\\[Serial\\]"; p=1; else s="$s|\\[Serial\\]"; fi
	[ "$subset" = patterns ] && f="$f.*($patterns_re)"
	[ -n "${CONFORMANCE_FOCUS:-}" ] && f="$f.*($CONFORMANCE_FOCUS)"
	log "pass $name: $def, $([ "$serial" = serial ] && echo "[Serial], one process" || echo "$p processes"), $subset"
	local t0=$SECONDS
	"$E2E_BIN/ginkgo" --procs="$p" --timeout=4h --poll-progress-after=10m --no-color --silence-skips \
		--focus="$f" --skip="$s" --output-dir="$out" --junit-report="$name.xml" --json-report="$name.json" \
		"$E2E_BIN/e2e.test" -- --kubeconfig="$KUBECONFIG_E2E" --provider=skeleton \
		--repo-root="$E2E_ROOT" -storage.testdriver="$conf/driver-$def.yaml" >"$out/$name.log" 2>&1
	local prc=$?
	log "pass $name: ginkgo exited $prc after $((SECONDS - t0)) s (log: $out/$name.log)"
	sums+=("$name=$out/$name.xml")
	jsons+=("$out/$name.json")
	# A parallel process that died, a suite timeout or an interrupt fail the
	# run even where every spec in the report passed.
	[ $prc -eq 0 ] || rc=1
	[ $prc -lt 128 ] || exit $prc
}
for d in $drivers; do
	pass "$d" "$d" parallel
	# The [Serial] specs: a pass of their own (none is in the patterns).
	# The block patterns' only one measures deletion at scale
	# (pvc-deletion-performance), which runs only with PerformanceTestOptions,
	# which no file sets: skipped, and a pass that runs nothing fails.
	[ "$subset" = full ] && [ "$d" != block ] && [ -z "${CONFORMANCE_FOCUS:-}" ] && pass "$d-serial" "$d" serial
done
# The reports decide: a failed or interrupted spec, or a pass that ran none.
"$E2E_CACHE/local/junitsum" "${sums[@]}" | tee "$out/summary.txt" || rc=1
# Every pattern still names a spec that ran, in some pass: a spec renamed
# upstream would otherwise leave its pattern running nothing, unnoticed.
# Each pattern applies to some definition file, not to each (block has no
# exec, only image claims group snapshots): checked when all three ran.
if [ "$subset" = patterns ]; then
	printf '%s\n' "${patterns[@]}" >"$out/patterns.txt"
	all=1
	for d in directory image block; do
		case " $(echo $drivers) " in *" $d "*) ;; *) all=0 ;; esac
	done
	if [ $all = 1 ]; then
		"$E2E_CACHE/local/speccheck" -patterns "$out/patterns.txt" "${jsons[@]}" | tee -a "$out/summary.txt" || rc=1
	fi
fi

node_ns=$(node_mnt_ns)
trap - EXIT
"$E2E_ROOT/test/e2e/scripts/cluster-down.sh" >/dev/null || rc=1
"$E2E_ROOT/test/e2e/scripts/leftovers.sh" "$node_ns" || rc=1
log "make conformance ($subset): $([ $rc = 0 ] && echo passed || echo FAILED) in $((SECONDS - started)) s; reports in $out"
exit $rc
