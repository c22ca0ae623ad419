// Command csi-node-driver-registrar is the end-to-end test's stand-in for
// kubernetes-csi/node-driver-registrar, which is not on the Go module proxy.
// It makes the same calls: it asks the driver for its name over the CSI
// socket, then serves the kubelet's plugin registration API (v1) on
// <plugin-registration-path>/<driver>-reg.sock, where the kubelet's plugin
// watcher finds it, calls GetInfo and registers the driver (CSINode then
// lists it). It accepts the real sidecar's flags that the manifests use.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

var (
	csiAddress              = flag.String("csi-address", "/run/csi/socket", "path of the CSI driver socket")
	pluginRegistrationPath  = flag.String("plugin-registration-path", "/registration", "the kubelet's plugin registration directory as mounted here")
	kubeletRegistrationPath = flag.String("kubelet-registration-path", "", "path of the CSI driver socket on the host, as the kubelet sees it")
	httpEndpoint            = flag.String("http-endpoint", "", "address of the HTTP server for /healthz (the registration socket answers GetInfo); empty disables it")
	timeout                 = flag.Duration("timeout", time.Second, "timeout of each call to the driver")
)

type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	driverName, endpoint string
}

func (s *registrationServer) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	klog.V(4).InfoS("GetInfo from the kubelet")
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driverName,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *registrationServer) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !st.PluginRegistered {
		// As the real registrar: exit so that the kubelet restarts the
		// container and registration is tried afresh.
		klog.ErrorS(errors.New(st.Error), "The kubelet refused the registration")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.InfoS("Registered with the kubelet", "driver", s.driverName)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeletRegistrationPath == "" {
		klog.ErrorS(nil, "--kubelet-registration-path is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	name, err := driverName(ctx)
	if err != nil {
		klog.ErrorS(err, "Could not get the driver's name", "csiAddress", *csiAddress)
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	sock := filepath.Join(*pluginRegistrationPath, name+"-reg.sock")
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		klog.ErrorS(err, "Could not remove a stale registration socket", "path", sock)
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	syscall.Umask(0o077) // only root (the kubelet) may connect
	lis, err := net.Listen("unix", sock)
	if err != nil {
		klog.ErrorS(err, "Could not listen", "path", sock)
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrationServer{driverName: name, endpoint: *kubeletRegistrationPath})
	if *httpEndpoint != "" {
		go serveHealthz(sock, name)
	}
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	klog.InfoS("Serving plugin registration", "socket", sock, "driver", name, "endpoint", *kubeletRegistrationPath)
	if err := srv.Serve(lis); err != nil {
		klog.ErrorS(err, "Registration server stopped")
	}
	// Removing the socket tells the kubelet the plugin is gone.
	_ = os.Remove(sock)
}

// driverName asks the driver for its name, retrying until the socket
// answers: the sidecar may start before the driver.
func driverName(ctx context.Context) (string, error) {
	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("connect to %s: %w", *csiAddress, err)
	}
	defer conn.Close()
	for {
		cctx, cancel := context.WithTimeout(ctx, *timeout)
		resp, err := csi.NewIdentityClient(conn).GetPluginInfo(cctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return resp.GetName(), nil
		}
		klog.InfoS("Waiting for the driver", "csiAddress", *csiAddress, "err", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// serveHealthz answers 200 while the registration socket exists and answers
// GetInfo with this driver's name, as the real sidecar's /healthz does.
func serveHealthz(sock, name string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			defer conn.Close()
			ctx, cancel := context.WithTimeout(r.Context(), *timeout)
			defer cancel()
			var info *registerapi.PluginInfo
			info, err = registerapi.NewRegistrationClient(conn).GetInfo(ctx, &registerapi.InfoRequest{})
			if err == nil && info.GetName() != name {
				err = fmt.Errorf("registration socket serves %q, not %q", info.GetName(), name)
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	klog.ErrorS(http.ListenAndServe(*httpEndpoint, mux), "HTTP server stopped")
	klog.FlushAndExit(klog.ExitFlushTimeout, 1)
}
