#!/usr/bin/env bash
# Bring up a one-node Kubernetes cluster on this machine, offline, with
# hostpath-csi deployed from deploy/kubernetes (overlays/snapshot-controller
# and overlays/${E2E_FLAVOUR:-single-node}, unchanged), and print its
# kubeconfig. cluster-down.sh removes everything it made.
#
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the
# kubelet run as processes; containerd and runc run the pods. Pods get
# addresses on a bridge with a private /24 and a route to the Service range
# only (no masquerade, nothing forwarded: a FORWARD drop rule makes sure);
# the kubernetes Service IP is on lo, forwarded to the API server on
# 127.0.0.1; the node's address is on a veth pair, so `kubectl logs` and
# `kubectl exec` work.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ "$(id -u)" = 0 ] || die "the end-to-end cluster needs root"
if [ -e "$E2E_DIR" ]; then
	die "$E2E_DIR exists: a cluster is up (or was not torn down); run make e2e-down first"
fi
for d in /var/lib/kubelet /var/lib/hostpath-csi; do
	[ -e "$d" ] && die "$d exists on this host; refusing to run a kubelet or driver over it"
done
for cmd in containerd runc ctr etcd openssl iptables ip; do
	command -v $cmd >/dev/null || die "$cmd is missing (Debian: containerd runc etcd-server openssl iptables iproute2)"
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
	die "CNI plugins missing (Debian: containernetworking-plugins)"

"$E2E_ROOT/test/e2e/scripts/build.sh"

mkdir -p "$E2E_DIR" "$E2E_RUN"
: >"$E2E_DIR/undo"
undo "rm -rf $E2E_RUN"
chmod 0700 "$E2E_DIR"

log "network"
# Undo entries run in reverse order, so each is recorded after the change.
ip link add "$NODE_LINK" type veth peer name hpcsi-node1
undo "ip link del $NODE_LINK"
ip addr add "$NODE_IP/32" dev "$NODE_LINK"
ip link set "$NODE_LINK" up
ip link set hpcsi-node1 up
ip addr add "$SERVICE_IP/32" dev lo
undo "ip addr del $SERVICE_IP/32 dev lo"
# The bridge is made by the CNI bridge plugin at the first pod; removed here.
undo "ip link del $BRIDGE"
for dir in -i -o; do
	iptables -I FORWARD "$dir" "$BRIDGE" -j DROP -m comment --comment hostpath-csi-e2e
	undo "iptables -D FORWARD $dir $BRIDGE -j DROP -m comment --comment hostpath-csi-e2e"
done
ls /var/run/netns 2>/dev/null | sort >"$E2E_DIR/netns-before" || true

log "certificates"
pki=$E2E_DIR/pki
mkdir -p "$pki"
(
	cd "$pki"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=hostpath-e2e-ca 2>/dev/null
	cat >apiserver.ext <<EXT
subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EXT
	openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
	openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 2 -extfile apiserver.ext 2>/dev/null
	echo "extendedKeyUsage=clientAuth" >client.ext
	openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=hostpath-e2e-admin" 2>/dev/null
	openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 2 -extfile client.ext 2>/dev/null
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)
cat >"$KUBECONFIG_E2E" <<EOF2
apiVersion: v1
kind: Config
clusters:
- name: hostpath-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: hostpath-e2e
  context: {cluster: hostpath-e2e, user: admin}
current-context: hostpath-e2e
EOF2

log "etcd"
# etcd on tmpfs when /run is one: its fsyncs cost nothing there.
start etcd etcd --name hostpath-e2e --data-dir "$E2E_RUN/etcd" \
	--listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
	--initial-cluster hostpath-e2e=http://127.0.0.1:23800
wait_for 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

log "kube-apiserver"
start kube-apiserver "$E2E_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
	--bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address "$NODE_IP" \
	--service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true --permit-address-sharing \
	--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--client-ca-file "$pki/ca.crt" --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
	--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
	--service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
	--kubelet-preferred-address-types InternalIP \
	--authorization-mode RBAC --profiling=false --v=1
wait_for 120 kube-apiserver $KUBECTL get --raw /readyz
start svcproxy "$E2E_CACHE/local/svcproxy" -listen "$SERVICE_IP:443" -target "127.0.0.1:$APISERVER_PORT"

log "kube-controller-manager, kube-scheduler"
start kube-controller-manager "$E2E_BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_E2E" \
	--controllers '*,-nodeipam,-nodelifecycle' --leader-elect=false \
	--service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
	--use-service-account-credentials=false --bind-address 127.0.0.1 --secure-port 20257 --v=1
start kube-scheduler "$E2E_BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_E2E" --leader-elect=false \
	--bind-address 127.0.0.1 --secure-port 20259 --v=1

