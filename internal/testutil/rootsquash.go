package testutil

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// SquashRootOnThisThread makes the calling goroutine's OS thread see files
// as an NFS server that squashes root shows them to the driver: without
// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so a directory of mode 0700
// owned by someone else is EACCES. The goroutine stays locked to the
// thread, which is thrown away when the goroutine ends (call it only from
// a goroutine that ends, such as an NFS step's: nfs.Options.BeforeFileOp).
func SquashRootOnThisThread() error {
	runtime.LockOSThread() // never unlocked: the thread ends with its goroutine
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read this thread's capabilities: %w", err)
	}
	for _, c := range []uint{unix.CAP_DAC_OVERRIDE, unix.CAP_DAC_READ_SEARCH} {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("drop this thread's DAC capabilities: %w", err)
	}
	return nil
}
