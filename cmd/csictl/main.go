// Command csictl talks to any CSI driver over its unix socket: a few
// everyday calls, an end-to-end demo, and load benchmarks.
//
//	csictl [-endpoint unix:///path] <command> [flags]
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/hostpath-csi/hostpath-csi/internal/size"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const usage = `csictl: a client for CSI drivers over a unix socket

usage: csictl [-endpoint unix:///path/csi.sock] [-timeout 30s] <command> [flags]

commands:
  info                       plugin name, version and capabilities
  create NAME [-size 1Gi] [-from-snapshot ID | -from-volume ID]
                             create a volume (empty, restored or cloned), print its ID
  list                       list volumes
  delete ID                  delete a volume
  modify ID KEY=VALUE...     change a volume's mutable parameters (a VolumeAttributesClass's)
  snapshot NAME -volume ID   snapshot a volume
  snapshots [-volume ID]     list snapshots
  delete-snapshot ID         delete a snapshot
  blocks SNAPSHOT [-base ID] [-from BYTES] [-max N]
                             a block or image volume's snapshot: its allocated ranges, or
                             with -base those changed since that snapshot (SnapshotMetadata)
  health ID                  a volume's health as the controller sees it
  demo [-dir D]              create, stage, publish, write, read, unpublish, unstage, delete
  bench create|scale|publish|layouts|snapshot  load benchmarks (see: csictl bench -h)
