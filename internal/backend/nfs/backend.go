// Package nfs keeps volumes as subdirectories of NFS exports. The controller
// mounts each export root it works on once, privately, under its mount
// directory (refcounted: the last user unmounts it), and keeps everything it
// must remember on the export itself, below <share>/.hostpath-csi/, written
// crash-safely: the controller runs in a Deployment that may be rescheduled
// to another node at any time, where nothing of the old node's disk is.
//
// Every mount, unmount and file operation on an export runs under a timeout
// (see guard): a dead server makes calls on its exports fail with ErrTimeout
// or ErrBusy, never hang the driver, and calls on other exports go on.
package nfs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/hostpath-csi/hostpath-csi/internal/beneath"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// DefaultTimeout bounds every operation on an export unless configured.
const DefaultTimeout = 2 * time.Minute

// DefaultFSType is the filesystem type of a mount whose capability names none.
const DefaultFSType = "nfs"

// Options configure a Backend.
type Options struct {
	// MountDir holds the controller's private mounts of export roots.
	MountDir string
	// Timeout bounds every mount, unmount and file operation on an export.
	Timeout time.Duration
	// Mounter mounts NFS sources (ExecMounter when nil).
	Mounter Mounter
	// BeforeFileOp, when set (tests only), runs inside the guard before
	// every file operation on an export: a seam to make one hang as it
	// would on a dead server, or fail at an exact step (its error is the
	// operation's).
	BeforeFileOp func(export, op string) error
	// LinkRecord is the link(2) a new record is put in place with
	// (unix.Linkat when nil); tests stand in a server that refuses hard
	// links with it.
	LinkRecord func(olddirfd int, oldpath string, newdirfd int, newpath string, flags int) error
	// RefuseRenameFlags, when set (tests only), makes every rename on an
	// export take the path it takes on the kernel's NFS client, which
	// refuses renameat2 flags (see beneath.Options): for exports stood in
	// by local directories.
	RefuseRenameFlags bool
}

// Backend is the NFS storage of one driver process.
type Backend struct {
	opts  Options
	guard *guard

	mu      sync.Mutex
	exports map[string]*export // by "server:/share"
	// known are the exports this process has worked on, for listings.
	known map[string]ids.NFSSnapshot
	// enclosingOK are the shares found not to lie inside another share's
	// volume (see checkEnclosing).
	enclosingOK map[string]bool

	// wg counts the background removals of trash/.
	wg sync.WaitGroup

	// life ends at Close: every mount of an export root or of a look at
	// an export above runs under it, so that Close ends the mounts in
	// flight instead of waiting out their timeout. closed is set first,
	// before life ends: a mount that returns after it undoes what it
	// mounted, and Use mounts nothing any more.
	life   context.Context
	stop   context.CancelFunc
	closed atomic.Bool
}

