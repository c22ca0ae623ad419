package driver

import "slices"

// tenantFlags are on every filesystem mount the node service makes for a
// pod (stage and publish, directory, image and NFS volumes alike), whatever
// the class's mountOptions or the capability's mount_flags say: what is in
// a volume is its tenant's (an image is theirs block by block; an export
// can be written by other clients), so a setuid binary or a device node in
// it must not take effect for whoever runs or opens it through the mount.
// A block volume's publish is a device node itself and goes without them.
var tenantFlags = []string{"nosuid", "nodev"}

// withTenantFlags is flags followed by tenantFlags: the last of "suid" and
// "nosuid" wins in mount(8) and in mountutil.ParseFlags alike.
func withTenantFlags(flags []string) []string {
	return append(slices.Clone(flags), tenantFlags...)
}
