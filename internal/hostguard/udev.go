// Package hostguard keeps the host from acting on what a tenant writes into
// a volume. A block volume (and an image volume's loop device) is a block
// device of the host whose bytes a tenant chooses: without a guard, udev
// probes it (blkid), makes /dev/disk/by-uuid and by-label links for the
// tenant's filesystems (a claim restored from a snapshot makes a second
// device with the same UUID), LVM auto-activates a volume group the tenant
// put on it, and mdadm assembles a RAID from its superblock.
//
// The guard is a udev rule, placed before the persistent-storage, LVM, md
// and btrfs rules, that marks every loop device backed by a file under the
// driver's data directory as not for the host: it skips the blkid probe
// (so no ID_FS_* property exists for LVM, md or btrfs rules to act on), and
// tells systemd and udisks to leave it alone.
package hostguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// RuleFile is the rule's name for a driver: udev reads rules in lexical
// order across its directories, and 10 is before 55-dm, 56-lvm,
// 60-persistent-storage, 63-md-raid-arrays, 64-btrfs and 69-lvm. Each
// driver name has its own file, so two drivers on one node keep theirs.
func RuleFile(driverName string) (string, error) {
	for _, r := range driverName {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return "", fmt.Errorf("driver name %q: want letters, digits, '.', '-' and '_' only", driverName)
		}
	}
	if driverName == "" {
		return "", fmt.Errorf("driver name is empty")
	}
	return "10-" + driverName + ".rules", nil
}

// Patterns are the loop devices the rule guards, as udev globs on
// loop/backing_file (a '*' there matches '/' too). The kernel shows that
// path as the process that attached the device saw it, and once that
// process's mount namespace is gone (the driver's container replaced), as
// seen from the root of the bind mount the file was reached through. So
// the data directory alone is not enough:
//   - dataDir/*: what the running driver attached;
//   - */hp?1-<id>/disk.img*: a volume's, snapshot's or copy's image by
//     the driver's own naming, whatever the path before it (" (deleted)"
//     follows a removed file);
//   - */kubernetes.io/csi/volumeDevices/*: the loop device the kubelet
//     attaches to every CSI raw block volume it gives a pod (a second
//     device with the tenant's bytes, backed by the published device node).
func Patterns(dataDir string) []string {
	return []string{dataDir + "/*", "*/hp[vsg]1-[0-9a-f]*/disk.img*", "*/kubernetes.io/csi/volumeDevices/*"}
}

// Rule is the udev rule text for the loop devices Patterns names, for the
// data directory dataDir (an absolute path with no symlink in it: the
// kernel shows the resolved path in loop/backing_file).
func Rule(dataDir string) (string, error) {
	if !filepath.IsAbs(dataDir) || filepath.Clean(dataDir) != dataDir || dataDir == "/" {
		return "", fmt.Errorf("data directory %q: want a clean absolute path below /", dataDir)
	}
	// udev patterns treat these as globs, alternatives or quote ends, and
	// a rule must be one line: a data directory named with them cannot be
	// matched exactly.
	if strings.ContainsAny(dataDir, "*?[]|\"\\\n{}") {
		return "", fmt.Errorf("data directory %q has a character udev patterns cannot match literally", dataDir)
	}
	match := strings.Join(Patterns(dataDir), "|")
	return fmt.Sprintf(`# Written by hostpath-csi (--udev-rules-dir). Loop devices backed by files
# under %[1]s, by the driver's images wherever they are seen from, and the
# kubelet's loop devices of CSI raw block volumes, hold tenants' bytes: the
# host must not probe them, link their filesystems by UUID or label,
# activate LVM on them or assemble md arrays from them. Removing this file
# turns the guard off.
SUBSYSTEM!="block", GOTO="hostpath_csi_end"
KERNEL!="loop[0-9]*", GOTO="hostpath_csi_end"
ENV{DEVTYPE}=="disk", ATTR{loop/backing_file}=="%[2]s", GOTO="hostpath_csi_tenant"
ENV{DEVTYPE}=="partition", ATTRS{loop/backing_file}=="%[2]s", GOTO="hostpath_csi_tenant"
GOTO="hostpath_csi_end"
LABEL="hostpath_csi_tenant"
ENV{UDEV_DISABLE_PERSISTENT_STORAGE_RULES_FLAG}="1"
ENV{UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG}="1"
ENV{DM_UDEV_DISABLE_OTHER_RULES_FLAG}="1"
ENV{SYSTEMD_READY}="0"
ENV{UDISKS_IGNORE}="1"
ENV{ID_FS_TYPE}=""
OPTIONS:="nowatch"
LABEL="hostpath_csi_end"
`, dataDir, match), nil
}

