package driver

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostpath-csi/hostpath-csi/internal/backend/nfs"
	"github.com/hostpath-csi/hostpath-csi/internal/ids"
)

// StorageClass parameters of an NFS class. A CreateVolume whose parameters
// name a server is an NFS volume.
const (
	ParamServer   = "server"
	ParamShare    = "share"
	ParamSubDir   = "subDir"
	ParamOnDelete = "onDelete"
	// ParamRetainedDataTo says which claim may take over data retained
	// (onDelete: retain) by a deleted volume of the same subDir.
	ParamRetainedDataTo = "retainedDataTo"
)

// Values of retainedDataTo. Data retained for a claim of one namespace is
// never handed to a claim of another, whatever the class says.
const (
	// RetainedToSameClaim (the default): a claim of the same namespace
	// and name as the deleted one (the claim made again); a claim made
	// without the provisioner's metadata only to the same CSI name.
	RetainedToSameClaim = "sameClaim"
	// RetainedToSameNamespace: any claim of the same namespace whose
	// subDir maps there.
	RetainedToSameNamespace = "sameNamespace"
	// RetainedToNone: no claim; one that maps to retained data is refused
	// until an administrator moves the data away.
	RetainedToNone = "none"
)

// What DeleteVolume does with an NFS volume's subdirectory.
const (
	OnDeleteDelete  = "delete"
	OnDeleteRetain  = "retain"
	OnDeleteArchive = "archive"
)

// Context keys of an NFS volume (informational: a node trusts the ID).
const (
	ContextServer = "server"
	ContextShare  = "share"
	ContextSubDir = "subDir"
)

// DefaultSubDir is an NFS volume's subdirectory when the class names none.
const DefaultSubDir = "${pv.metadata.name}"

var nfsKnownParameters = []string{ParamServer, ParamShare, ParamSubDir, ParamOnDelete, ParamRetainedDataTo, ParamMountPermissions}

// The variables a subDir template may use, and where their values come from.
var subDirVars = map[string]string{
	"pvc.metadata.name":      ParamPVCName,
	"pvc.metadata.namespace": ParamPVCNamespace,
	"pv.metadata.name":       ParamPVName,
}

type nfsParams struct {
	server, share, subDirTemplate, onDelete string
	retainedDataTo                          string
	mode                                    *os.FileMode // nil: leave the mode mkdir gives
}

// isNFSClass reports whether a request's parameters are an NFS class's.
func isNFSClass(params map[string]string) bool {
	_, ok := params[ParamServer]
	return ok
}

// parseNFSParameters checks an NFS class's parameters; any other key, except
// the provisioner's csi.storage.k8s.io/ ones, is InvalidArgument naming it.
func parseNFSParameters(params map[string]string) (nfsParams, error) {
	p := nfsParams{subDirTemplate: DefaultSubDir, onDelete: OnDeleteDelete, retainedDataTo: RetainedToSameClaim}
	if len(params) > maxParams {
		return p, status.Errorf(codes.InvalidArgument, "too many parameters: %d (at most %d)", len(params), maxParams)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := params[k]
		if len(k) > maxParamKeyLen || len(v) > maxParamValueLen {
			return p, status.Errorf(codes.InvalidArgument, "parameter %.64q: key or value too long (key at most %d bytes, value at most %d)", k, maxParamKeyLen, maxParamValueLen)
		}
		bad := func(err error) error { return status.Errorf(codes.InvalidArgument, "parameter %s: %v", k, err) }
		switch k {
		case ParamServer:
			if err := ids.ValidateNFSServer(v); err != nil {
				return p, bad(err)
			}
			p.server = ids.CanonicalNFSServer(v)
		case ParamShare:
			if err := ids.ValidateNFSShare(v); err != nil {
				return p, bad(err)
			}
			if slices.Contains(strings.Split(v, "/"), ids.HiddenDir) {
				// Another class's records and snapshots: its volumes
				// would be made among them, and its own records mixed in.
				return p, bad(fmt.Errorf("share %q is inside a %s directory, where the driver keeps the records and snapshots of another export's volumes", v, ids.HiddenDir))
			}
			p.share = v
		case ParamSubDir:
			if _, err := expandSubDir(v, nil, "x"); err != nil {
				return p, bad(err)
			}
			p.subDirTemplate = v
		case ParamOnDelete:
			if err := checkOnDelete("parameter", v); err != nil {
				return p, err
			}
			p.onDelete = v
		case ParamRetainedDataTo:
			if v != RetainedToSameClaim && v != RetainedToSameNamespace && v != RetainedToNone {
				return p, status.Errorf(codes.InvalidArgument, "parameter %s=%.64q: want %s, %s or %s", k, v, RetainedToSameClaim, RetainedToSameNamespace, RetainedToNone)
			}
			p.retainedDataTo = v
		case ParamMountPermissions:
			mode, err := strconv.ParseUint(v, 8, 32)
			if err != nil || mode > 0o7777 {
				return p, status.Errorf(codes.InvalidArgument, "parameter %s=%q: want an octal mode such as 0775", k, v)
			}
			m := os.FileMode(mode&0o777) | unixModeBits(uint32(mode))
			p.mode = &m
		case ParamLayout:
			return p, status.Errorf(codes.InvalidArgument, "parameter %s is for hostpath classes; an NFS class (parameter server) accepts: %s", k, strings.Join(nfsKnownParameters, ", "))
		default:
			if strings.HasPrefix(k, "csi.storage.k8s.io/") {
				continue
			}
			return p, status.Errorf(codes.InvalidArgument, "unknown parameter %.64q for an NFS class; accepted: %s", k, strings.Join(nfsKnownParameters, ", "))
		}
	}
	if p.share == "" {
		return p, status.Errorf(codes.InvalidArgument, "parameter %s is required for an NFS class (the exported path, such as /export)", ParamShare)
	}
	return p, nil
}