log "node namespace"
# The kubelet's directory on a shared mount: the driver's Bidirectional
# mounts propagate from it (this host's / is private), into the node's
# mount namespace below and out of it to the host, where tests look.
mkdir -p /var/lib/kubelet /var/lib/kubelet/plugins_registry
undo "rm -rf /var/lib/kubelet"
# The undo first: a bind mount made and then a kill is still undone.
undo "umount /var/lib/kubelet"
mount --bind /var/lib/kubelet /var/lib/kubelet
# A peer group of its own: on a host whose / is shared (systemd), the bind
# joined /'s group, and mounts under it would propagate to /'s peers too.
mount --make-private /var/lib/kubelet
mount --make-rshared /var/lib/kubelet
undo "rm -rf /var/lib/hostpath-csi"   # the driver's state and data on node 1
# containerd, the kubelet and the pods run in a PID and mount namespace of
# the node's own, whose PID 1 (nodeinit) a pod can nsenter as the
# Kubernetes e2e suite's hostexec pods do; this machine's PID 1 is not ours.
rm -f "$E2E_RUN/node.pid"
start node unshare --pid --mount --fork --propagation unchanged \
	"$E2E_CACHE/local/nodeinit" -pidfile "$E2E_RUN/node.pid"
wait_for 10 "the node's namespace" test -s "$E2E_RUN/node.pid"
NODE_PID=$(cat "$E2E_RUN/node.pid")
# innode NAME CMD...: start a daemon inside the node's namespaces.
innode() { local name=$1; shift; start "$name" nsenter --target "$NODE_PID" --mount --pid -- "$@"; }

log "containerd"
mkdir -p "$E2E_DIR/cni/net.d" "$E2E_DIR/containerd"
cat >"$E2E_DIR/cni/net.d/10-hostpath-e2e.conflist" <<EOF2
{
  "cniVersion": "0.4.0",
  "name": "hostpath-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$E2E_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF2
containerd config default >"$E2E_DIR/containerd/config.toml.default"
# The default configuration with our paths, and restrict_oom_score_adj: this
# machine does not allow a negative oom_score_adj (see shared notes).
sed -e "s|^root = .*|root = \"$E2E_DIR/containerd/root\"|" \
	-e "s|^state = .*|state = \"$E2E_RUN/containerd\"|" \
	-e "/^\[grpc\]/,/^\[/ s|^  address = .*|  address = \"$E2E_RUN/containerd.sock\"|" \
	-e "/^\[ttrpc\]/,/^\[/ s|^  address = .*|  address = \"$E2E_RUN/containerd.ttrpc.sock\"|" \
	-e "s|restrict_oom_score_adj = .*|restrict_oom_score_adj = true|" \
	-e "s|sandbox_image = .*|sandbox_image = \"registry.k8s.io/pause:3.10\"|" \
	-e "s|^\( *\)bin_dir = .*|\1bin_dir = \"/usr/lib/cni\"|" \
	-e "s|^\( *\)conf_dir = .*|\1conf_dir = \"$E2E_DIR/cni/net.d\"|" \
	-e "s|stream_server_address = .*|stream_server_address = \"127.0.0.1\"|" \
	-e "s|SystemdCgroup = .*|SystemdCgroup = false|" \
	"$E2E_DIR/containerd/config.toml.default" >"$E2E_DIR/containerd/config.toml"
innode containerd containerd --config "$E2E_DIR/containerd/config.toml"
wait_for 30 containerd $CTR version
for f in "$E2E_CACHE"/images/*.tar; do
	$CTR images import --no-unpack=false "$f" >/dev/null
done
log "images: $($CTR images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

log "kubelet"
: >"$E2E_DIR/resolv.conf"              # pods get no name server: nothing to reach
cat >"$E2E_DIR/kubelet.yaml" <<EOF2
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://$E2E_RUN/containerd.sock
resolvConf: $E2E_DIR/resolv.conf
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# Mounted Secrets are refreshed at each pod sync: 20s, so that the docs'
# transfer key rotation (ROTATE_WAIT in docs_test.go) reaches the driver.
syncFrequency: 20s
EOF2
innode kubelet "$E2E_BIN/kubelet" --config "$E2E_DIR/kubelet.yaml" --kubeconfig "$KUBECONFIG_E2E" \
	--hostname-override "$NODE1" --node-ip "$NODE_IP" --cert-dir "$E2E_DIR/kubelet-pki" --v=1
wait_for 120 "node $NODE1 Ready" sh -c "$KUBECTL get node $NODE1 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
# The node lifecycle controller is off: nobody else removes this taint.
$KUBECTL taint node "$NODE1" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
wait_for 60 "default service account" $KUBECTL -n default get serviceaccount default

"$E2E_ROOT/test/e2e/scripts/deploy.sh" "${E2E_FLAVOUR:-single-node}"

log "cluster is up"
echo "export KUBECONFIG=$KUBECONFIG_E2E"
