package vm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Disk is a raw image file the guest sees as a virtio disk: the first is
// /dev/vda, the second /dev/vdb, and so on.
type Disk struct {
	Path     string
	ReadOnly bool
}

// Config describes one boot.
type Config struct {
	Kernel    *Kernel
	Initramfs string // made by Initramfs.Write
	// Cmdline is added to the kernel command line (after console=ttyS0
	// panic=-1 loglevel=4).
	Cmdline   string
	MemoryMiB int // default 768
	CPUs      int // default 1: software emulation, and the host's cores are shared
	Disks     []Disk
	// Serial receives what the guest writes to ttyS0 (the console: the
	// kernel's messages and /init's output), ttyS1, ... in that order; nil
	// discards. Each port is read as fast as the guest writes, so a slow
	// writer here slows the guest. Everything the guest's serial port had
	// sent out before qemu died is delivered before Done is closed.
	Serial []io.Writer
}

// Machine is a running qemu process.
type Machine struct {
	cmd     *exec.Cmd
	dir     string
	started time.Time
	stderr  bytes.Buffer
	done    chan struct{}
	err     error // set before done is closed
	exited  time.Time
}

// QEMU is the emulator binary, found on PATH.
func QEMU() (string, error) {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", fmt.Errorf("%w: qemu-system-x86_64 not found (apt-get install qemu-system-x86)", ErrUnavailable)
	}
	return p, nil
}

// Start boots a machine. Nothing leaves it: it has no network device at
// all. Its disks are opened with cache=unsafe: every write the guest sends
// to a disk goes straight into the image file (the host's page cache), and
// the guest's flushes are not passed on as host fsyncs. Killing qemu
// therefore loses exactly what the guest had not yet written to its disks
// (its page cache, its dirty buffers, requests not yet submitted) and
// nothing it had written, as a power cut would for a disk that honours
// flushes; host flushes would only matter if the host itself crashed.
//
// The caller must end the machine with Kill (safe at any time, also after
// it exited by itself); qemu is also killed by the kernel if the thread that
// started it dies.
func Start(cfg Config) (*Machine, error) {
	qemu, err := QEMU()
	if err != nil {
		return nil, err
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 768
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if len(cfg.Serial) == 0 {
		cfg.Serial = []io.Writer{nil}
	}
	kernel := cfg.Kernel.Image
	if cfg.Kernel.PVH != "" {
		kernel = cfg.Kernel.PVH
	}
	// Unix socket paths are limited to 108 bytes: keep them short.
	dir, err := os.MkdirTemp("", "vm-")
	if err != nil {
		return nil, err
	}
	m := &Machine{dir: dir, done: make(chan struct{})}
	listeners := make([]net.Listener, len(cfg.Serial))
	fail := func(err error) (*Machine, error) {
		for _, l := range listeners {
			if l != nil {
				l.Close()
			}
		}
		os.RemoveAll(dir)
		return nil, err
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-machine", "pc", "-accel", "tcg",
		"-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs),
		"-display", "none", "-nic", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", cfg.Initramfs,
		"-append", strings.TrimSpace("console=ttyS0 panic=-1 loglevel=4 " + cfg.Cmdline),
	}
	for i := range cfg.Serial {
		sock := filepath.Join(dir, "ttyS"+strconv.Itoa(i))
		if listeners[i], err = net.Listen("unix", sock); err != nil {
			return fail(fmt.Errorf("serial socket: %w", err))
		}
		id := "ser" + strconv.Itoa(i)
		args = append(args, "-chardev", "socket,id="+id+",path="+sock, "-serial", "chardev:"+id)
	}
	for _, d := range cfg.Disks {
		opt := "file=" + d.Path + ",format=raw,if=virtio,cache=unsafe"
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		args = append(args, "-drive", opt)
	}
	m.cmd = exec.Command(qemu, args...)
	m.cmd.Stderr = &m.stderr
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		return fail(fmt.Errorf("start qemu: %w", err))
	}
	m.started = time.Now()

	var copies sync.WaitGroup
	for i, l := range listeners {
		w := cfg.Serial[i]
		if w == nil {
			w = io.Discard
		}
		copies.Add(1)
		go func() {
			defer copies.Done()
			conn, err := l.Accept()
			if err != nil {
				return // qemu died before connecting
			}
			defer conn.Close()
			_, _ = io.Copy(w, conn)
		}()
	}
	go func() {
		werr := m.cmd.Wait()
		m.exited = time.Now()
		// qemu is gone, so its ends of the sockets are closed: each copy
		// ends once it has read what the guest had sent.
		for _, l := range listeners {
			l.Close()
		}
		copies.Wait()
		os.RemoveAll(dir)
		if werr != nil {
			werr = fmt.Errorf("qemu: %w: %s", werr, strings.TrimSpace(m.stderr.String()))
		}
		m.err = werr
		close(m.done)
	}()
	return m, nil
}

// PID is the qemu process's ID.
func (m *Machine) PID() int { return m.cmd.Process.Pid }

// Done is closed when qemu has exited and every serial port's output has
// been delivered.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Err is qemu's exit error once Done is closed: nil when the guest powered
// off.
func (m *Machine) Err() error {
	<-m.done
	return m.err
}

// Uptime is how long qemu ran (so far).
func (m *Machine) Uptime() time.Duration {
	select {
	case <-m.done:
		return m.exited.Sub(m.started)
	default:
		return time.Since(m.started)
	}
}

// Kill ends qemu at once with SIGKILL, sent to the process Start made and
// to no other, and waits until it is gone and its output delivered. The
// guest gets no warning: for it, this is a power cut.
func (m *Machine) Kill() {
	select {
	case <-m.done:
		return
	default:
	}
	if err := m.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		// Still wait below: Wait reaps the process however it ends.
		fmt.Fprintf(os.Stderr, "vm: kill qemu %d: %v\n", m.PID(), err)
	}
	<-m.done
}

// WaitTimeout waits for the guest to power off by itself; after d it kills
// the machine and says so.
func (m *Machine) WaitTimeout(d time.Duration) error {
	select {
	case <-m.done:
		return m.err
	case <-time.After(d):
		m.Kill()
		return fmt.Errorf("the VM did not power off within %s; killed it", d)
	}
}
