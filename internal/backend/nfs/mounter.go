package nfs

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// Mounter mounts an NFS source. It is the seam between the driver and the
// kernel's NFS client: tests put a mounter there that bind-mounts a local
// directory standing in for the export and records what it was asked.
//
// k8s.io/mount-utils' mount.Interface cannot be the seam itself: its Mount
// takes no context, and a mount.nfs stuck on a dead server would run on
// after the call's timeout and hold the server's slot until a restart.
// ExecMounter builds the same mount(8) command line as mount-utils
// (mount.MakeMountArgs) and kills it with its process group when ctx ends.
type Mounter interface {
	Mount(ctx context.Context, source, target, fstype string, options []string) error
}

// ExecMounter runs mount(8) (which runs mount.nfs) for each mount.
type ExecMounter struct{}

// Mount runs "mount -t fstype -o options source target"; when ctx ends
// first, the mount process and its children are killed.
func (ExecMounter) Mount(ctx context.Context, source, target, fstype string, options []string) error {
	args := mount.MakeMountArgs(source, target, fstype, options)
	cmd := exec.CommandContext(ctx, "mount", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole group: mount(8) forks mount.nfs, which is what hangs.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return fmt.Errorf("mount %s at %s: killed after %w", source, target, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("mount %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// isMounted reports whether path is a mount point, from the mount table
// alone: a stat of a mount point of a dead server would hang.
func isMounted(path string) (bool, error) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		return false, fmt.Errorf("read the mount table: %w", err)
	}
	return len(ms) > 0, nil
}

// unmount removes every mount stacked at target. A plain unmount first,
// under the guard's timeout; when it fails with a stale handle, an I/O error
// or a timeout (a dead server), a forced, lazy unmount (MNT_FORCE aborts the
// pending NFS requests, MNT_DETACH takes the mount out of the tree at once
// and lets the kernel finish when it can). A target not mounted is success.
//
// MNT_FORCE aborts the pending requests of the whole NFS superblock, which
// every mount of the export on this node shares: the I/O of other pods
// fails with it. So it is used only when the server really stopped
// answering (an operation on the export outlived the timeout, or the handle
// is stale); an export that is busy only because a caller gave up on an
// operation gets a plain unmount, under its own timeout, and a plain
// unmount's error (EBUSY) is returned as it is.
func unmount(ctx context.Context, g *guard, export, target string) error {
	for i := 0; i < 16; i++ {
		mounted, err := isMounted(target)
		if err != nil {
			return err
		}
		if !mounted {
			return nil
		}
		plain := func() error { return unix.Unmount(target, 0) }
		err = g.do(ctx, export, "unmount "+target, plain)
		if errors.Is(err, ErrBusy) && !g.timedOut(export) {
			err = g.run(ctx, export, "unmount "+target, plain)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL):
			return nil // not a mount point after all
		case errors.Is(err, ErrBusy), errors.Is(err, ErrTimeout), errors.Is(err, unix.ESTALE), errors.Is(err, unix.EIO),
			errors.Is(err, unix.ETIMEDOUT):
			if ferr := detach(ctx, g, export, target); ferr != nil && !errors.Is(ferr, unix.EINVAL) {
				return fmt.Errorf("unmount %s: %v; forced lazy unmount: %w", target, err, ferr)
			}
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 16 unmounts", target)
}

// detach unmounts target with MNT_FORCE|MNT_DETACH. The detach takes the
// mount out of the table at once, but when it drops the last mount of an
// NFS client the kernel tears that client down before umount2 returns,
// telling the server goodbye (DESTROY_SESSION): a dead server never
// answers, and the call would never return (found by make e2e-nfs: an
// unstage after the server stopped hung for good). So umount2 runs aside:
// detach returns as soon as target has left the mount table, and the
// thread finishing the teardown is left to return when the server answers
// (the export is marked stuck meanwhile, as for any stuck operation).
//
// One umount2 per target runs at a time: an unmount retried while the
// teardown of the last one has not returned (kubelet retries an unstage
// every few seconds on a dead server) joins it instead of leaving one more
// thread blocked in the kernel each time.
func detach(ctx context.Context, g *guard, export, target string) error {
	done := g.detachOnce(target)
	timeout := time.NewTimer(g.timeout)
	defer timeout.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			if mounted, err := isMounted(target); err == nil && !mounted {
				g.markStuck(export, "teardown after the forced unmount of "+target, done)
				return nil
			}
		case <-timeout.C:
			g.markStuck(export, "forced unmount of "+target, done)
			return fmt.Errorf("%w: forced unmount of %s did not return within %s", ErrTimeout, target, g.timeout)
		case <-ctx.Done():
			g.markStuck(export, "forced unmount of "+target, done)
			return ctx.Err()
		}
	}
}

// forceUnmountSyscall is the system call detach makes.
func forceUnmountSyscall(target string) error {
	return unix.Unmount(target, unix.MNT_FORCE|unix.MNT_DETACH)
}

// detaching is a forced unmount in flight.
type detaching struct {
	done chan struct{}
	err  error
}

// detachOnce starts the forced unmount of target, or joins the one in
// flight; the channel returned gets its result.
func (g *guard) detachOnce(target string) <-chan error {
	g.mu.Lock()
	d := g.detaches[target]
	if d == nil {
		d = &detaching{done: make(chan struct{})}
		g.detaches[target] = d
		go func() {
			d.err = g.forceUnmount(target)
			g.mu.Lock()
			delete(g.detaches, target)
			g.mu.Unlock()
			close(d.done)
		}()
	}
	g.mu.Unlock()
	result := make(chan error, 1)
	go func() { <-d.done; result <- d.err }()
	return result
}

// detaching reports whether a forced unmount of target is in flight.
func (g *guard) detaching(target string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.detaches[target] != nil
}
