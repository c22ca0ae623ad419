// Command livenessprobe is the end-to-end test's stand-in for
// kubernetes-csi/livenessprobe, which is not on the Go module proxy. As the
// real sidecar, it serves /healthz on --health-port (all addresses of the
// pod) and answers it by calling the driver's Probe over the CSI socket: 200
// when the driver says it is ready, 500 otherwise, so the kubelet's liveness
// probe of the driver container restarts a driver that stopped answering.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
)

var (
	csiAddress   = flag.String("csi-address", "/run/csi/socket", "path of the CSI driver socket")
	healthPort   = flag.String("health-port", "9808", "TCP port of /healthz, on every address of the pod")
	httpEndpoint = flag.String("http-endpoint", "", "host:port of /healthz instead of --health-port")
	probeTimeout = flag.Duration("probe-timeout", 3*time.Second, "timeout of each Probe call")
)

func main() {
	klog.InitFlags(nil)
	flag.Parse()
	addr := net.JoinHostPort("0.0.0.0", *healthPort)
	if *httpEndpoint != "" {
		addr = *httpEndpoint
	}
	// One connection, reused: grpc reconnects when the driver restarts.
	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		klog.ErrorS(err, "Bad CSI address", "csiAddress", *csiAddress)
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	id := csi.NewIdentityClient(conn)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *probeTimeout)
		defer cancel()
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			klog.ErrorS(err, "Probe failed")
			http.Error(w, err.Error(), http.StatusInternalServerError)
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			klog.InfoS("Driver says it is not ready")
			http.Error(w, "driver is not ready", http.StatusInternalServerError)
		default:
			klog.V(5).InfoS("Probe succeeded")
			fmt.Fprintln(w, "ok")
		}
	})
	klog.InfoS("Serving /healthz", "address", addr, "csiAddress", *csiAddress)
	klog.ErrorS(http.ListenAndServe(addr, mux), "HTTP server stopped")
	klog.FlushAndExit(klog.ExitFlushTimeout, 1)
}