`

type client struct {
	conn       *grpc.ClientConn
	id         csi.IdentityClient
	ctrl       csi.ControllerClient
	node       csi.NodeClient
	timeout    time.Duration
	socketPath string
}

func main() {
	endpoint := flag.String("endpoint", "unix://"+defaultSocket(), "CSI endpoint (unix:///path or a path)")
	timeout := flag.Duration("timeout", 30*time.Second, "timeout of each call")
	flag.Usage = func() { fmt.Fprint(os.Stderr, usage); flag.PrintDefaults() }
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	c, err := dial(*endpoint, *timeout)
	if err != nil {
		fatal(err)
	}
	defer c.conn.Close()
	cmd, args := flag.Arg(0), flag.Args()[1:]
	commands := map[string]func(*client, []string) error{
		"info": cmdInfo, "create": cmdCreate, "list": cmdList, "delete": cmdDelete, "modify": cmdModify,
		"health": cmdHealth, "demo": cmdDemo, "bench": cmdBench,
		"snapshot": cmdSnapshot, "snapshots": cmdSnapshots, "delete-snapshot": cmdDeleteSnapshot,
		"blocks": cmdBlocks,
	}
	run, ok := commands[cmd]
	if !ok {
		fatal(fmt.Errorf("unknown command %q\n\n%s", cmd, usage))
	}
	if err := run(c, args); err != nil {
		fatal(err)
	}
}

func defaultSocket() string {
	if wd, err := os.Getwd(); err == nil {
		return wd + "/_output/csi.sock"
	}
	return "/csi/csi.sock"
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "csictl:", err)
	os.Exit(1)
}

func dial(endpoint string, timeout time.Duration) (*client, error) {
	path := strings.TrimPrefix(endpoint, "unix://")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("no socket at %s (is the driver running? try: make run): %w", path, err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &client{conn: conn, id: csi.NewIdentityClient(conn), ctrl: csi.NewControllerClient(conn),
		node: csi.NewNodeClient(conn), timeout: timeout, socketPath: path}, nil
}

func (c *client) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.timeout)
}

func cmdInfo(c *client, _ []string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	info, err := c.id.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return err
	}
	fmt.Printf("name:    %s\nversion: %s\n", info.GetName(), info.GetVendorVersion())
	if pc, err := c.id.GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{}); err == nil {
		var names []string
		for _, cp := range pc.GetCapabilities() {
			if s := cp.GetService(); s != nil {
				names = append(names, s.GetType().String())
			}
			if e := cp.GetVolumeExpansion(); e != nil {
				names = append(names, "EXPANSION_"+e.GetType().String())
			}
		}
		fmt.Printf("plugin:     %s\n", strings.Join(names, " "))
	}
	if cc, err := c.ctrl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{}); err == nil {
		var names []string
		for _, cp := range cc.GetCapabilities() {
			names = append(names, cp.GetRpc().GetType().String())
		}
		fmt.Printf("controller: %s\n", strings.Join(names, " "))
	}
	if nc, err := c.node.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{}); err == nil {
		var names []string
		for _, cp := range nc.GetCapabilities() {
			names = append(names, cp.GetRpc().GetType().String())
		}
		fmt.Printf("node:       %s\n", strings.Join(names, " "))
	}
	return nil
}

var rwoCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

func cmdCreate(c *client, args []string) error {
	fs := flag.NewFlagSet("create", flag.ExitOnError)
	sizeFlag := fs.String("size", "", "capacity (bytes, or with Ki/Mi/Gi/Ti); default 1Gi, or the source's size")
	fromSnap := fs.String("from-snapshot", "", "restore this snapshot into the new volume")
	fromVol := fs.String("from-volume", "", "clone this volume into the new volume")
	block := fs.Bool("block", false, "a raw block volume (volumeMode: Block)")
	fsType := fs.String("fstype", "", "filesystem of an image volume (with -param layout=image): ext4 or xfs")
	var params paramFlag
	fs.Var(&params, "param", "a parameter key=value (repeatable)")
	var mutable paramFlag
	fs.Var(&mutable, "mutable", "a mutable parameter key=value, as a VolumeAttributesClass gives (repeatable)")
	name, err := oneArg(fs, args, "NAME")
	if err != nil {
		return err
	}
	capability := &csi.VolumeCapability{AccessMode: rwoCap.AccessMode,
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: *fsType}}}
	if *block {
		capability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	}
	req := &csi.CreateVolumeRequest{Name: name, Parameters: params, MutableParameters: mutable, VolumeCapabilities: []*csi.VolumeCapability{capability}}
	if *sizeFlag != "" {
		bytes, err := size.Parse(*sizeFlag)
		if err != nil {
			return err
		}
		req.CapacityRange = &csi.CapacityRange{RequiredBytes: bytes}
	}
	switch {
	case *fromSnap != "" && *fromVol != "":
		return fmt.Errorf("create: -from-snapshot and -from-volume exclude each other")
	case *fromSnap != "":
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: *fromSnap}}}
	case *fromVol != "":
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: *fromVol}}}
	}
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.ctrl.CreateVolume(ctx, req)
	if err != nil {
		return err
	}
	var topo []string
	for _, t := range resp.GetVolume().GetAccessibleTopology() {
		for k, v := range t.GetSegments() {
			topo = append(topo, k+"="+v)
		}
	}
	vc := resp.GetVolume().GetVolumeContext()
	fmt.Printf("%s  %d bytes  %s  layout=%s size-limit=%s\n", resp.GetVolume().GetVolumeId(), resp.GetVolume().GetCapacityBytes(),
		strings.Join(topo, ","), vc["hostpath-csi.github.io/layout"], vc["hostpath-csi.github.io/size-limit"])
	return nil
}

func cmdList(c *client, _ []string) error {
	token := ""
	fmt.Printf("%-37s %14s  %s\n", "VOLUME ID", "CAPACITY", "PUBLISHED ON")
	for {
		ctx, cancel := c.ctx()
		resp, err := c.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 500, StartingToken: token})
		cancel()
		if err != nil {
			return err
		}
		for _, e := range resp.GetEntries() {
			fmt.Printf("%-37s %14d  %s\n", e.GetVolume().GetVolumeId(), e.GetVolume().GetCapacityBytes(), strings.Join(e.GetStatus().GetPublishedNodeIds(), ","))
		}
		if token = resp.GetNextToken(); token == "" {
			return nil
		}
	}
}

func cmdDelete(c *client, args []string) error {
	id, err := oneArg(flag.NewFlagSet("delete", flag.ExitOnError), args, "ID")
	if err != nil {
		return err
	}
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		return err
	}
	fmt.Println("deleted", id)
	return nil
}

func cmdModify(c *client, args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("modify: want ID and at least one KEY=VALUE")
	}
	id, mutable := args[0], paramFlag{}
	for _, kv := range args[1:] {
		if err := mutable.Set(kv); err != nil {
			return err
		}
	}
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.ctrl.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: mutable}); err != nil {
		return err
	}
	fmt.Println("modified", id)
	return nil
}

func cmdHealth(c *client, args []string) error {
	id, err := oneArg(flag.NewFlagSet("health", flag.ExitOnError), args, "ID")
	if err != nil {
		return err
	}
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.ctrl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil {
		return err
	}
	if len(resp.GetVolumeHealth().GetHealthStatuses()) == 0 {
		fmt.Println(id, "healthy")
	}
	for _, h := range resp.GetVolumeHealth().GetHealthStatuses() {
		fmt.Printf("%s %s %s: %s\n", id, h.GetStatus(), h.GetReason(), h.GetMessage())
	}
	return nil
}

func oneArg(fs *flag.FlagSet, args []string, what string) (string, error) {
	// Accept flags before or after the positional argument.
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return "", err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return "", fmt.Errorf("%s: want exactly one %s", fs.Name(), what)
	}
	return pos[0], nil
}

type paramFlag map[string]string

func (p *paramFlag) String() string { return fmt.Sprint(map[string]string(*p)) }
func (p *paramFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("want key=value, got %q", s)
	}
	if *p == nil {
		*p = map[string]string{}
	}
	(*p)[k] = v
	return nil
}
