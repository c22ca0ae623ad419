// Command nodeinit is process 1 of the end-to-end node: containerd, the
// kubelet and every pod run in a PID and mount namespace of their own, so
// that /proc/1 inside them is this process, whose mount namespace is the
// node's. The Kubernetes e2e suite's hostexec pods reach "the host" with
// `nsenter --mount=/rootfs/proc/1/ns/mnt`; this machine's real PID 1 is not
// ours to enter, so without a node of its own they cannot.
//
// It is started by `unshare --pid --mount --fork --propagation unchanged`,
// so mounts below a shared mount (/var/lib/kubelet) still reach the host.
// It makes its /proc private before mounting a proc of the new PID
// namespace over it (a shared /proc would carry that mount to the host),
// writes its PID as the host sees it to -pidfile, reaps the orphans that
// are re-parented to it, and exits on SIGTERM, which ends every process of
// the node.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	pidfile := flag.String("pidfile", "", "file to write this process's PID as the host sees it")
	flag.Parse()
	if err := setup(*pidfile); err != nil {
		fmt.Fprintln(os.Stderr, "nodeinit:", err)
		os.Exit(1)
	}
	// A channel of its own for the stop signals: os/signal drops a signal
	// whose channel is full, and a burst of SIGCHLDs (the shims killed at
	// teardown) must not crowd out the SIGTERM that follows.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			return
		case <-children:
			reap()
		}
	}
}

func setup(pidfile string) error {
	if os.Getpid() != 1 {
		return fmt.Errorf("must be PID 1 of a new PID namespace (run under unshare --pid --fork), not %d", os.Getpid())
	}
	// Still the host's /proc: its "self" names this process in the host's
	// PID namespace.
	hostPID, err := os.Readlink("/proc/self")
	if err != nil {
		return fmt.Errorf("read the host PID: %w", err)
	}
	if _, err := strconv.Atoi(hostPID); err != nil {
		return fmt.Errorf("host PID %q: %w", hostPID, err)
	}
	if err := syscall.Mount("", "/proc", "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make /proc private: %w", err)
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount the node's /proc: %w", err)
	}
	if pidfile != "" {
		if err := os.WriteFile(pidfile+".tmp", []byte(hostPID+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(pidfile+".tmp", pidfile); err != nil {
			return err
		}
	}
	return nil
}

// reap collects every child that has exited (orphans included).
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