// checkOnDelete is the InvalidArgument for an onDelete that is none of its
// values; what says where it came from (a parameter, a mutable parameter).
func checkOnDelete(what, v string) error {
	if v != OnDeleteDelete && v != OnDeleteRetain && v != OnDeleteArchive {
		return status.Errorf(codes.InvalidArgument, "%s %s=%.64q: want %s, %s or %s", what, ParamOnDelete, v, OnDeleteDelete, OnDeleteRetain, OnDeleteArchive)
	}
	return nil
}

// expandSubDir fills a subDir template from the provisioner's extra create
// metadata (params); ${pv.metadata.name} falls back to the request's name.
// With params nil it only checks the template's form. A value that would
// leave its component ('/', '..') or a result that is not a clean relative
// path is an error.
func expandSubDir(tmpl string, params map[string]string, name string) (string, error) {
	var b strings.Builder
	rest := tmpl
	for {
		i := strings.Index(rest, "${")
		if i < 0 {
			b.WriteString(rest)
			break
		}
		b.WriteString(rest[:i])
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return "", fmt.Errorf("subDir %q has an unterminated ${", tmpl)
		}
		v := rest[i+2 : i+j]
		key, ok := subDirVars[v]
		if !ok {
			return "", fmt.Errorf("subDir %q uses an unknown variable ${%.64s}; known: ${pvc.metadata.name}, ${pvc.metadata.namespace}, ${pv.metadata.name}", tmpl, v)
		}
		val := "x"
		if params != nil {
			val = params[key]
			if val == "" && key == ParamPVName {
				val = name
			}
			if val == "" {
				return "", fmt.Errorf("subDir %q uses ${%s}, but the request has no %s (run csi-provisioner with --extra-create-metadata)", tmpl, v, key)
			}
		}
		if strings.Contains(val, "/") || val == ".." || val == "." {
			return "", fmt.Errorf("subDir %q: ${%s} is %.64q, which would leave its path component", tmpl, v, val)
		}
		b.WriteString(val)
		rest = rest[i+j+1:]
	}
	if strings.Contains(b.String(), "$") {
		return "", fmt.Errorf("subDir %q has a '$' outside ${variable}", tmpl)
	}
	if err := ids.ValidateNFSSubDir(b.String()); err != nil {
		return "", err
	}
	if first, _, _ := strings.Cut(b.String(), "/"); strings.HasPrefix(first, nfs.ArchivePrefix) {
		// onDelete: archive renames volumes to these names, in the
		// share's root: a volume there could be one's archive, or take
		// the name an archive is about to be given.
		return "", fmt.Errorf("subDir %q starts with %q, which is kept for the archives of onDelete: %s", b.String(), nfs.ArchivePrefix, OnDeleteArchive)
	}
	return b.String(), nil
}

// nfsCapability says why an NFS volume cannot serve a capability, or nil:
// every access mode, mount access with fs_type "", nfs or nfs4, non-empty
// mount flags.
func nfsCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability is empty")
	}
	if c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
		return fmt.Errorf("access mode is missing or unknown")
	}
	switch t := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Mount:
		switch fs := t.Mount.GetFsType(); fs {
		case "", "nfs", "nfs4":
		default:
			return fmt.Errorf("fs_type %.32q: an NFS volume is mounted as nfs or nfs4", fs)
		}
		for _, f := range t.Mount.GetMountFlags() {
			if strings.TrimSpace(f) == "" || strings.ContainsAny(f, "\x00\n") {
				return fmt.Errorf("mount flag %.64q is empty or has a control character", f)
			}
		}
	case *csi.VolumeCapability_Block:
		return fmt.Errorf("an NFS volume is a directory: block access is not supported")
	default:
		return fmt.Errorf("volume capability has no access type (mount or block)")
	}
	return nil
}

// nfsFSType is the filesystem type a capability mounts with.
func nfsFSType(c *csi.VolumeCapability) string {
	if fs := c.GetMount().GetFsType(); fs != "" {
		return fs
	}
	return "nfs"
}
