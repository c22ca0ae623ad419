#!/usr/bin/env bash
# The key that lets the nodes' drivers fetch snapshots and volumes from each
# other (overlays/distributed: a restore or clone on any node). It lives in
# the Secret hostpath-csi-transfer (namespace hostpath-csi, key "keys"),
# mounted into every driver pod; whoever can read that Secret can fetch any
# volume's data, so keep RBAC on Secrets in that namespace to cluster
# administrators.
#
#   deploy/kubernetes/transfer-keys.sh create   # once, before or after kubectl apply -k
#   deploy/kubernetes/transfer-keys.sh rotate   # a new key; the old one stops working
#
# create makes the Secret with one fresh key (32 bytes from /dev/urandom)
# unless it exists, and changes nothing then. rotate adds a new key, waits
# until every driver has it (the kubelet refreshes a mounted Secret within
# about a minute; the drivers re-read the file when it changes), puts it
# first (the key each driver proves itself with), waits again, and drops
# the others: no transfer is refused at any step, and no pod restarts.
# HOSTPATH_CSI_NAMESPACE names another namespace; ROTATE_WAIT the wait
# between steps (default 90s).
set -euo pipefail
ns=${HOSTPATH_CSI_NAMESPACE:-hostpath-csi}
secret=hostpath-csi-transfer
wait=${ROTATE_WAIT:-90s}

newkey() { printf 'k%s %s\n' "$(date -u +%Y%m%dT%H%M%S)" "$(head -c 32 /dev/urandom | base64 | tr -d '\n')"; }
current() { kubectl -n "$ns" get secret "$secret" -o jsonpath='{.data.keys}' | base64 -d; }
put() { # the whole keys file, from stdin; replace, not apply, which would
	# copy the keys into the last-applied-configuration annotation
	kubectl -n "$ns" create secret generic "$secret" --from-file=keys=/dev/stdin --dry-run=client -o yaml |
		kubectl -n "$ns" replace -f - >/dev/null
}

case "${1:-}" in
create)
	if kubectl -n "$ns" get secret "$secret" -o name >/dev/null 2>&1; then
		echo "secret/$secret exists; unchanged"
		exit 0
	fi
	kubectl get namespace "$ns" -o name >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
	newkey | kubectl -n "$ns" create secret generic "$secret" --from-file=keys=/dev/stdin
	;;
rotate)
	old=$(current | grep -v -e '^#' -e '^$' || true)
	if [ -z "$old" ]; then
		echo "secret/$secret holds no key; run: $0 create" >&2
		exit 1
	fi
	new=$(newkey)
	printf '%s\n%s\n' "$old" "$new" | put
	echo "added key ${new%% *}; waiting $wait for every driver to accept it"
	sleep "$wait"
	printf '%s\n%s\n' "$new" "$old" | put
	echo "key ${new%% *} now proves; waiting $wait for every driver to use it"
	sleep "$wait"
	printf '%s\n' "$new" | put
	echo "dropped the older keys: $(echo "$old" | cut -d' ' -f1 | tr '\n' ' ')"
	;;
*)
	echo "usage: $0 create|rotate" >&2
	exit 2
	;;
esac
