// Package quota enforces per-volume size limits on a shared filesystem
// without an image per volume: ext4/xfs project quotas for volumes that are
// plain directories, where the kernel supports them, and btrfs qgroups for
// the subvolumes earlier versions limited (a qgroup does not hold a volume
// against its pod, which can make subvolumes outside it:
// TestQgroupsDoNotHoldAgainstNestedSubvolumes). Both are reached through
// ioctls and quotactl_fd(2), so no quota tools need to be installed and
// every error carries the kernel's errno.
//
// A limit that silently does nothing is worse than none, so the project
// quota side first says whether the filesystem enforces anything
// (ProjectQuotaSupport) and, when it does not, why: the kernel, the
// filesystem's features, or its mount options.
package quota