// New returns a backend; nothing is mounted until a call needs an export.
func New(opts Options) (*Backend, error) {
	if opts.MountDir == "" {
		return nil, errors.New("NFS mount directory is empty")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Mounter == nil {
		opts.Mounter = ExecMounter{}
	}
	if opts.LinkRecord == nil {
		opts.LinkRecord = unix.Linkat
	}
	if err := os.MkdirAll(opts.MountDir, 0o700); err != nil {
		return nil, fmt.Errorf("create NFS mount directory: %w", err)
	}
	b := &Backend{opts: opts, guard: newGuard(opts.Timeout), exports: map[string]*export{}, known: map[string]ids.NFSSnapshot{}, enclosingOK: map[string]bool{}}
	b.life, b.stop = context.WithCancel(context.Background())
	b.clearProbes()
	return b, nil
}

// Timeout is the bound on every operation on an export.
func (b *Backend) Timeout() time.Duration { return b.opts.Timeout }

// export is one export root, mounted while refs > 0.
type export struct {
	server, share string
	key           string // "server:/share"
	mnt           string // mount point under MountDir
	// sem serializes mount, unmount and refs; a wait for it ends with the
	// caller's context (a mount stuck on a dead server must not queue
	// every later call behind it for the whole timeout).
	sem  chan struct{}
	refs int
	// options are the mount options of the latest call that had some (a
	// class's mountOptions, nfsvers=3 for a server without NFSv4...), for
	// the next mount of the root; calls that know none reuse them.
	options []string
	// One background removal of trash/ at a time per export; a delete
	// meanwhile asks it to look again.
	purging, purgeAgain atomic.Bool
	// hidden is the driver's directory on the export, opened once per
	// mount (see layout) without following a symlink or crossing a mount:
	// every record, snapshot and trash entry is reached relative to it.
	hidden *beneath.Dir
}

// Export is a mounted export root handed to a caller; Release gives it back.
type Export struct {
	b *Backend
	e *export
	// Root is the export's mount point: <share> on the server.
	Root     string
	released sync.Once
	// hid is e.hidden, held (Retain) until Release.
	hid *beneath.Dir
}

// Server and Share name the export.
func (x *Export) Server() string { return x.e.server }
func (x *Export) Share() string  { return x.e.share }

// Name is "server:/share", for messages.
func (x *Export) Name() string { return x.e.key }

func exportKey(server, share string) string { return server + ":" + share }

// Use mounts server:share (or shares the mount already there) and returns
// it; the caller must Release it. The mount runs under the timeout, with
// the options given (a StorageClass's mountOptions) or, without, those of
// the last call that gave some; "ro" is left out: the controller writes.
func (b *Backend) Use(ctx context.Context, server, share string, options ...string) (*Export, error) {
	if err := ids.ValidateNFSServer(server); err != nil {
		return nil, err
	}
	if err := ids.ValidateNFSShare(share); err != nil {
		return nil, err
	}
	// Volumes of older IDs may spell the server otherwise: one export,
	// one key.
	server = ids.CanonicalNFSServer(server)
	key := exportKey(server, share)
	if err := b.errClosed(key); err != nil {
		return nil, err
	}
	b.mu.Lock()
	e := b.exports[key]
	if e == nil {
		sum := sha256.Sum256([]byte(key))
		e = &export{server: server, share: share, key: key, mnt: filepath.Join(b.opts.MountDir, hex.EncodeToString(sum[:12])), sem: make(chan struct{}, 1)}
		b.exports[key] = e
	}
	b.mu.Unlock()

	// A mount or operation still running after its caller gave up: fail
	// at once rather than queue behind it.
	if err := b.guard.busy(key); err != nil {
		return nil, err
	}
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for another mount of %s: %v", ErrBusy, key, ctx.Err())
	}
	keepSem := false // a mount left running holds it until it ends
	defer func() {
		if !keepSem {
			<-e.sem
		}
	}()
	// Close may have begun while this call waited: it unmounts each
	// export once it holds e.sem, and nothing must be mounted after.
	if err := b.errClosed(key); err != nil {
		return nil, err
	}
	if len(options) > 0 {
		e.options = slices.DeleteFunc(slices.Clone(options), func(o string) bool { return o == "ro" })
	}
	first := e.refs == 0
	if first {
		if err := b.mountRoot(ctx, e, &keepSem); err != nil {
			return nil, err
		}
	}
	e.refs++
	x := &Export{b: b, e: e, Root: e.mnt}
	if first {
		// Before anything is written there: a share inside another
		// share's volume is refused.
		if err := b.checkEnclosing(ctx, e); err != nil {
			e.refs--
			x.released.Do(func() {})
			if uerr := unmount(ctx, b.guard, key, e.mnt); uerr != nil {
				klog.ErrorS(uerr, "Cannot unmount NFS export", "export", key)
			}
			return nil, err
		}
		// The driver's directory is opened by the operation; if it
		// outlives the call (a server dead since the mount), whatever it
		// opens late is closed, never handed to the export.
		var mu sync.Mutex
		var hid *beneath.Dir
		abandoned := false
		err := b.guard.do(ctx, key, "prepare "+ids.HiddenDir, func() error {
			if b.opts.BeforeFileOp != nil {
				if err := b.opts.BeforeFileOp(key, "prepare "+ids.HiddenDir); err != nil {
					return err
				}
			}
			h, err := x.layout()
			mu.Lock()
			defer mu.Unlock()
			if abandoned {
				if h != nil {
					h.Close()
				}
				return err
			}
			hid = h
			return err
		})
		mu.Lock()
		abandoned, e.hidden = err != nil, hid
		mu.Unlock()
		if err != nil {
			e.refs--
			x.released.Do(func() {})
			if uerr := unmount(ctx, b.guard, key, e.mnt); uerr != nil {
				klog.ErrorS(uerr, "Cannot unmount NFS export", "export", key)
			}
			return nil, err
		}
	}
	x.hid = e.hidden.Retain()
	b.mu.Lock()
	b.known[key] = ids.NFSSnapshot{Server: server, Share: share}
	b.mu.Unlock()
	return x, nil
}

