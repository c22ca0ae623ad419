package docs

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procStat is what /proc/PID/stat says of a process.
type procStat struct {
	pid, pgrp int
	zombie    bool
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	// pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	pgrp, err := strconv.Atoi(f[2])
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: process group %q", pid, f[2])
	}
	return procStat{pid: pid, pgrp: pgrp, zombie: f[0] == "Z" || f[0] == "X"}, nil
}

// allProcs lists the live processes (zombies left out).
func allProcs() []procStat {
	ents, _ := os.ReadDir("/proc")
	var out []procStat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil || st.zombie {
			continue // gone meanwhile
		}
		out = append(out, st)
	}
	return out
}

// groupMembers are the live processes of process group pgid.
func groupMembers(pgid int) []int {
	var out []int
	for _, p := range allProcs() {
		if p.pgrp == pgid {
			out = append(out, p.pid)
		}
	}
	return out
}

// cwdUnder says whether process pid works at or below dir: the runner's
// processes all start in its scratch directory, which nothing else uses.
func cwdUnder(pid int, dir string) bool {
	cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	return err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/"))
}

// A proc is a bash the runner started, the leader of a process group of
// its own (Setpgid: the group's ID is its PID). The runner does not reap
// it until the group is empty: it waits for the leader's exit with
// WNOWAIT, so an exited leader stays a zombie, and a zombie keeps its ID
// from reuse. So while a proc is not reaped, its group ID names the group
// the runner made and nothing else, and a SIGKILL to it reaches only the
// processes the runner started there, wherever they work.
type proc struct {
	cmd    *exec.Cmd
	pgid   int
	exited chan struct{} // closed once the leader has exited (a zombie, not reaped)
	status int           // the leader's exit status (128+N for signal N), once exited
	reap   sync.Once
}

// startProc starts cmd as the leader of a new process group, killed
// (SIGKILL) when the test binary dies, and registers it (see runner).
func startProc(cmd *exec.Cmd) (*proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	runner.mu.Lock()
	defer runner.mu.Unlock()
	if runner.stopping {
		runner.mu.Unlock()
		waitIfStopping()
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, pgid: cmd.Process.Pid, exited: make(chan struct{})}
	runner.procs[p] = true
	go p.waitExit()
	return p, nil
}

// sigchld is the start of a siginfo_t of SIGCHLD, as waitid fills it:
// si_signo, si_errno, si_code, padding, then si_pid, si_uid, si_status.
type sigchld struct {
	Signo, Errno, Code, _ int32
	Pid, UID, Status      int32
}

// The si_code values of SIGCHLD.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// waitExit waits for the leader's exit without reaping it.
func (p *proc) waitExit() {
	defer close(p.exited)
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.pgid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			p.status = -1
			return
		}
		break
	}
	si := (*sigchld)(unsafe.Pointer(&info))
	switch si.Code {
	case cldExited:
		p.status = int(si.Status)
	case cldKilled, cldDumped:
		p.status = 128 + int(si.Status) // as bash shows a command killed by a signal
	default:
		p.status = -1
	}
}

// reaped reaps the leader, once it has exited: after this its ID may be
// reused, so only once the group is empty.
func (p *proc) reaped() {
	p.reap.Do(func() {
		<-p.exited
		_ = p.cmd.Wait()
		runner.mu.Lock()
		delete(runner.procs, p)
		runner.mu.Unlock()
	})
}

// kill sends SIGKILL to p's process group, waits until none of its
// processes is left, and reaps the leader.
func (p *proc) kill() error {
	if err := syscall.Kill(-p.pgid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("kill process group %d: %w", p.pgid, err)
	}
	err := waitGroupGone(p.pgid, 10*time.Second)
	if err == nil {
		p.reaped()
	}
	return err
}

// waitGroupGone waits until process group pgid has no live process (its
// zombies are its parents' to reap).
func waitGroupGone(pgid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		left := groupMembers(pgid)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of group %d still there %v after SIGKILL", left, pgid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killUnder sends SIGKILL to every process working under dir (one that
// left its process group) and waits until they are gone.
func killUnder(dir string) error {
	var pids []int
	for _, p := range allProcs() {
		if p.pid != os.Getpid() && cwdUnder(p.pid, dir) {
			pids = append(pids, p.pid)
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for {
			st, err := readStat(pid)
			if err != nil || st.zombie {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d under %s still there after SIGKILL", pid, dir)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}

// socketServerGroup is the process group of the process serving the unix
// socket at path (from the peer credentials of a connection to it), or an
// error if nothing serves it.
func socketServerGroup(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials of %s: %w", path, credErr)
	}
	st, err := readStat(int(cred.Pid))
	if err != nil {
		return 0, err
	}
	return st.pgrp, nil
}

// absDir is dir made absolute and free of symlinks, as /proc shows a cwd.
func absDir(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(d)
}
