package driver

import (
	"context"
	"fmt"
	"net/http"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.cfg.DriverName, VendorVersion: Version()}, nil
}

func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	service := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	// Expansion is online and on the node only (see NodeExpandVolume).
	caps := []*csi.PluginCapability{
		service(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}
	if d.cfg.Controller {
		caps = append(caps, service(csi.PluginCapability_Service_CONTROLLER_SERVICE),
			service(csi.PluginCapability_Service_GROUP_CONTROLLER_SERVICE))
	}
	if d.servesSnapshotMetadata() {
		caps = append(caps, service(csi.PluginCapability_Service_SNAPSHOT_METADATA_SERVICE))
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe is ready only when the state database answers and the data
// directory takes a write; otherwise it says which one failed.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	// livenessprobe copies this message into its /healthz answer on the
	// pod's address: the check's name only; the details go to the log.
	if what, err := d.unhealthy(); err != nil {
		klog.ErrorS(err, "Probe: not ready", "check", what)
		return nil, status.Error(codes.FailedPrecondition, "not ready: "+what+" (the driver's log says why)")
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

// Healthy is the check behind Probe and /healthz.
func (d *Driver) Healthy() error {
	_, err := d.unhealthy()
	return err
}

// unhealthy says which check failed, in words that name no path (what
// /healthz may show to whoever reaches the pod's address), and the error.
func (d *Driver) unhealthy() (string, error) {
	d.healthMu.Lock()
	defer d.healthMu.Unlock()
	if _, err := d.store.VolumeExists(""); err != nil {
		return "the state database does not answer", err
	}
	if err := d.hostpath.vols.CheckWritable(); err != nil {
		return "the data directory does not take writes", err
	}
	return "", nil
}

// HealthzHandler serves /healthz, the kubelet's readiness probe: 200 "ok",
// or 503 with the failed check in a few words. Anyone who can reach the
// pod's address can read it, so the details (paths on the host, errors)
// go to the driver's log and not into the answer.
func (d *Driver) HealthzHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			http.Error(w, "only GET and HEAD", http.StatusMethodNotAllowed)
			return
		}
		if what, err := d.unhealthy(); err != nil {
			klog.ErrorS(err, "Not healthy", "check", what)
			http.Error(w, "not healthy: "+what+" (the driver's log says why)", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
}