// mountRoot mounts the export root at e.mnt, clearing what a crashed
// process may have left there. The mount runs under the timeout whatever
// the caller's deadline: if the caller gives up first (csi-provisioner's
// 10 s are far shorter than the default 2 minutes), the mount goes on and,
// until it ends, calls on the export fail at once naming it, instead of
// each retry starting mount.nfs again; a mount that then times out marks
// the export down as if its caller had waited. It holds e.sem until it
// ends (*keepSem tells Use not to release it).
func (b *Backend) mountRoot(ctx context.Context, e *export, keepSem *bool) error {
	if err := unmount(ctx, b.guard, e.key, e.mnt); err != nil {
		return fmt.Errorf("clear old mount of %s: %w", e.key, err)
	}
	if err := os.MkdirAll(e.mnt, 0o700); err != nil {
		return fmt.Errorf("create mount point for %s: %w", e.key, err)
	}
	if err := b.guard.busy(e.key); err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(b.life, b.opts.Timeout)
	result := make(chan error, 1)
	go func() {
		defer cancel()
		err := b.opts.Mounter.Mount(mctx, e.key, e.mnt, DefaultFSType, e.options)
		if b.closed.Load() {
			err = b.undoMountAtClose(e, err)
		}
		result <- err
	}()
	finish := func(err error) error {
		if err != nil {
			if errors.Is(mctx.Err(), context.DeadlineExceeded) {
				b.guard.markDown(e.key, "mount of "+e.key)
				err = fmt.Errorf("%w: mount of %s did not finish within %s (the mount process was killed): %v", ErrTimeout, e.key, b.opts.Timeout, err)
			}
			return err
		}
		b.guard.markUp(e.key)
		klog.V(2).InfoS("Mounted NFS export", "export", e.key, "at", e.mnt)
		return nil
	}
	select {
	case err := <-result:
		return finish(err)
	case <-ctx.Done():
	}
	// The caller gave up; the mount goes on. Nobody will use what it
	// mounts: the next Use clears it and mounts again.
	done := make(chan error, 1)
	b.guard.hold(e.key, "mount of "+e.key, time.Now(), done)
	*keepSem = true
	go func() {
		err := finish(<-result)
		if err != nil && !b.closed.Load() {
			klog.ErrorS(err, "NFS mount whose caller gave up failed", "export", e.key)
		}
		done <- err
		<-e.sem
	}()
	return fmt.Errorf("%w: mount of %s did not finish before the call's deadline (%v); it goes on for up to %s, and calls on %s fail at once meanwhile", ErrBusy, e.key, ctx.Err(), b.opts.Timeout, e.key)
}

// Release gives the export back; the last user unmounts it.
func (x *Export) Release() {
	x.released.Do(func() {
		e := x.e
		e.sem <- struct{}{}
		defer func() { <-e.sem }()
		x.hid.Close()
		if e.refs--; e.refs > 0 {
			return
		}
		x.closeHidden()
		ctx, cancel := context.WithTimeout(context.Background(), x.b.opts.Timeout)
		defer cancel()
		if err := unmount(ctx, x.b.guard, e.key, e.mnt); err != nil {
			klog.ErrorS(err, "Cannot unmount NFS export; the next use of it mounts it again", "export", e.key, "at", e.mnt)
			return
		}
		_ = os.Remove(e.mnt)
	})
}

// Known lists the exports this process has used, sorted.
func (b *Backend) Known() []ids.NFSSnapshot {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]ids.NFSSnapshot, 0, len(b.known))
	for _, k := range b.known {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		return exportKey(out[i].Server, out[i].Share) < exportKey(out[j].Server, out[j].Share)
	})
	return out
}

