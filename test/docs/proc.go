package docs

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

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

// killGroup sends SIGKILL to process group pgid if one of its processes is
// still ours (works under dir: a group ID is reused once its processes are
// gone), and waits until none is left.
func killGroup(pgid int, dir string) error {
	ours := false
	for _, p := range groupMembers(pgid) {
		ours = ours || cwdUnder(p, dir)
	}
	if !ours {
		return nil
	}
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("kill process group %d: %w", pgid, err)
	}
	return waitGroupGone(pgid, 10*time.Second)
}

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