// Matches says whether a loop device backed by backingFile is one the
// rule for dataDir guards (udev's glob semantics: '*' crosses '/').
func Matches(dataDir, backingFile string) bool {
	for _, p := range Patterns(dataDir) {
		if globMatch(p, backingFile) {
			return true
		}
	}
	return false
}

// globMatch is fnmatch without FNM_PATHNAME, for the patterns above: '*',
// '?' and bracket sets with ranges.
func globMatch(p, s string) bool {
	for len(p) > 0 {
		switch p[0] {
		case '*':
			for i := len(s); i >= 0; i-- {
				if globMatch(p[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
			p, s = p[1:], s[1:]
		case '[':
			end := strings.IndexByte(p, ']')
			if end < 0 || s == "" {
				return false
			}
			set, ok := p[1:end], false
			for i := 0; i < len(set); i++ {
				if i+2 < len(set) && set[i+1] == '-' {
					ok = ok || (s[0] >= set[i] && s[0] <= set[i+2])
					i += 2
				} else {
					ok = ok || s[0] == set[i]
				}
			}
			if !ok {
				return false
			}
			p, s = p[end+1:], s[1:]
		default:
			if s == "" || s[0] != p[0] {
				return false
			}
			p, s = p[1:], s[1:]
		}
	}
	return s == ""
}

// Retrigger sends a change event for each loop device the rule for
// dataDir guards, so what udev did on them before the rule existed (links
// by UUID, a pvscan) is undone now rather than at their next event. sys is
// the sysfs root ("/sys"). It returns the devices it triggered.
func Retrigger(sys, dataDir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(sys, "block", "loop*", "loop", "backing_file"))
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !Matches(dataDir, strings.TrimRight(string(b), "\n")) {
			continue
		}
		dev := filepath.Dir(filepath.Dir(f))
		if err := os.WriteFile(filepath.Join(dev, "uevent"), []byte("change"), 0); err != nil {
			errs = append(errs, fmt.Errorf("change event for %s: %w", filepath.Base(dev), err))
			continue
		}
		done = append(done, filepath.Base(dev))
	}
	return done, errors.Join(errs...)
}

// Install writes the rule for dataDir into rulesDir (as RuleFile names it) (the host's
// /etc/udev/rules.d, or /run/udev/rules.d), atomically: udev rereads its
// rule directories when they change, so the next event of each loop
// device follows it. It resolves dataDir's symlinks first.
func Install(rulesDir, driverName, dataDir string) (string, error) {
	name, err := RuleFile(driverName)
	if err != nil {
		return "", fmt.Errorf("udev rule: %w", err)
	}
	real, err := filepath.EvalSymlinks(dataDir)
	if err != nil {
		return "", fmt.Errorf("udev rule: resolve data directory: %w", err)
	}
	text, err := Rule(real)
	if err != nil {
		return "", fmt.Errorf("udev rule: %w", err)
	}
	path := filepath.Join(rulesDir, name)
	if old, err := os.ReadFile(path); err == nil && string(old) == text {
		return path, nil
	}
	tmp, err := os.CreateTemp(rulesDir, "."+name+".*")
	if err != nil {
		return "", fmt.Errorf("udev rule: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(text); err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("udev rule %s: %w", path, err)
	}
	return path, nil
}