// Close unmounts every export root still mounted (none should be: each use
// releases its export), and what is left of looks at the exports above
// them. No mount of this process outlives it: the mounts in flight (a
// mount whose caller gave up goes on in the background) are ended, and
// Close waits for each export's mount lock, within one timeout in all,
// before it unmounts the export; a mount that returns later, past that
// wait, undoes itself (see mountRoot), and Use mounts nothing after Close.
func (b *Backend) Close() {
	b.closed.Store(true)
	b.stop()
	b.mu.Lock()
	exports := make([]*export, 0, len(b.exports))
	for _, e := range b.exports {
		exports = append(exports, e)
	}
	b.mu.Unlock()
	wait := time.NewTimer(b.opts.Timeout)
	defer wait.Stop()
	waited := false
	for _, e := range exports {
		held := false
		if waited {
			select {
			case e.sem <- struct{}{}:
				held = true
			default:
			}
		} else {
			select {
			case e.sem <- struct{}{}:
				held = true
			case <-wait.C:
				waited = true
				klog.InfoS("An NFS mount or operation still runs at shutdown; not waiting for it any longer (a mount that lands later undoes itself)",
					"export", e.key, "waited", b.opts.Timeout)
			}
		}
		// The driver directory's descriptor would keep the mount busy. It
		// is the lock holder's: without the lock, it is left alone (the
		// detach below takes the mount out of the tree all the same).
		if held && e.hidden != nil {
			e.hidden.Close()
			e.hidden = nil
		}
		b.unmountAtClose(e.key, e.mnt)
		b.unmountAtClose(e.key, b.probeMountPoint(e))
		if held {
			<-e.sem
		}
	}
}

// unmountAtClose unmounts target, or detaches it when it stays busy.
func (b *Backend) unmountAtClose(key, target string) {
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
	defer cancel()
	if err := unmount(ctx, b.guard, key, target); err != nil {
		// Still busy (a file operation a timeout abandoned): detach it,
		// so no mount of this process outlives it.
		klog.ErrorS(err, "Cannot unmount NFS export at shutdown; detaching it", "export", key)
		if derr := unix.Unmount(target, unix.MNT_DETACH); derr != nil && !errors.Is(derr, unix.EINVAL) {
			klog.ErrorS(derr, "Cannot detach NFS export at shutdown", "export", key)
		}
	}
}

// errClosed is the error of a call that would mount key after Close.
func (b *Backend) errClosed(key string) error {
	if b.closed.Load() {
		return fmt.Errorf("%w: the driver is shutting down; not mounting %s", ErrBusy, key)
	}
	return nil
}

// undoMountAtClose unmounts what a mount of e's root that returned (with
// err) after Close began may have mounted, whatever it reported: a mount
// killed by Close may have landed all the same. The caller gets an error.
func (b *Backend) undoMountAtClose(e *export, err error) error {
	b.unmountAtClose(e.key, e.mnt)
	if err == nil {
		err = b.errClosed(e.key)
	}
	return err
}

// closeHidden drops the export's reference to its driver directory (at
// the last release, before the unmount: an operation still running keeps
// its own reference until it returns).
func (x *Export) closeHidden() {
	if x.e.hidden != nil {
		x.e.hidden.Close()
		x.e.hidden = nil
	}
}

// do runs a file operation on x under the guard (and the test seam). The
// operation holds the driver directory open while it runs, even if it
// outlives the call.
func (x *Export) do(ctx context.Context, op string, fn func() error) error {
	return x.doHolding(ctx, op, nil, fn)
}

// doHolding is do for an operation that uses the directories held too:
// each stays open while the operation runs, even if it outlives the call
// and the caller closes its own reference meanwhile (a descriptor closed
// under a running operation could be reused for another file).
func (x *Export) doHolding(ctx context.Context, op string, held []*beneath.Dir, fn func() error) error {
	hid := x.hid.Retain()
	for _, d := range held {
		d.Retain()
	}
	release := func() {
		hid.Close()
		for _, d := range held {
			d.Close()
		}
	}
	var claimed atomic.Bool // by the operation, or by the caller if it never ran
	err := x.b.guard.do(ctx, x.e.key, op, func() error {
		if !claimed.CompareAndSwap(false, true) {
			return fmt.Errorf("%s on %s: not started", op, x.e.key)
		}
		defer release()
		if x.b.opts.BeforeFileOp != nil {
			if err := x.b.opts.BeforeFileOp(x.e.key, op); err != nil {
				return err
			}
		}
		return fn()
	})
	if claimed.CompareAndSwap(false, true) {
		release()
	}
	return err
}
