// Package docs checks that every command the docs show is run by a test, so
// that the docs cannot drift from what the code does. It reads docs/*.md
// (and, once docs/ exists, README.md for the coverage rules only).
//
// # Transcripts: ```console blocks
//
// A fenced block whose info string is console is a transcript, and
// TestTranscripts runs it:
//
//	```console
//	$ ./_output/csictl create pg-data -size 2Gi
//	hpv1-6c741192973b9ff1f0a9991527cc05ef  2147483648 bytes  topology.hostpath-csi.github.io/node=...
//	$ ./_output/csictl create pg-data -size 5Gi
//	csictl: rpc error: code = AlreadyExists desc = volume "pg-data" already exists ...
//	[1]
//	```
//
// A line starting with "$ " is a command; one ending in a backslash goes on
// to the next line. The lines after it, up to the next command or the
// end of the block, are its output: stdout and stderr together. A last
// output line [N] is its exit status, N > 0; without one the command must
// exit 0. No output lines: the command prints nothing. A block starts with
// a command.
//
// Each file gets a fresh scratch directory that stands for the checkout
// after make build and make run: _output/csictl and _output/hostpath-plugin
// built from the tree (once per test run, with make build's version
// ldflags), a Makefile whose run and demo targets have the real recipes
// and RUN_FLAGS (not the build prerequisite: make prints no go build line;
// RUN_FLAGS is an override, which neither the environment nor make's
// command line changes), and a driver started there with
// make run >_output/run.log 2>&1 & (so a transcript greps its log as a
// reader would), with the node ID vm whatever the machine's name
// (RUN_FLAGS' --nodeid=$(shell hostname)). The directory is on an ext4
// filesystem of its own (a sparse 12 GiB image on a loop device, made
// with mkfs.ext4's defaults), so that what a transcript shows of the data
// filesystem (a copy's mechanism, block counts, a directory's usage) is the
// same on any machine, whatever its /tmp is. The blocks of a file run in
// order against that driver, each command with bash (set -o pipefail) in
// that directory, with LC_ALL=C.UTF-8 and the test's environment less
// RUN_FLAGS, MAKEFLAGS, MAKELEVEL and MFLAGS. Write paths as _output/... or
// /work/main/...: /work/main in a command is the scratch directory, and in
// the output the scratch directory reads /work/main. The driver's HTTP
// address of RUN_FLAGS (127.0.0.1:9808) is likewise a free port here.
// pgrep sees only the processes of the scratch directory, so that
// kill -9 $(pgrep -f _output/hostpath-plugin) stops that driver only.
//
// A command has 2 minutes. One that leaves a driver running (make run,
// make run &) is done once that driver serves _output/csi.sock: its output
// is what it printed until then (make's recipe line and the driver's
// start-up log: show them, or ...), and a make run still in the foreground
// has no exit status. Other background processes are an error. The runner
// stops such drivers itself, and at the end of a file it unmounts and
// detaches whatever the doc left under the scratch directory.
//
// Each command runs in a process group of its own, which the runner stops
// by its ID (SIGKILL), wherever its processes work: the group's leader
// is not reaped before the group is gone, so the ID cannot name another
// group meanwhile; the runner kills nothing else but processes left
// working in its scratch directory. A command also stops 20 s before the
// test binary's deadline (go test -timeout), failing the test with a
// message that says so, so that the cleanup runs before go test's panic;
// a SIGINT or SIGTERM kills every group the runner started and removes
// its scratch directories, mounts and loop devices included, before the
// test binary exits; and bash dies with the test binary (Pdeathsig).
//
// Transcripts need root (the driver mounts) and the tools of
// transcriptTools (main_test.go: bash, make, pgrep, curl, losetup,
// mkfs.ext4, mkfs.xfs, mount), of which TestTranscriptToolsAreRequired
// finds every one the transcripts run that is not essential: without one
// TestTranscripts skips, saying what is missing, and fails with
// HOSTPATH_TEST_REQUIRE_ALL=1.
//
// # Matching
//
// Expected and actual output lines must be equal, where:
//
//   - ... in a line matches any text, possibly none (of a longer run of
//     dots the last three: stray-dir.... is "stray-dir." and any text); a
//     line that is only ... matches any number of lines, possibly none
//     (an output of only such lines checks nothing, and is an error);
//   - runs of spaces count as one, and leading and trailing spaces do not
//     count (columns are padded to the width of paths and durations, which
//     differ between the docs and a run);
//   - each of Normalizations matches any other value of its kind: a klog
//     header (E1122 20:40:58.298903    4723 file.go:120] ) any header of the
//     same severity, an RFC 3339 timestamp any timestamp, duration="..."
//     any quoted duration, a Go duration (160µs, 6.38ms, 2.5s, 1m30s) any
//     duration;
//   - IDs the driver makes at random (hpv1-, hps1- and hpg1- and 32 hex
//     digits; nfs1:server:share:subdir:key and nfss1:server:share:key with a
//     key of 16 hex digits) bind: the first time a doc's ID is expected
//     where the output has an ID of its kind, it stands for that ID in the
//     rest of the file: later commands run with the actual ID in its place,
//     and later output must show the same one. One doc ID binds one actual
//     ID and the other way round; a difference is a mismatch.
//
// A mismatch fails TestTranscripts naming the file, the command's line, the
// command and a diff (- expected, + actual, IDs shown as the doc's), and
// stops that file.
//
// # Directives
//
// An HTML comment on the line right before a console block changes how it
// runs (a directive anywhere else, or an unknown one, is an error):
//
//	<!-- doctest: restart -->            SIGKILL the driver(s), start it again with the same flags
//	<!-- doctest: restart --flag=v ... -->  the same, with RUN_FLAGS plus these flags, for the rest of the file
//	<!-- doctest: skip REASON -->        do not run the block; its commands must be accounted for another way
//
// and before an sh or bash block:
//
//	<!-- doctest: e2e -->                make e2e runs each line (test/e2e, scenario docs-commands)
//	<!-- doctest: e2e default-class -->  the same, with a default class standard made first, as kind has (docs-default-class)
//	<!-- doctest: e2e distributed -->    the same, after the switch to overlays/distributed (docs-distributed)
//	<!-- doctest: e2e uninstall -->      the same, last of all; then nothing of the driver may be left (docs-uninstall)
//	<!-- doctest: e2e helm -->           after the uninstall, on a cluster without the driver, in the namespace default (helm-install)
//	<!-- doctest: e2e helm-distributed --> after the helm scenarios on the single-node release (helm-distributed)
//	<!-- doctest: e2e helm-uninstall --> last of all; then nothing of the release may be left (helm-uninstall)
//	<!-- doctest: e2e dry-run -->        each line, a kubectl apply, create or delete, with --dry-run=server
//	                                     (in docs-commands): for what the e2e cluster lacks, such as an NFS server
//
// Flags of restart are words without spaces; /work/main in them is the
// scratch directory; make run in later commands gets them too.
//
// # Coverage: TestEveryCommandIsRun
//
// Every command shown must be run by a test, or the test fails naming the
// file, the line and the command:
//
//   - a command of a console block of docs/*.md that is not skipped is run
//     by TestTranscripts;
//   - a line of an sh or bash block marked e2e (docs/*.md only) is run by
//     make e2e against a real cluster, from the repository's root, with
//     KUBECONFIG set and kubectl on PATH, in a namespace of its own
//     (e2e-docs-PHASE) as the current context's default, in file order, in
//     its phase; each line must exit 0 and, but for uninstall, should leave
//     the cluster as it found it; a README.md line that such a block runs
//     as written is covered too (a dry-run line covers nothing else);
//   - any other command (a line of another sh or bash block, comments and
//     continuations taken as the shell does; a `$ ` line outside fenced
//     blocks; a command of a skipped console block, or of README.md's) must
//     be the same command as one TestTranscripts runs, or one of these,
//     with VAR=value assignments before it if need be:
//     make TARGET... [VAR=value...], with targets of the Makefile;
//     go test [flags] -run REGEX PKG... (or -bench, -fuzz), where REGEX
//     names a Test, Example or Fuzz function (-bench: a Benchmark, -fuzz: a
//     Fuzz) in each package's _test.go files, and each of its top-level
//     alternatives (split at | outside brackets and parentheses, as go
//     test does; none empty) names one in some package, packages written
//     ./dir/ or ./dir/... from the repository's root, in the main module;
//     apt-get install PKG..., with packages .ci/run installs (its need lines);
//   - in docs/*.md a `$ ` line in a block without an info string or with
//     text is an error: it would be a command nothing runs;
//   - a console block of README.md must be the same lines as a console
//     block of docs/*.md that TestTranscripts runs (not skipped): its
//     output is then checked there.
//
// Blocks of yaml, json, text (docs/*.md: without `$ ` lines) or no info
// string hold no commands, and inline code is not checked. In docs/*.md
// any other info string (shell, go, ...) is an error: nothing would check
// the block.
package docs
