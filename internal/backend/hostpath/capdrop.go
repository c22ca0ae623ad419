package hostpath

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// withoutCapability runs f on an OS thread that has dropped capability c
// from its effective set; the rest of the process keeps it. Capabilities
// are per thread in Linux, so the thread is locked for f and thrown away
// afterwards (its goroutine ends still locked) rather than returned to the
// scheduler without c.
//
// The limit self-tests write through it without CAP_SYS_RESOURCE: a driver
// running privileged holds that capability, and with it root writes past
// ext4 and xfs quotas, so a probe written with it would fail where the
// tenants' writes, made without it, are held.
func withoutCapability(c int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("read this thread's capabilities: %w", err)
			return
		}
		data[c/32].Effective &^= 1 << (uint(c) % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("drop capability %d on this thread: %w", c, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}
